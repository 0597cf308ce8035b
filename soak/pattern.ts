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
 * With `SOAK <seed> <up> <down> backend-first\n` the backend finishes first:
 * it sends `HELLO`, the `down` bytes and finishes its stream at once, without
 * a verdict line, and goes on reading and checking the client's stream to its
 * end. The client sends part of its stream, waits for the backend's end, then
 * sends the rest: what it sends after the backend's end must still arrive,
 * which only the backend can tell.
 *
 * So the backend also tells the soak, on its standard output, one line per
 * connection it finished cleanly (its answer and verdict handed to the
 * kernel, its stream finished, the client's stream read to its end):
 * `DONE <seed> OK <up>` or `DONE <seed> BAD <offset>`. The soak joins these
 * with what the clients saw: a client cut short on a stream its backend
 * finished lost bytes on the way back; with `backend-first`, the DONE line is
 * the only verdict on the client's stream.
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
  /** The backend finishes its stream first, and says its verdict only on its DONE line. */
  backendFirst?: boolean;
}

/** The header line for `header`. */
export function formatHeader({ seed, up, down, backendFirst }: StreamHeader): string {
  return `SOAK ${seed} ${up} ${down}${backendFirst ? " backend-first" : ""}\n`;
}

/** Reads a header line (without its newline); undefined when it is not one. */
export function parseHeader(line: string): StreamHeader | undefined {
  const match = /^SOAK (\d{1,10}) (\d{1,12}) (\d{1,12})( backend-first)?$/.exec(line);
  if (match === null) return undefined;
  const [seed, up, down] = match.slice(1, 4).map(Number) as [number, number, number];
  if (seed > 0xffffffff) return undefined;
  return match[4] === undefined ? { seed, up, down } : { seed, up, down, backendFirst: true };
}

/** The backend's verdict on a client's stream: every byte right, or the first wrong offset. */
export type Verdict = { ok: true; count: number } | { ok: false; at: number };

/** The verdict as the backend writes it: `OK <count>` or `BAD <offset>`. */
export function formatVerdict(verdict: Verdict): string {
  return verdict.ok ? `OK ${verdict.count}` : `BAD ${verdict.at}`;
}

/** Reads `OK <count>` or `BAD <offset>`; undefined for anything else. */
export function parseVerdict(text: string): Verdict | undefined {
  const match = /^(OK|BAD) (\d{1,12})$/.exec(text);
  if (match === null) return undefined;
  const n = Number(match[2]);
  return match[1] === "OK" ? { ok: true, count: n } : { ok: false, at: n };
}

/** A backend's line for a connection it finished cleanly: `DONE <seed> <verdict>`. */
export function formatDone(seed: number, verdict: Verdict): string {
  return `DONE ${seed} ${formatVerdict(verdict)}`;
}

/**
 * Reads a backend's DONE line. `verdict` is undefined when the line names a
 * seed but no verdict this protocol knows; the result is undefined when it is
 * not a DONE line at all.
 */
export function parseDone(
  line: string,
): { seed: number; verdict: Verdict | undefined } | undefined {
  const match = /^DONE (\d{1,10}) (.*)$/.exec(line);
  if (match === null || Number(match[1]) > 0xffffffff) return undefined;
  return { seed: Number(match[1]), verdict: parseVerdict(match[2]!) };
}
