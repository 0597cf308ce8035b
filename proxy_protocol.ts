/**
 * The PROXY protocol, versions 1 (text) and 2 (binary): reading the header
 * that a proxy in front of us puts at the start of a connection, and writing
 * the one we put in front of a backend's. Pure functions over bytes: the
 * socket code reads, calls {@linkcode parseProxyHeader} with everything read
 * so far, and reads more while the answer is `incomplete`.
 *
 * The rules are HAProxy's specification, `doc/proxy-protocol.txt`
 * (https://www.haproxy.org/download/3.0/doc/proxy-protocol.txt).
 *
 * @module
 */

import type { HostPort } from "./address.ts";

/** One type-length-value field of a version 2 header, passed on as read. */
export interface ProxyTlv {
  /** The type byte (`0x01` ALPN, `0x02` authority, `0x04` no-op, …). */
  type: number;
  /** The value: a copy, so it outlives the buffer it was read from. */
  value: Uint8Array;
}

/** A PROXY header that was read in full. */
export interface ProxyHeader {
  /** 1 for the text form, 2 for the binary one. */
  version: 1 | 2;
  /**
   * `PROXY`: the connection is relayed for `source`. `LOCAL` (version 2
   * only): the proxy opened it on its own behalf, e.g. a health check.
   */
  command: "PROXY" | "LOCAL";
  /**
   * The original client. Absent for `LOCAL`, v1 `UNKNOWN` and the v2
   * `UNSPEC` and `AF_UNIX` families: the caller then uses the peer address.
   */
  source?: HostPort;
  /** The address the client connected to; absent exactly when `source` is. */
  destination?: HostPort;
  /** Version 2's TLVs in order (version 1 has none). */
  tlvs: ProxyTlv[];
}

/**
 * What {@linkcode parseProxyHeader} made of the bytes so far: `incomplete`
 * while they can still become a valid header, `done` with the header and the
 * bytes it occupies (whatever follows belongs to the client's stream), or
 * `invalid` with a short reason naming what was wrong and its value.
 */
export type ProxyParse =
  | { state: "incomplete" }
  | { state: "done"; header: ProxyHeader; length: number }
  | { state: "invalid"; reason: string };

/**
 * The longest version 1 line, CRLF included: the spec's worst case, `UNKNOWN`
 * followed by two IPv6 addresses and two ports.
 */
export const PROXY_V1_MAX_LENGTH = 107;

// The 12 bytes every version 2 header starts with: chosen by the spec to be
// rejected at once by HTTP, TLS, SMTP, FTP and SSH servers.
const V2_SIGNATURE = new TextEncoder().encode("\r\n\r\n\0\r\nQUIT\n");
// Signature, version/command, family/protocol and a 16-bit length.
const V2_FIXED_LENGTH = 16;
const V1_PREFIX = new TextEncoder().encode("PROXY ");
const CR = 0x0d;
const LF = 0x0a;

// --- Parsing -----------------------------------------------------------------

/**
 * Reads a PROXY header (version 1 or 2) from the first bytes of a connection.
 *
 * `bytes` is everything read from the client so far. The answer is
 * `incomplete` only while those bytes can still be the start of a valid
 * header, so a client that speaks anything else is `invalid` at its first
 * byte. Validation is strict: anything the specification does not allow is
 * `invalid`, and the connection should be closed.
 *
 * @example
 * ```ts
 * const line = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
 * const parse = parseProxyHeader(new TextEncoder().encode(`${line}GET / HTTP/1.1\r\n`));
 * // { state: "done", length: 45, header: { version: 1, command: "PROXY",
 * //   source: { hostname: "192.0.2.1", port: 56324 }, destination: …, tlvs: [] } }
 * ```
 */
export function parseProxyHeader(bytes: Uint8Array): ProxyParse {
  if (startsLike(bytes, V2_SIGNATURE)) return parseV2(bytes);
  if (startsLike(bytes, V1_PREFIX)) return parseV1(bytes);
  return invalid(`not a PROXY header (starts ${quote(latin1(bytes.subarray(0, 17)), 16)})`);
}

const INCOMPLETE: ProxyParse = { state: "incomplete" };

function invalid(reason: string): ProxyParse {
  return { state: "invalid", reason };
}

