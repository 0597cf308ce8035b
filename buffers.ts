/**
 * Read buffers, reused rather than allocated per connection.
 *
 * A pending read in Deno holds its buffer (a zero-length read returns at
 * once, so it cannot wait without one), so every idle connection costs a
 * buffer per direction. The bridge therefore reads into a small buffer while
 * traffic is light and borrows a large one only while reads keep filling the
 * small one. Both come from pools, so a new connection neither allocates nor
 * zeroes memory in the common case.
 *
 * @module
 */

/** A free list of equally sized buffers. */
export class BufferPool {
  readonly #free: Uint8Array[] = [];
  /** Size of every buffer in bytes. */
  readonly size: number;
  /** The most buffers kept for reuse; more are left to the garbage collector. */
  readonly keep: number;

  constructor(size: number, keep: number) {
    this.size = size;
    this.keep = keep;
  }

  /** A buffer to read into: a free one if any, else a new one. */
  take(): Uint8Array {
    return this.#free.pop() ?? new Uint8Array(this.size);
  }

  /** Returns a buffer no read or write is still using. */
  give(buffer: Uint8Array): void {
    if (this.#free.length < this.keep) this.#free.push(buffer);
  }

  /** Buffers waiting for reuse. */
  get free(): number {
    return this.#free.length;
  }
}

/** Small buffers: what every direction of every connection holds while idle. */
export const SMALL_BUFFER_BYTES = 1024;
/** Large buffers: borrowed while a direction moves bulk data. */
export const LARGE_BUFFER_BYTES = 262144;

/** The pools the bridge uses unless given others; each keeps up to 4 MiB for reuse. */
export const defaultPools = {
  small: new BufferPool(SMALL_BUFFER_BYTES, 4096),
  large: new BufferPool(LARGE_BUFFER_BYTES, 16),
};
