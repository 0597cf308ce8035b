/**
 * CIDR networks (`10.0.0.0/8`, `2001:db8::/32`) and the question asked of
 * them once per connection: does this client address fall in one of them?
 * Used by the `allow`/`deny` lists, `routes[].match.source`, and, through
 * {@linkcode sourceKey}, the per-source limits.
 *
 * The rules, in one place:
 * - **Host bits are refused.** `10.0.0.1/8` is an error that names both
 *   likely meanings (`10.0.0.0/8`, `10.0.0.1/32`): in an ACL, silently
 *   masking a typo for `/32` would allow or deny a whole network.
 * - **IPv4-mapped IPv6 is IPv4.** A dual-stack socket reports an IPv4 client
 *   as `::ffff:10.1.2.3` (or `::ffff:a01:203`); it matches IPv4 networks. A
 *   CIDR written inside `::ffff:0:0/96` (`::ffff:10.0.0.0/104`) is read as the
 *   IPv4 network it names (`10.0.0.0/8`). An IPv6 CIDR shorter than /96
 *   (`::/0` included) therefore never matches an IPv4 client.
 * - **Spellings:** IPv4 is a dotted quad without leading zeros (`010.0.0.1`
 *   means 8.0.0.1 to some tools and 10.0.0.1 to others: refused). IPv6 may be
 *   compressed or not, in either case, with an embedded dotted quad, and in
 *   brackets (`[::1]`). A zone id (`fe80::1%eth0`) is refused in a CIDR and
 *   ignored in a client address, where it names our interface, not the client.
 * - **An unparseable client address matches nothing** — a caller that denies
 *   by list should refuse such a connection itself rather than let it pass.
 *
 * Client addresses are scanned by hand into reused scratch words: no regex,
 * no split, no allocation on the matching path (IPv6 lookups build one short
 * key string per distinct prefix length in the set).
 *
 * @module
 */

/** A network: its family, prefix length and network bits (host bits zero). */
export interface Cidr {
  /** 4 or 6. A CIDR inside `::ffff:0:0/96` is stored as the IPv4 network it names. */
  readonly family: 4 | 6;
  /** Leading bits that name the network: 0-32 for IPv4, 0-128 for IPv6. */
  readonly prefixLength: number;
  /**
   * The network as unsigned 32-bit words, most significant first: one word
   * for IPv4, four for IPv6. Bits past `prefixLength` are zero.
   */
  readonly words: readonly number[];
}

const EXPECTED = "expected ADDRESS/PREFIX such as 10.0.0.0/8 or 2001:db8::/32";

/**
 * Parses `ADDRESS/PREFIX` (`10.0.0.0/8`, `2001:db8::/32`), or a bare address
 * meaning one host (`/32` or `/128`).
 *
 * @throws {RangeError} naming the value and what was expected, e.g.
 * `"10.0.0.0/33": expected an IPv4 prefix length 0-32`, or, for host bits,
 * `"10.0.0.1/8": host bits are set beyond the /8 prefix: write 10.0.0.0/8
 * for the network, or 10.0.0.1/32 for the one address`.
 */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf("/");
  const addressEnd = slash < 0 ? text.length : slash;
  const percent = text.indexOf("%");
  if (percent >= 0 && percent < addressEnd) {
    const zone = text.slice(percent, addressEnd).replace(/]$/, "");
    throw new RangeError(`${JSON.stringify(text)}: expected no zone id (${zone}) in a CIDR`);
  }
  const family = scanAddress(text, 0, addressEnd);
  if (family === 0) throw new RangeError(`${JSON.stringify(text)}: ${expectedAddress(text)}`);
  const bits = family === 4 ? 32 : 128;
  const prefixLength = slash < 0 ? bits : parsePrefixLength(text, slash + 1, bits);
  if (prefixLength < 0) {
    throw new RangeError(
      `${JSON.stringify(text)}: expected an IPv${family} prefix length 0-${bits}`,
    );
  }
  const words = Array.from(scratch.subarray(0, family === 4 ? 1 : 4));
  const network = words.map((word, i) => (word & maskWord(prefixLength, i)) >>> 0);
  const cidr: Cidr = family === 6 && prefixLength >= 96 && isMapped(network)
    ? { family: 4, prefixLength: prefixLength - 96, words: [network[3]!] }
    : { family, prefixLength, words: network };
  if (network.some((word, i) => word !== words[i])) {
    const host = `${text.slice(0, addressEnd)}/${bits}`;
    throw new RangeError(
      `${JSON.stringify(text)}: host bits are set beyond the /${prefixLength} prefix: ` +
        `write ${formatCidr(cidr)} for the network, or ${host} for the one address`,
    );
  }
  return cidr;
}