// Whether `bytes` agrees with `magic` as far as both go: a short read of the
// magic is still a possible start.
function startsLike(bytes: Uint8Array, magic: Uint8Array): boolean {
  const count = Math.min(bytes.length, magic.length);
  for (let i = 0; i < count; i++) if (bytes[i] !== magic[i]) return false;
  return true;
}

// --- Version 1: "PROXY TCP4 SRC DST SPORT DPORT\r\n" ---------------------------

function parseV1(bytes: Uint8Array): ProxyParse {
  const window = bytes.subarray(0, PROXY_V1_MAX_LENGTH);
  const cr = window.indexOf(CR);
  const lf = window.indexOf(LF);
  // The spec: "The receiver must not tolerate a single CR or LF character to end the line".
  if (lf >= 0 && (cr < 0 || lf < cr)) {
    return invalid(
      `PROXY v1: line ends in LF without CR: ${quote(latin1(window.subarray(0, lf + 1)))}`,
    );
  }
  const complete = cr >= 0;
  const line = latin1(window.subarray(0, complete ? cr : window.length));
  const problem = v1Problem(line, complete);
  if (problem !== undefined) return invalid(`PROXY v1: ${problem}`);
  // The shortest the line can still be: without a CR yet, the CRLF is to come.
  const shortest = complete ? cr + 2 : window.length + 2;
  if (shortest > PROXY_V1_MAX_LENGTH) {
    return invalid(`PROXY v1: no CRLF within the first ${PROXY_V1_MAX_LENGTH} bytes`);
  }
  if (bytes.length < shortest) return INCOMPLETE;
  if (bytes[cr + 1] !== LF) {
    return invalid(`PROXY v1: CR not followed by LF: ${quote(latin1(window.subarray(0, cr + 2)))}`);
  }
  return { state: "done", header: v1Header(line), length: cr + 2 };
}

// One field of a TCP4/TCP6 line: its name in reasons, the test of a whole
// field, and the test of a field still arriving (can it still become valid?).
interface V1Field {
  readonly name: string;
  readonly expected: string;
  readonly whole: (text: string) => boolean;
  readonly start: (text: string) => boolean;
}

const PORT_EXPECTED = "a port 0-65535 without leading zeros";
const isPort = (text: string) => /^(0|[1-9][0-9]{0,4})$/.test(text) && Number(text) <= 65535;
const couldStartPort = (text: string) => text === "" || isPort(text);

function v1Fields(family: "TCP4" | "TCP6"): V1Field[] {
  const address = family === "TCP4"
    ? { expected: "an IPv4 address", whole: isIpv4Text, start: couldStartIpv4 }
    : { expected: "an IPv6 address", whole: isIpv6Text, start: couldStartIpv6 };
  return [
    { name: "source address", ...address },
    { name: "destination address", ...address },
    { name: "source port", expected: PORT_EXPECTED, whole: isPort, start: couldStartPort },
    { name: "destination port", expected: PORT_EXPECTED, whole: isPort, start: couldStartPort },
  ];
}

const V1_FIELDS = { TCP4: v1Fields("TCP4"), TCP6: v1Fields("TCP6") };
const V1_PROTOCOLS = ["TCP4", "TCP6", "UNKNOWN"];

// What is wrong with the line so far (`complete` once its CR was seen), or
// undefined when it is, or can still become, a valid line. The caller has
// checked that it starts like "PROXY ".
function v1Problem(line: string, complete: boolean): string | undefined {
  const fields = line.split(" ");
  // The field still arriving, if any: it is checked as a possible start.
  const arriving = complete ? -1 : fields.length - 1;
  if (fields.length < 2) return undefined;
  const protocol = fields[1]!;
  if (arriving === 1) {
    return V1_PROTOCOLS.some((name) => name.startsWith(protocol))
      ? undefined
      : `protocol must be TCP4, TCP6 or UNKNOWN: got ${quote(protocol)}`;
  }
  // The spec: after UNKNOWN "the receiver must ignore anything presented before the CRLF".
  if (protocol === "UNKNOWN") return undefined;
  if (protocol !== "TCP4" && protocol !== "TCP6") {
    return `protocol must be TCP4, TCP6 or UNKNOWN: got ${quote(protocol)}`;
  }
  const expectedFields = V1_FIELDS[protocol];
  if (fields.length > 2 + expectedFields.length) {
    return `expected 6 fields separated by single spaces, got more: ${quote(line)}`;
  }
  for (let i = 2; i < fields.length; i++) {
    const field = expectedFields[i - 2]!;
    const text = fields[i]!;
    if (text === "" && i !== arriving) {
      return `fields must be separated by single spaces: got ${quote(line)}`;
    }
    if (!(i === arriving ? field.start(text) : field.whole(text))) {
      return `${field.name} must be ${field.expected}: got ${quote(text)}`;
    }
  }
  if (complete && fields.length < 2 + expectedFields.length) {
    return `expected 6 fields, got ${fields.length}: ${quote(line)}`;
  }
  return undefined;
}

