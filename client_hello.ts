/**
 * Reading the server name (SNI) and the offered application protocols (ALPN)
 * from a TLS ClientHello without terminating TLS, so a connection can be
 * routed on them and then forwarded byte for byte. Pure functions over
 * bytes: the socket code peeks, calls {@linkcode parseClientHello} with
 * everything read so far, and reads more while the answer is `incomplete`.
 *
 * The layouts are RFC 8446 (the record layer, §5.1; the handshake header and
 * ClientHello, §4, §4.1.2), RFC 6066 §3 (server_name, extension 0) and
 * RFC 7301 §3.1 (application_layer_protocol_negotiation, extension 16).
 *
 * @module
 */

/**
 * What {@linkcode parseClientHello} made of the bytes so far: `incomplete`
 * while they can still become a ClientHello, `done` with its server name
 * (lower case; absent when the client sent none) and ALPN protocols (in the
 * client's order; empty when it sent none), or `not-tls` with a short reason.
 * `not-tls` is no error of its own: such a connection simply matches no
 * `sni` or `alpn` route.
 */
export type HelloParse =
  | { state: "incomplete" }
  | { state: "done"; sni?: string; alpn: string[] }
  | { state: "not-tls"; reason: string };

/**
 * The largest ClientHello read, its 4-byte handshake header included. Real
 * ones are well under 2 KiB (a few KiB with post-quantum key shares); a
 * declared length beyond this is `not-tls` at once rather than a wait.
 */
export const CLIENT_HELLO_MAX_BYTES = 16 * 1024;

/**
 * How far into the stream the ClientHello's records may reach, their 5-byte
 * headers included: room for a largest ClientHello in one record, or split
 * into many small ones. {@linkcode parseClientHello} never answers
 * `incomplete` once it has this many bytes, so a caller may size its peek
 * buffer by it.
 */
export const CLIENT_HELLO_PEEK_BYTES = 20 * 1024;

// RFC 8446 §5.1: "The length MUST NOT exceed 2^14 bytes."
const MAX_RECORD_LENGTH = 2 ** 14;
const RECORD_HEADER = 5;
const CONTENT_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXTENSION_SERVER_NAME = 0;
const EXTENSION_ALPN = 16;
const NAME_TYPE_HOST_NAME = 0;

const INCOMPLETE: HelloParse = { state: "incomplete" };

function notTls(reason: string): HelloParse {
  return { state: "not-tls", reason };
}

/**
 * Reads SNI and ALPN from the TLS ClientHello at the start of a connection.
 *
 * `bytes` is everything read from the client so far: TLS handshake records,
 * which may carry the ClientHello in one record or split across several
 * (and arrive in any number of TCP segments). It never throws: malformed
 * lengths, other protocols and a ClientHello that would not fit
 * {@linkcode CLIENT_HELLO_MAX_BYTES} / {@linkcode CLIENT_HELLO_PEEK_BYTES}
 * are `not-tls`, with a reason naming the field and its value.
 */
export function parseClientHello(bytes: Uint8Array): HelloParse {
  const message = reassemble(bytes);
  return message instanceof Uint8Array ? parseHello(message.subarray(4)) : message;
}

// --- The record layer: collect the handshake message from its records ---

// The whole ClientHello message (handshake header included) once its records
// are in, else what to answer.
function reassemble(bytes: Uint8Array): Uint8Array | HelloParse {
  const pieces: Uint8Array[] = [];
  let have = 0;
  // The message's length with its header, once the header has arrived.
  let need: number | undefined;
  let offset = 0;
  while (true) {
    const problem = recordHeaderProblem(bytes, offset);
    if (problem !== undefined) return notTls(problem);
    if (bytes.length < offset + RECORD_HEADER) return INCOMPLETE;
    const length = (bytes[offset + 3]! << 8) | bytes[offset + 4]!;
    const lengthProblem = recordLengthProblem(offset, length);
    if (lengthProblem !== undefined) return notTls(lengthProblem);
    const start = offset + RECORD_HEADER;
    const fragment = bytes.subarray(start, Math.min(start + length, bytes.length));
    pieces.push(fragment);
    have += fragment.length;
    if (need === undefined) {
      const messageLength = helloLength(concat(pieces, 4));
      if (typeof messageLength === "string") return notTls(messageLength);
      need = messageLength;
    }
    if (need !== undefined && have >= need) return concat(pieces, need);
    if (fragment.length < length) return INCOMPLETE;
    offset = start + length;
  }
}