// A more precise hint than the general one when the text reads as IPv4.
function expectedAddress(text: string): string {
  let dotted = text.length > 0;
  for (let i = 0; i < text.length && text[i] !== "/"; i++) {
    const code = text.charCodeAt(i);
    if (code !== DOT && (code < ZERO || code > NINE)) dotted = false;
  }
  return dotted ? "expected an IPv4 address of four numbers 0-255 (no leading zeros)" : EXPECTED;
}

// Decimal digits only, within 0-bits; -1 when not.
function parsePrefixLength(text: string, start: number, bits: number): number {
  if (start === text.length || text.length - start > 3) return -1;
  let value = 0;
  for (let i = start; i < text.length; i++) {
    const digit = text.charCodeAt(i) - ZERO;
    if (digit < 0 || digit > 9) return -1;
    value = value * 10 + digit;
  }
  return value <= bits ? value : -1;
}

/** The canonical text of a network: `10.0.0.0/8`, `2001:db8::/32` (RFC 5952, as URLs write it). */
export function formatCidr(cidr: Cidr): string {
  const address = cidr.family === 4 ? formatIpv4(cidr.words[0]!) : formatIpv6(cidr.words);
  return `${address}/${cidr.prefixLength}`;
}

/**
 * A set of networks, asked once per connection whether a client address is
 * in any of them. Networks are grouped by prefix length, so a lookup costs
 * one hash probe per distinct length present, however many networks there are.
 */
export class CidrSet {
  readonly #ipv4: { mask: number; networks: Set<number> }[] = [];
  readonly #ipv6: { prefixLength: number; networks: Set<string> }[] = [];
  #size = 0;

  /** Builds the set; duplicates count once. */
  constructor(cidrs: Iterable<Cidr>) {
    const ipv4 = new Map<number, Set<number>>();
    const ipv6 = new Map<number, Set<string>>();
    for (const cidr of cidrs) {
      if (cidr.family === 4) {
        // Masked again: a Cidr built by hand may carry host bits.
        groupOf(ipv4, cidr.prefixLength).add(
          (cidr.words[0]! & maskWord(cidr.prefixLength, 0)) >>> 0,
        );
      } else {
        scratch.set(cidr.words);
        groupOf(ipv6, cidr.prefixLength).add(ipv6Key(cidr.prefixLength));
      }
    }
    // Longest prefixes first: no reason but a stable order.
    for (const [length, networks] of [...ipv4].sort((a, b) => b[0] - a[0])) {
      this.#ipv4.push({ mask: maskWord(length, 0), networks });
      this.#size += networks.size;
    }
    for (const [prefixLength, networks] of [...ipv6].sort((a, b) => b[0] - a[0])) {
      this.#ipv6.push({ prefixLength, networks });
      this.#size += networks.size;
    }
  }

  /** Distinct networks in the set. */
  get size(): number {
    return this.#size;
  }

  /**
   * Whether `address` — a client address as a socket or a PROXY header gives
   * it: dotted IPv4, IPv6 in any spelling, bracketed or not — is in one of
   * the networks. A mapped IPv4 address matches IPv4 networks; a zone id is
   * ignored; an unparseable address matches nothing.
   */
  has(address: string): boolean {
    const family = scanClientAddress(address);
    if (family === 4) {
      const word = scratch[0]!;
      for (const group of this.#ipv4) {
        if (group.networks.has((word & group.mask) >>> 0)) return true;
      }
    } else if (family === 6) {
      for (const group of this.#ipv6) {
        if (group.networks.has(ipv6Key(group.prefixLength))) return true;
      }
    }
    return false;
  }
}

function groupOf<T>(groups: Map<number, Set<T>>, prefixLength: number): Set<T> {
  let group = groups.get(prefixLength);
  if (group === undefined) groups.set(prefixLength, group = new Set());
  return group;
}