// The header of a line v1Problem accepted as complete.
function v1Header(line: string): ProxyHeader {
  const [, protocol, source, destination, sourcePort, destinationPort] = line.split(" ");
  if (protocol === "UNKNOWN") return { version: 1, command: "PROXY", tlvs: [] };
  // IPv6 comes back in one canonical spelling, as version 2's does.
  const canonical = (text: string) => protocol === "TCP6" ? formatIpv6(ipv6Bytes(text)!) : text;
  return {
    version: 1,
    command: "PROXY",
    source: { hostname: canonical(source!), port: Number(sourcePort) },
    destination: { hostname: canonical(destination!), port: Number(destinationPort) },
    tlvs: [],
  };
}

// --- Version 2: signature, version/command, family/protocol, length, block --

// The family/protocol bytes the spec lists (its "In practice" table); the
// rest of the 14th byte's values "must be rejected as invalid by receivers".
interface V2Layout {
  readonly name: string;
  // Bytes of addresses and ports at the start of the block; TLVs follow.
  readonly addressBytes: number;
  // Only IPv4 and IPv6 addresses are reported; UNSPEC and AF_UNIX are not.
  readonly ipBytes?: 4 | 16;
}

const V2_LAYOUTS = new Map<number, V2Layout>([
  [0x00, { name: "UNSPEC", addressBytes: 0 }],
  [0x11, { name: "TCP over IPv4", addressBytes: 12, ipBytes: 4 }],
  [0x12, { name: "UDP over IPv4", addressBytes: 12, ipBytes: 4 }],
  [0x21, { name: "TCP over IPv6", addressBytes: 36, ipBytes: 16 }],
  [0x22, { name: "UDP over IPv6", addressBytes: 36, ipBytes: 16 }],
  [0x31, { name: "UNIX stream", addressBytes: 216 }],
  [0x32, { name: "UNIX datagram", addressBytes: 216 }],
]);
const V2_LAYOUT_NAMES = [...V2_LAYOUTS.keys()].map(hexByte).join(", ");

const COMMAND_LOCAL = 0x0;
const COMMAND_PROXY = 0x1;

function parseV2(bytes: Uint8Array): ProxyParse {
  if (bytes.length <= 12) return INCOMPLETE;
  const version = bytes[12]! >> 4;
  const command = bytes[12]! & 0x0f;
  if (version !== 2) return invalid(`PROXY v2: version must be 2: got ${version}`);
  if (command !== COMMAND_LOCAL && command !== COMMAND_PROXY) {
    return invalid(`PROXY v2: command must be 0 (LOCAL) or 1 (PROXY): got ${command}`);
  }
  if (bytes.length <= 13) return INCOMPLETE;
  const layout = V2_LAYOUTS.get(bytes[13]!);
  if (layout === undefined) {
    const got = hexByte(bytes[13]!);
    return invalid(
      `PROXY v2: family and protocol byte must be one of ${V2_LAYOUT_NAMES}: got ${got}`,
    );
  }
  if (bytes.length < V2_FIXED_LENGTH) return INCOMPLETE;
  const blockLength = (bytes[14]! << 8) | bytes[15]!;
  const end = V2_FIXED_LENGTH + blockLength;
  if (blockLength < layout.addressBytes) {
    // The spec: for LOCAL the receiver must "discard the protocol block
    // including the family which is ignored": a short block is no error there.
    if (command === COMMAND_PROXY) {
      const needed = `the ${layout.addressBytes} address bytes of ${layout.name}`;
      return invalid(`PROXY v2: length ${blockLength} is shorter than ${needed}`);
    }
    return bytes.length < end
      ? INCOMPLETE
      : { state: "done", header: { version: 2, command: "LOCAL", tlvs: [] }, length: end };
  }
  const tlvs = readTlvs(bytes, V2_FIXED_LENGTH + layout.addressBytes, end);
  if (typeof tlvs === "string") return invalid(`PROXY v2: ${tlvs}`);
  if (tlvs === undefined || bytes.length < end) return INCOMPLETE;
  const header: ProxyHeader = command === COMMAND_LOCAL
    ? { version: 2, command: "LOCAL", tlvs }
    : { version: 2, command: "PROXY", ...v2Addresses(bytes, layout), tlvs };
  return { state: "done", header, length: end };
}