// The ClientHello's length with its header, from as much of its 4-byte
// handshake header as has arrived: undefined until all of it has, or a
// reason it is no ClientHello we will read.
function helloLength(header: Uint8Array): number | string | undefined {
  if (header.length >= 1 && header[0] !== HANDSHAKE_CLIENT_HELLO) {
    return `handshake message type ${header[0]} is not a ClientHello (1)`;
  }
  if (header.length < 4) return undefined;
  const bodyLength = (header[1]! << 16) | (header[2]! << 8) | header[3]!;
  if (4 + bodyLength > CLIENT_HELLO_MAX_BYTES) {
    const limit = `the ${CLIENT_HELLO_MAX_BYTES} bytes read for routing`;
    return `ClientHello length ${bodyLength} is over ${limit}`;
  }
  return 4 + bodyLength;
}

// What is wrong with the record header at `offset`, as far as it has arrived.
function recordHeaderProblem(bytes: Uint8Array, offset: number): string | undefined {
  // A record carries at least one byte (see recordLengthProblem), so one
  // starting here could not end within the peek window.
  if (offset + RECORD_HEADER + 1 > CLIENT_HELLO_PEEK_BYTES) {
    return `no complete ClientHello in the first ${CLIENT_HELLO_PEEK_BYTES} bytes`;
  }
  const type = bytes[offset];
  if (type !== undefined && type !== CONTENT_HANDSHAKE) {
    // RFC 8446 §5.1: handshake messages "MUST NOT be interleaved with other record types".
    if (offset === 0) return `not a TLS handshake record (starts ${quote(bytes, 16)})`;
    const expected = "expected 22 (handshake) until the ClientHello ends";
    return `record at byte ${offset} has content type ${type}, ${expected}`;
  }
  const major = bytes[offset + 1];
  const minor = bytes[offset + 2];
  if ((major !== undefined && major !== 3) || (minor !== undefined && minor > 0x0f)) {
    const version = hex(major) + (minor === undefined ? "" : hex(minor).slice(2));
    return `record at byte ${offset} has version ${version}, expected 0x03xx`;
  }
  return undefined;
}

// What is wrong with the length of the record at `offset`.
function recordLengthProblem(offset: number, length: number): string | undefined {
  const record = `record at byte ${offset}`;
  // RFC 8446 §5.1: "Implementations MUST NOT send zero-length fragments of Handshake types".
  if (length === 0) return `${record} is an empty handshake record`;
  if (length > MAX_RECORD_LENGTH) {
    return `${record} has length ${length}, over the ${MAX_RECORD_LENGTH} a record may carry`;
  }
  if (offset + RECORD_HEADER + length > CLIENT_HELLO_PEEK_BYTES) {
    const window =
      `byte ${CLIENT_HELLO_PEEK_BYTES}, where routing stops looking for the ClientHello`;
    return `${record} (length ${length}) ends past ${window}`;
  }
  return undefined;
}

// The first `count` bytes of the pieces joined (fewer if they hold fewer),
// without a copy when the first piece holds them all.
function concat(pieces: Uint8Array[], count: number): Uint8Array {
  if (pieces[0] !== undefined && pieces[0].length >= count) return pieces[0].subarray(0, count);
  const joined = new Uint8Array(count);
  let filled = 0;
  for (const piece of pieces) {
    if (filled >= count) break;
    const part = piece.subarray(0, count - filled);
    joined.set(part, filled);
    filled += part.length;
  }
  return joined.subarray(0, filled);
}

// --- The ClientHello body (RFC 8446 §4.1.2) ---