// The first prefixLength bits of the scratch words, 16 bits to a character:
// collision-free among keys of one length, and short (4 characters for a /64).
function ipv6Key(prefixLength: number): string {
  let key = "";
  for (let bit = 0; bit < prefixLength; bit += 16) {
    const word = scratch[bit >>> 5]!;
    const half = (bit & 16) === 0 ? word >>> 16 : word & 0xffff;
    const kept = Math.min(16, prefixLength - bit);
    key += String.fromCharCode(half & ((0xffff << (16 - kept)) & 0xffff));
  }
  return key;
}

/**
 * The key under which per-source limits count a client: an IPv4 address as
 * is (a mapped one unmapped: `::ffff:10.1.2.3` counts as `10.1.2.3`); an IPv6
 * address as its /`ipv6Prefix` network (`2001:db8:1:2::/64`), so one host
 * cannot escape its limit by hopping across the addresses of its subnet.
 * Every spelling of one address gives one key. Text that is no address is
 * its own key.
 *
 * @throws {RangeError} when `ipv6Prefix` is not an integer 0-128
 */
export function sourceKey(address: string, ipv6Prefix: number): string {
  if (!(Number.isInteger(ipv6Prefix) && ipv6Prefix >= 0 && ipv6Prefix <= 128)) {
    throw new RangeError(`'ipv6Prefix' must be an integer 0-128: got ${ipv6Prefix}`);
  }
  const family = scanClientAddress(address);
  if (family === 0) return address;
  if (family === 4) return scannedPlainIpv4 ? address : formatIpv4(scratch[0]!);
  for (let i = 0; i < 4; i++) scratch[i] = scratch[i]! & maskWord(ipv6Prefix, i);
  return `${formatIpv6(scratch)}/${ipv6Prefix}`;
}

// --- Scanning addresses ----------------------------------------------------

// The address being scanned, as words: one process-wide buffer, since a scan
// runs to completion without yielding. IPv4 uses word 0.
const scratch = new Uint32Array(4);
const groups = new Uint16Array(8);
// Whether the last scanClientAddress() read a plain dotted quad (already canonical).
let scannedPlainIpv4 = false;

const ZERO = 48, NINE = 57, DOT = 46, COLON = 58, PERCENT = 37, OPEN = 91, CLOSE = 93;

/**
 * Scans a client address into `scratch`: brackets and a zone id allowed, a
 * mapped IPv6 address unmapped. Returns the family, or 0 when unparseable.
 */
function scanClientAddress(text: string): 0 | 4 | 6 {
  let start = 0;
  let end = text.length;
  const bracketed = text.charCodeAt(0) === OPEN;
  if (bracketed) {
    if (text.charCodeAt(end - 1) !== CLOSE) return 0;
    start = 1;
    end -= 1;
  }
  let zoned = false;
  for (let i = start; i < end; i++) {
    if (text.charCodeAt(i) === PERCENT) {
      if (i === end - 1) return 0; // `%` must name a zone
      end = i;
      zoned = true;
      break;
    }
  }
  // Brackets and zones belong to IPv6 only.
  const family = bracketed || zoned
    ? (scanIpv6(text, start, end) ? 6 : 0)
    : scanAddress(text, start, end);
  scannedPlainIpv4 = family === 4;
  if (family === 6 && isMapped(scratch)) {
    scratch[0] = scratch[3]!;
    return 4;
  }
  return family;
}

// ::ffff:0:0/96, where a dual-stack socket puts IPv4 clients.
function isMapped(words: ArrayLike<number>): boolean {
  return words[0] === 0 && words[1] === 0 && words[2] === 0xffff;
}

/**
 * Scans text[start, end) as an IPv4 or IPv6 address into `scratch`; an IPv6
 * one may be bracketed. Returns the family, or 0.
 */
function scanAddress(text: string, start: number, end: number): 0 | 4 | 6 {
  if (text.charCodeAt(start) === OPEN && text.charCodeAt(end - 1) === CLOSE) {
    return scanIpv6(text, start + 1, end - 1) ? 6 : 0;
  }
  for (let i = start; i < end; i++) {
    if (text.charCodeAt(i) === COLON) return scanIpv6(text, start, end) ? 6 : 0;
  }
  const word = scanIpv4(text, start, end);
  if (word < 0) return 0;
  scratch[0] = word;
  return 4;
}