// The TLVs in bytes[start, end): a reason when they cannot fit the block,
// undefined while some have not arrived, else the list. Each is checked as
// soon as its 3-byte head is there, so a bad length is caught without
// waiting for the rest of the block.
function readTlvs(bytes: Uint8Array, start: number, end: number): ProxyTlv[] | string | undefined {
  const tlvs: ProxyTlv[] = [];
  let offset = start;
  while (offset < end) {
    const left = end - offset;
    if (left < 3) {
      return `${left} stray byte(s) after the last TLV, at byte ${offset} (a TLV takes at least 3)`;
    }
    if (bytes.length < offset + 3) return undefined;
    const type = bytes[offset]!;
    const valueLength = (bytes[offset + 1]! << 8) | bytes[offset + 2]!;
    const valueEnd = offset + 3 + valueLength;
    if (valueEnd > end) {
      const tlv = `TLV ${hexByte(type)} at byte ${offset}`;
      return `${tlv} has length ${valueLength}, past the header's end at byte ${end}`;
    }
    if (bytes.length < valueEnd) return undefined;
    tlvs.push({ type, value: bytes.slice(offset + 3, valueEnd) });
    offset = valueEnd;
  }
  return tlvs;
}

// Source and destination of an IPv4 or IPv6 block (addresses, then ports).
function v2Addresses(
  bytes: Uint8Array,
  layout: V2Layout,
): { source?: HostPort; destination?: HostPort } {
  const size = layout.ipBytes;
  if (size === undefined) return {};
  const at = V2_FIXED_LENGTH;
  const format = size === 4 ? formatIpv4 : formatIpv6;
  const port = (offset: number) => (bytes[offset]! << 8) | bytes[offset + 1]!;
  return {
    source: { hostname: format(bytes.subarray(at, at + size)), port: port(at + 2 * size) },
    destination: {
      hostname: format(bytes.subarray(at + size, at + 2 * size)),
      port: port(at + 2 * size + 2),
    },
  };
}

// --- Encoding ----------------------------------------------------------------

/**
 * The version 1 line announcing a relayed TCP connection from `source` to
 * `destination`: `TCP4` when both are IPv4, else `TCP6`, with an IPv4 side
 * written as `::ffff:a.b.c.d`.
 *
 * @throws {RangeError} when a hostname is not an IP address (a header
 * carries no names) or a port is not an integer 0-65535
 */
export function encodeProxyV1(source: HostPort, destination: HostPort): Uint8Array {
  const pair = addressPair(source, destination);
  const format = pair.family === 4 ? formatIpv4 : formatIpv6;
  const line = `PROXY TCP${pair.family} ${format(pair.source)} ${format(pair.destination)} ` +
    `${source.port} ${destination.port}\r\n`;
  return new TextEncoder().encode(line);
}

/**
 * The version 2 header announcing a relayed TCP connection (command PROXY,
 * STREAM) from `source` to `destination`, without TLVs: IPv4 when both are
 * IPv4, else IPv6, with an IPv4 side written as `::ffff:a.b.c.d`. With
 * `transport: "udp"`, a UDP flow (DGRAM): the header each of its datagrams
 * starts with.
 *
 * @throws {RangeError} when a hostname is not an IP address or a port is not
 * an integer 0-65535
 */