// A position in bytes being read; reads past the end return a reason instead.
interface Reader {
  readonly bytes: Uint8Array;
  offset: number;
}

function take(reader: Reader, count: number): Uint8Array | undefined {
  const end = reader.offset + count;
  if (end > reader.bytes.length) return undefined;
  const value = reader.bytes.subarray(reader.offset, end);
  reader.offset = end;
  return value;
}

// A vector with a 1- or 2-byte length in front, or a reason naming `field`.
function vector(reader: Reader, lengthBytes: 1 | 2, field: string): Uint8Array | string {
  const head = take(reader, lengthBytes);
  if (head === undefined) return `${field} is cut short: no room for its length`;
  const length = lengthBytes === 1 ? head[0]! : (head[0]! << 8) | head[1]!;
  const value = take(reader, length);
  if (value === undefined) {
    const left = reader.bytes.length - reader.offset;
    return `${field} length ${length} runs past its end (${left} bytes left)`;
  }
  return value;
}

function parseHello(body: Uint8Array): HelloParse {
  const reader: Reader = { bytes: body, offset: 0 };
  const version = take(reader, 2);
  if (version === undefined) return notTls("ClientHello is cut short before its version");
  if (version[0] !== 3) {
    return notTls(
      `ClientHello version ${hex(version[0])}${hex(version[1]).slice(2)}, expected 0x03xx`,
    );
  }
  if (take(reader, 32) === undefined) return notTls("ClientHello is cut short in its random");
  const sessionId = vector(reader, 1, "ClientHello session id");
  if (typeof sessionId === "string") return notTls(sessionId);
  if (sessionId.length > 32) {
    return notTls(`ClientHello session id length ${sessionId.length} is over 32`);
  }
  const suites = vector(reader, 2, "ClientHello cipher suites");
  if (typeof suites === "string") return notTls(suites);
  if (suites.length < 2 || suites.length % 2 !== 0) {
    return notTls(`ClientHello cipher suites length ${suites.length} must be even and at least 2`);
  }
  const compression = vector(reader, 1, "ClientHello compression methods");
  if (typeof compression === "string") return notTls(compression);
  if (compression.length < 1) return notTls("ClientHello compression methods list is empty");
  // Before TLS 1.3 a ClientHello may end here, without extensions.
  if (reader.offset === body.length) return { state: "done", alpn: [] };
  const extensions = vector(reader, 2, "ClientHello extensions");
  if (typeof extensions === "string") return notTls(extensions);
  if (reader.offset !== body.length) {
    return notTls(`ClientHello has ${body.length - reader.offset} bytes after its extensions`);
  }
  return parseExtensions(extensions);
}

function parseExtensions(block: Uint8Array): HelloParse {
  const reader: Reader = { bytes: block, offset: 0 };
  // RFC 8446 §4.2: no two extensions of one type. Two server names could
  // also route one way while the server answers for the other.
  const seen = new Set<number>();
  let sni: string | undefined;
  let alpn: string[] = [];
  while (reader.offset < block.length) {
    const at = reader.offset;
    const typeBytes = take(reader, 2);
    if (typeBytes === undefined) return notTls(`extension at byte ${at} is cut short`);
    const type = (typeBytes[0]! << 8) | typeBytes[1]!;
    const data = vector(reader, 2, `extension ${type}`);
    if (typeof data === "string") return notTls(data);
    if (seen.has(type)) return notTls(`extension ${type} appears twice`);
    seen.add(type);
    if (type === EXTENSION_SERVER_NAME) {
      const name = parseServerName(data);
      if (typeof name === "object") return name;
      sni = name;
    } else if (type === EXTENSION_ALPN) {
      const protocols = parseAlpn(data);
      if (!Array.isArray(protocols)) return protocols;
      alpn = protocols;
    }
  }
  return sni === undefined ? { state: "done", alpn } : { state: "done", sni, alpn };
}

// A DNS host name as RFC 6066 wants it: ASCII labels of 1-63 characters, no
// trailing dot. (Underscores are let through, as DNS itself allows them.)
const HOST_NAME = /^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*$/;