/** A dotted quad in text[start, end) as an unsigned word, or -1. */
function scanIpv4(text: string, start: number, end: number): number {
  let word = 0;
  let i = start;
  for (let part = 0; part < 4; part++) {
    if (part > 0) {
      if (text.charCodeAt(i) !== DOT) return -1;
      i++;
    }
    const partStart = i;
    let value = 0;
    while (i < end && i - partStart < 3) {
      const digit = text.charCodeAt(i) - ZERO;
      if (digit < 0 || digit > 9) break;
      value = value * 10 + digit;
      i++;
    }
    const digits = i - partStart;
    if (digits === 0 || value > 255 || (digits > 1 && text.charCodeAt(partStart) === ZERO)) {
      return -1;
    }
    word = word * 256 + value;
  }
  return i === end ? word : -1;
}

/**
 * IPv6 in text[start, end) into `scratch`: up to eight groups of 1-4 hex
 * digits, at most one `::` standing for one or more zero groups, and
 * optionally a dotted quad as the last 32 bits. False when malformed.
 */
function scanIpv6(text: string, start: number, end: number): boolean {
  let count = 0; // groups read
  let gap = -1; // where `::` stands, in groups
  let i = start;
  if (text.charCodeAt(i) === COLON) {
    if (i + 1 >= end || text.charCodeAt(i + 1) !== COLON) return false;
    gap = 0;
    i += 2;
  }
  while (i < end) {
    const groupStart = i;
    let value = 0;
    while (i < end && i - groupStart < 5) {
      const digit = hexValue(text.charCodeAt(i));
      if (digit < 0) break;
      value = value * 16 + digit;
      i++;
    }
    if (i < end && text.charCodeAt(i) === DOT) {
      // The dotted quad ends the address and fills two groups.
      if (count > 6) return false;
      const word = scanIpv4(text, groupStart, end);
      if (word < 0) return false;
      groups[count++] = word >>> 16;
      groups[count++] = word & 0xffff;
      i = end;
      break;
    }
    if (i === groupStart || i - groupStart > 4 || count === 8) return false;
    groups[count++] = value;
    if (i === end) break;
    if (text.charCodeAt(i) !== COLON) return false;
    i++;
    if (i < end && text.charCodeAt(i) === COLON) {
      if (gap >= 0) return false;
      gap = count;
      i++;
    } else if (i === end) {
      return false; // a single trailing colon
    }
  }
  if (gap < 0 ? count !== 8 : count > 7) return false;
  // Move the groups after `::` to the end; zeros fill the gap.
  const after = count - (gap < 0 ? count : gap);
  for (let k = 0; k < after; k++) groups[7 - k] = groups[count - 1 - k]!;
  for (let k = gap < 0 ? 8 : gap; k < 8 - after; k++) groups[k] = 0;
  for (let w = 0; w < 4; w++) scratch[w] = groups[2 * w]! * 65536 + groups[2 * w + 1]!;
  return true;
}

function hexValue(code: number): number {
  if (code >= ZERO && code <= NINE) return code - ZERO;
  const lower = code | 0x20; // 'A'-'F' → 'a'-'f'
  return lower >= 97 && lower <= 102 ? lower - 87 : -1;
}

// --- Masks and printing ----------------------------------------------------

/** The mask of a /prefixLength network over word `index` (32 bits each). */
function maskWord(prefixLength: number, index: number): number {
  const bits = Math.min(32, Math.max(0, prefixLength - 32 * index));
  // `<< 32` would shift by 0 in JavaScript: a whole or empty word is special.
  return bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
}

function formatIpv4(word: number): string {
  return `${word >>> 24}.${(word >>> 16) & 255}.${(word >>> 8) & 255}.${word & 255}`;
}

/** RFC 5952: lowercase, no leading zeros, the first longest run of 2+ zero groups as `::`. */
function formatIpv6(words: ArrayLike<number>): string {
  const parts: number[] = [];
  for (let w = 0; w < 4; w++) parts.push(words[w]! >>> 16, words[w]! & 0xffff);
  let bestStart = -1;
  let bestLength = 1; // a single zero group is written `0`, not `::`
  for (let k = 0; k < 8;) {
    let run = 0;
    while (k + run < 8 && parts[k + run] === 0) run++;
    if (run > bestLength) [bestStart, bestLength] = [k, run];
    k += run + 1;
  }
  const hex = (from: number, to: number) =>
    parts.slice(from, to).map((part) => part.toString(16)).join(":");
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}