export function encodeProxyV2(
  source: HostPort,
  destination: HostPort,
  transport: "tcp" | "udp" = "tcp",
): Uint8Array {
  const pair = addressPair(source, destination);
  const size = pair.source.length;
  const protocol = transport === "udp" ? 0x2 : 0x1;
  const family = pair.family === 4 ? 0x10 : 0x20;
  const header = v2Fixed(0x20 | COMMAND_PROXY, family | protocol, 2 * size + 4);
  header.set(pair.source, V2_FIXED_LENGTH);
  header.set(pair.destination, V2_FIXED_LENGTH + size);
  const ports = new DataView(header.buffer, V2_FIXED_LENGTH + 2 * size);
  ports.setUint16(0, source.port);
  ports.setUint16(2, destination.port);
  return header;
}

/**
 * The version 2 header of a connection the balancer opens on its own behalf
 * (a health check): command LOCAL, family UNSPEC, no addresses. The backend
 * then uses the connection's real endpoints.
 */
export function encodeProxyV2Local(): Uint8Array {
  return v2Fixed(0x20 | COMMAND_LOCAL, 0x00, 0);
}

// The 16 fixed bytes followed by room for `blockLength` more.
function v2Fixed(versionCommand: number, familyProtocol: number, blockLength: number): Uint8Array {
  const header = new Uint8Array(V2_FIXED_LENGTH + blockLength);
  header.set(V2_SIGNATURE);
  header[12] = versionCommand;
  header[13] = familyProtocol;
  header[14] = blockLength >> 8;
  header[15] = blockLength & 0xff;
  return header;
}

// Both addresses as bytes of one family: IPv4 only when both are.
function addressPair(
  source: HostPort,
  destination: HostPort,
): { family: 4 | 6; source: Uint8Array; destination: Uint8Array } {
  const sourceBytes = addressBytes("source", source);
  const destinationBytes = addressBytes("destination", destination);
  if (sourceBytes.length === 4 && destinationBytes.length === 4) {
    return { family: 4, source: sourceBytes, destination: destinationBytes };
  }
  return { family: 6, source: asIpv6(sourceBytes), destination: asIpv6(destinationBytes) };
}

function addressBytes(field: string, address: HostPort): Uint8Array {
  const { hostname, port } = address;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`${field}.port must be an integer 0-65535: got ${port}`);
  }
  const bytes = ipv4Bytes(hostname) ?? ipv6Bytes(hostname);
  if (bytes === undefined) {
    const got = JSON.stringify(hostname);
    const expected = "an IPv4 or IPv6 address (a PROXY header carries no names)";
    throw new RangeError(`${field}.hostname must be ${expected}: got ${got}`);
  }
  return bytes;
}

// An IPv4 address as an IPv4-mapped IPv6 one (::ffff:a.b.c.d); IPv6 as is.
function asIpv6(bytes: Uint8Array): Uint8Array {
  if (bytes.length === 16) return bytes;
  const mapped = new Uint8Array(16);
  mapped[10] = 0xff;
  mapped[11] = 0xff;
  mapped.set(bytes, 12);
  return mapped;
}

// --- IP address text ---------------------------------------------------------
// Our own strict parsers: the spec forbids leading zeros in IPv4 (octal
// confusion), and these must never throw on a client's bytes.

const IPV4_PART = /^(0|[1-9][0-9]{0,2})$/;

function ipv4Bytes(text: string): Uint8Array | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  if (!parts.every((part) => IPV4_PART.test(part) && Number(part) <= 255)) return undefined;
  return Uint8Array.from(parts, Number);
}

function isIpv4Text(text: string): boolean {
  return ipv4Bytes(text) !== undefined;
}

// Whether `text` can still grow into an IPv4 address.
function couldStartIpv4(text: string): boolean {
  const parts = text.split(".");
  const last = parts.length - 1;
  return parts.length <= 4 &&
    parts.every((part, i) =>
      (i === last && part === "") || (IPV4_PART.test(part) && Number(part) <= 255)
    );
}