// RFC 6066 §3: a list of (name_type, HostName<1..2^16-1>); at most one host_name.
function parseServerName(data: Uint8Array): string | undefined | HelloParse {
  const reader: Reader = { bytes: data, offset: 0 };
  const list = vector(reader, 2, "server_name list");
  if (typeof list === "string") return notTls(list);
  if (reader.offset !== data.length) {
    return notTls(`server_name has ${data.length - reader.offset} bytes after its list`);
  }
  if (list.length === 0) return notTls("server_name list is empty");
  const entries: Reader = { bytes: list, offset: 0 };
  let hostName: string | undefined;
  while (entries.offset < list.length) {
    const nameType = take(entries, 1)![0]!;
    const name = vector(entries, 2, `server_name entry of type ${nameType}`);
    if (typeof name === "string") return notTls(name);
    // Other name types have never been defined; a server skips them too.
    if (nameType !== NAME_TYPE_HOST_NAME) continue;
    if (hostName !== undefined) return notTls("server_name has two host_name entries");
    const text = name.length > 253 ? "" : String.fromCharCode(...name);
    if (!HOST_NAME.test(text)) {
      return notTls(`server_name host_name must be a DNS name: got ${quote(name)}`);
    }
    hostName = text.toLowerCase();
  }
  return hostName;
}

// RFC 7301 §3.1: ProtocolName protocol_name_list<2..2^16-1>, each name <1..2^8-1>.
function parseAlpn(data: Uint8Array): string[] | HelloParse {
  const reader: Reader = { bytes: data, offset: 0 };
  const list = vector(reader, 2, "ALPN list");
  if (typeof list === "string") return notTls(list);
  if (reader.offset !== data.length) {
    return notTls(`ALPN extension has ${data.length - reader.offset} bytes after its list`);
  }
  if (list.length === 0) return notTls("ALPN list is empty");
  const names: Reader = { bytes: list, offset: 0 };
  const protocols: string[] = [];
  while (names.offset < list.length) {
    const name = vector(names, 1, `ALPN protocol ${protocols.length + 1}`);
    if (typeof name === "string") return notTls(name);
    if (name.length === 0) return notTls(`ALPN protocol ${protocols.length + 1} is empty`);
    // Names are opaque bytes (RFC 7301 §6); one character per byte keeps them exact.
    protocols.push(String.fromCharCode(...name));
  }
  return protocols;
}

// --- SNI patterns ---

/**
 * Whether a server name matches a route's pattern, ignoring case: either the
 * same name, or `*.example.com`, which matches exactly one more label
 * (`a.example.com`, not `a.b.example.com` nor `example.com`). A `*` anywhere
 * else is no wildcard.
 */
export function sniMatches(pattern: string, name: string): boolean {
  const lowerPattern = pattern.toLowerCase();
  const lowerName = name.toLowerCase();
  if (!lowerPattern.startsWith("*.")) return lowerPattern === lowerName;
  const suffix = lowerPattern.slice(1);
  if (!lowerName.endsWith(suffix)) return false;
  const label = lowerName.slice(0, -suffix.length);
  return label.length > 0 && !label.includes(".");
}

// --- Reasons ---

function hex(byte: number | undefined): string {
  return byte === undefined ? "0x??" : `0x${byte.toString(16).padStart(2, "0")}`;
}

// A client's bytes, quoted for a log line: printable ASCII as is, the rest
// escaped, cut to `max` bytes so a reason stays short.
function quote(bytes: Uint8Array, max = 24): string {
  let shown = "";
  for (const byte of bytes.subarray(0, max)) {
    const char = String.fromCharCode(byte);
    if (char === '"' || char === "\\") shown += `\\${char}`;
    else if (byte === 0x0d) shown += "\\r";
    else if (byte === 0x0a) shown += "\\n";
    else if (byte >= 0x20 && byte < 0x7f) shown += char;
    else shown += `\\x${byte.toString(16).padStart(2, "0")}`;
  }
  return `"${shown}"${bytes.length > max ? "…" : ""}`;
}
