/**
 * The bytes a soak stream carries, and the header that starts each
 * connection.
 *
 * Every stream is a pattern fixed by a seed: the byte at offset `i` is a
 * function of the seed and `i`, so the receiver can check every byte it gets,
 * in order, without the sender keeping a copy. A lost, repeated, reordered or
 * altered byte shows as the first offset that differs.
 *
 * A soak client opens each connection with one line,
 * `SOAK <seed> <up> <down>\n`: it will send `up` bytes of the pattern of
 * `seed`, then finish its stream; the backend answers `HELLO <id> <ms>\n` (its
 * name, and when it accepted the connection, in Unix ms), then
 * `down` bytes of the pattern of `replySeed(seed)`, and once the client's
 * stream has ended, one verdict line: `OK <up>\n` when every byte was as
 * expected, else `BAD <offset>\n`. Then it finishes its own stream.
 *
 * @module
 */

/** The pattern's byte at `offset` for `seed`. */
export function patternByte(seed: number, offset: number): number {
  return (wordAt(seed, offset >>> 2) >>> ((offset & 3) * 8)) & 0xff;
}

// A 32-bit mix of the seed and the word index (a murmur3-style finalizer).
function wordAt(seed: number, index: number): number {
  let x = Math.imul(index ^ seed, 0x9e3779b1) ^ seed;
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Fills `into` with the pattern of `seed` from `offset` on. */
export function fillPattern(seed: number, offset: number, into: Uint8Array): void {
  let i = 0;
  // Byte by byte up to a word boundary, then a word (four bytes) at a time.
  for (; i < into.length && ((offset + i) & 3) !== 0; i++) into[i] = patternByte(seed, offset + i);
  for (; i + 4 <= into.length; i += 4) {
    const word = wordAt(seed, (offset + i) >>> 2);
    into[i] = word & 0xff;
    into[i + 1] = (word >>> 8) & 0xff;
    into[i + 2] = (word >>> 16) & 0xff;
    into[i + 3] = word >>> 24;
  }
  for (; i < into.length; i++) into[i] = patternByte(seed, offset + i);
}

/**
 * Checks `bytes` against the pattern of `seed` from `offset` on; returns the
 * offset of the first byte that differs, or -1 when all match.
 */
export function checkPattern(seed: number, offset: number, bytes: Uint8Array): number {
  for (let start = 0; start < bytes.length; start += scratch.length) {
    const part = bytes.subarray(start, start + scratch.length);
    const expected = scratch.subarray(0, part.length);
    fillPattern(seed, offset + start, expected);
    for (let i = 0; i < part.length; i++) {
      if (part[i] !== expected[i]) return offset + start + i;
    }
  }
  return -1;
}

// Where checkPattern draws the expected bytes, a piece at a time.
const scratch = new Uint8Array(64 * 1024);

/** The seed of the backend's answer to a stream of `seed`. */
export function replySeed(seed: number): number {
  return (seed ^ 0x5bd1e995) >>> 0;
}

/** What a soak connection asks of its backend. */
export interface StreamHeader {
  seed: number;
  up: number;
  down: number;
}

/** The header line for `header`. */
export function formatHeader({ seed, up, down }: StreamHeader): string {
  return `SOAK ${seed} ${up} ${down}\n`;
}

/** Reads a header line (without its newline); undefined when it is not one. */
export function parseHeader(line: string): StreamHeader | undefined {
  const match = /^SOAK (\d{1,10}) (\d{1,12}) (\d{1,12})$/.exec(line);
  if (match === null) return undefined;
  const [seed, up, down] = match.slice(1).map(Number) as [number, number, number];
  if (seed > 0xffffffff) return undefined;
  return { seed, up, down };
}