// The 16 bytes of an IPv6 address in the usual text forms (groups of 1-4 hex
// digits, at most one "::", a dotted IPv4 tail); no zone ("%eth0").
function ipv6Bytes(text: string): Uint8Array | undefined {
  if (text.length > 45 || !/^[0-9A-Fa-f:.]+$/.test(text)) return undefined;
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const head = ipv6Words(halves[0]!, halves.length === 1);
  const tail = halves.length === 2 ? ipv6Words(halves[1]!, true) : [];
  if (head === undefined || tail === undefined) return undefined;
  const words = head.length + tail.length;
  // "::" stands for at least one group of zeros.
  if (halves.length === 2 ? words > 7 : words !== 8) return undefined;
  const bytes = new Uint8Array(16);
  const view = new DataView(bytes.buffer);
  head.forEach((word, i) => view.setUint16(2 * i, word));
  tail.forEach((word, i) => view.setUint16(2 * (8 - tail.length + i), word));
  return bytes;
}

// The 16-bit words of colon-separated groups; a dotted IPv4 part counts as two
// and may only end the address (`last`).
function ipv6Words(part: string, last: boolean): number[] | undefined {
  if (part === "") return [];
  const groups = part.split(":");
  const words: number[] = [];
  for (const [i, group] of groups.entries()) {
    if (group.includes(".")) {
      const ipv4 = last && i === groups.length - 1 ? ipv4Bytes(group) : undefined;
      if (ipv4 === undefined) return undefined;
      words.push((ipv4[0]! << 8) | ipv4[1]!, (ipv4[2]! << 8) | ipv4[3]!);
    } else if (/^[0-9A-Fa-f]{1,4}$/.test(group)) {
      words.push(parseInt(group, 16));
    } else {
      return undefined;
    }
  }
  return words;
}

// The spec: an IPv6 field holds an IPv6 address; a plain IPv4 one is the wrong family.
function isIpv6Text(text: string): boolean {
  return ipv6Bytes(text) !== undefined;
}

// Whether `text` can still grow into an IPv6 address: a close, cheap test
// (the right characters and lengths, one "::" at most, a dotted part only at
// the end); the field is checked in full once its space or CR arrives.
function couldStartIpv6(text: string): boolean {
  if (text.length > 45 || !/^[0-9A-Fa-f:.]*$/.test(text)) return false;
  if (text.includes(":::") || text.split("::").length > 2) return false;
  const groups = text.split(":");
  if (groups.length > 9) return false;
  return groups.every((group, i) =>
    group.includes(".")
      ? i === groups.length - 1 && groups.length > 1 && couldStartIpv4(group)
      : group.length <= 4
  );
}

function formatIpv4(bytes: Uint8Array): string {
  return Array.from(bytes).join(".");
}

// RFC 5952's one spelling: lower case, no leading zeros, the longest run of
// two or more zero groups as "::"; IPv4-mapped addresses as ::ffff:a.b.c.d.
function formatIpv6(bytes: Uint8Array): string {
  const mapped = bytes.subarray(0, 10).every((byte) => byte === 0) &&
    bytes[10] === 0xff && bytes[11] === 0xff;
  if (mapped) return `::ffff:${formatIpv4(bytes.subarray(12))}`;
  const words = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  let bestStart = -1;
  let bestLength = 1;
  for (let start = 0; start < 8; start++) {
    let length = 0;
    while (start + length < 8 && words[start + length] === 0) length++;
    if (length > bestLength) [bestStart, bestLength] = [start, length];
  }
  const hex = (list: number[]) => list.map((word) => word.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLength))}`;
}

// --- Reasons -------------------------------------------------------------------

// Bytes as text, one character each, so nothing is lost and nothing throws.
function latin1(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes);
}

function hexByte(byte: number): string {
  return `0x${byte.toString(16).padStart(2, "0")}`;
}

// A client's text, quoted for a log line: printable ASCII as is, the rest
// escaped, cut to `max` characters so a reason stays short.
function quote(text: string, max = 24): string {
  const shown = text.slice(0, max).replace(/[^\x20-\x7e]|["\\]/g, (char) => {
    const escapes: Record<string, string> = { "\r": "\\r", "\n": "\\n", "\t": "\\t" };
    if (char === '"' || char === "\\") return `\\${char}`;
    return escapes[char] ?? `\\x${char.charCodeAt(0).toString(16).padStart(2, "0")}`;
  });
  return `"${shown}"${text.length > max ? "…" : ""}`;
}
