/**
 * What a client sends before its backend is joined: kept in order, bounded,
 * readable by the listener (a PROXY header, a TLS ClientHello, a prefix to
 * route on) and forwarded by the join. Both engines keep one per watched
 * client and feed it as bytes arrive.
 *
 * @module
 */

/** Bytes from a watched client, not yet forwarded. */
export class EarlyBytes {
  /** The bytes, in order; the first may have been cut at its start by {@linkcode discard}. */
  readonly chunks: Uint8Array[] = [];
  /** Total bytes held. */
  bytes = 0;
  /** The client ended its stream (half-close) before it was joined. */
  ended = false;
  /** The client failed (reset, …) before it was joined. */
  failed = false;
  #waiters: (() => void)[] = [];

  /** Keeps a chunk that arrived. */
  push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
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

  /** Everything held, as one array (a copy only when held in pieces). */
  view(): Uint8Array {
    if (this.chunks.length === 1) return this.chunks[0]!;
    const joined = new Uint8Array(this.bytes);
    let at = 0;
    for (const chunk of this.chunks) {
      joined.set(chunk, at);
      at += chunk.length;
    }
    if (this.chunks.length > 1) this.chunks.splice(0, this.chunks.length, joined);
    return joined;
  }

  /** Drops the first `count` bytes: they were meant for the balancer, not the backend. */
  discard(count: number): void {
    let left = Math.min(count, this.bytes);
    this.bytes -= left;
    while (left > 0) {
      const first = this.chunks[0]!;
      if (first.length <= left) {
        this.chunks.shift();
        left -= first.length;
      } else {
        this.chunks[0] = first.subarray(left);
        left = 0;
      }
    }
  }

  /**
   * Resolves once more than `known` bytes are held, or the client has ended
   * or failed (at once if so already). One waiter per watched client at a
   * time is the listener's use; more are allowed.
   */
  more(known: number): Promise<void> {
    if (this.bytes > known || this.ended || this.failed) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #wake(): void {
    const waiters = this.#waiters;
    if (waiters.length === 0) return;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }
}
