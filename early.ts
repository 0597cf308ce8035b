/**
 * What a client sends before its backend is joined: kept in order, bounded,
 * readable by the listener (a PROXY header, a TLS ClientHello, a prefix to
 * route on) and forwarded by the join. Both engines keep one per watched
 * client and feed it as bytes arrive.
 *
 * The bytes live in one buffer that doubles as it fills, so reading all of
 * them again after every arrival (as a parser waiting for a whole header
 * does) copies nothing, and a client sending a byte at a time costs linear
 * time, not quadratic.
 *
 * @module
 */

import type { Attempt, Peeked } from "./engine.ts";

const EMPTY = new Uint8Array(0);
const FIRST_CAPACITY = 512;
/**
 * First buffers given back ({@linkcode EarlyBytes.recycle}), for the next
 * clients: most clients send their first bytes while we dial, and a buffer
 * made for each is an allocation outside the heap, and work for the
 * collector, per connection. At most this many are kept.
 */
const SPARE_MAX = 256;
const spare: Uint8Array<ArrayBuffer>[] = [];
/** Up to this many bytes, a copy loop costs less than making a view to copy from. */
const SMALL_COPY = 512;

/** Bytes from a watched client, not yet forwarded. */
export class EarlyBytes {
  /** The client ended its stream (half-close) before it was joined. */
  ended = false;
  /** The client failed (reset, …) before it was joined. */
  failed = false;
  #buffer = EMPTY;
  #start = 0;
  #end = 0;
  #waiters: (() => void)[] | undefined;
  /** A view of the buffer went out (a peek): it is not given back. */
  #lent = false;

  /** Bytes held. */
  get bytes(): number {
    return this.#end - this.#start;
  }

  /** What is held, as the pieces a join forwards in order (none, or one). */
  get chunks(): Uint8Array[] {
    return this.#end === this.#start ? [] : [this.view()];
  }

  /**
   * Keeps (a copy of) a chunk that arrived: its first `length` bytes (a read
   * buffer's, with no view made for them).
   */
  push(chunk: Uint8Array, length = chunk.length): void {
    if (this.#end + length > this.#buffer.length) this.#grow(length);
    const buffer = this.#buffer;
    if (length === chunk.length) buffer.set(chunk, this.#end);
    else if (length > SMALL_COPY) buffer.set(chunk.subarray(0, length), this.#end);
    // A request line or a ClientHello: copied byte by byte, cheaper than a view.
    else for (let i = 0; i < length; i++) buffer[this.#end + i] = chunk[i]!;
    this.#end += length;
    this.#wake();
  }

  /** The client ended its stream. */
  end(): void {
    this.ended = true;
    this.#wake();
  }

  /** The client is gone. */
  fail(): void {
    this.failed = true;
    this.#wake();
  }

  /**
   * Everything held, in order: a view, valid until the next push or
   * discard. The buffer is then lent, and {@linkcode EarlyBytes.recycle}
   * keeps it from other clients.
   */
  view(): Uint8Array {
    this.#lent = true;
    return this.#buffer.subarray(this.#start, this.#end);
  }

  /** Copies what is held into `target` at `at` (no view made); returns how many bytes. */
  copyTo(target: Uint8Array, at: number): number {
    const held = this.#end - this.#start;
    const buffer = this.#buffer;
    if (held > SMALL_COPY) target.set(buffer.subarray(this.#start, this.#end), at);
    else for (let i = 0; i < held; i++) target[at + i] = buffer[this.#start + i]!;
    return held;
  }

  /** Drops the first `count` bytes: they were meant for the balancer, not the backend. */
  discard(count: number): void {
    this.#start = Math.min(this.#end, this.#start + count);
  }

  /**
   * `Engine.peek` for both engines: once more than `known` bytes
   * are held, or the client has ended or failed, what is held; rejects
   * with the attempt's reason when it is abandoned first.
   */
  async peek(known: number, attempt: Attempt): Promise<Peeked> {
    if (attempt.aborted) throw attempt.reason;
    const aborted = Promise.withResolvers<never>();
    attempt.setOnAbort(aborted.reject);
    try {
      await Promise.race([this.more(known), aborted.promise]);
    } finally {
      attempt.setOnAbort(undefined);
    }
    return { bytes: this.view(), ended: this.ended, failed: this.failed };
  }

  /**
   * Resolves once more than `known` bytes are held, or the client has ended
   * or failed (at once if so already).
   */
  more(known: number): Promise<void> {
    if (this.bytes > known || this.ended || this.failed) return Promise.resolve();
    return new Promise((resolve) => (this.#waiters ??= []).push(resolve));
  }

  /**
   * Forgets what is held, giving the buffer back for another client's bytes
   * when no view of it went out but to the caller, who is done with it.
   */
  recycle(): void {
    if (this.#lent) return;
    const buffer = this.#buffer;
    this.#buffer = EMPTY;
    this.#start = this.#end = 0;
    if (buffer.length === FIRST_CAPACITY && spare.length < SPARE_MAX) spare.push(buffer);
  }

  // Room for `adding` more: the held bytes move to the front of a buffer
  // at least twice as big as they need.
  #grow(adding: number): void {
    const held = this.#end - this.#start;
    const capacity = Math.max(FIRST_CAPACITY, 2 * (held + adding));
    const next = capacity === FIRST_CAPACITY && spare.length > 0
      ? spare.pop()!
      : new Uint8Array(capacity);
    if (held > 0) next.set(this.#buffer.subarray(this.#start, this.#end));
    this.#buffer = next;
    this.#start = 0;
    this.#end = held;
  }

  #wake(): void {
    const waiters = this.#waiters;
    if (waiters === undefined) return;
    this.#waiters = undefined;
    for (const wake of waiters) wake();
  }
}
