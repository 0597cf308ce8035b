/**
 * Balancing policy: which backend gets the next connection attempt.
 *
 * A strategy is pure policy. It sees the caller's backend list and the
 * backends this client has already tried; it imports no socket code, never
 * reorders the list, and returns `undefined` when nothing is left to try, so
 * the caller decides what that means for the client.
 *
 * @module
 */

/** What a strategy knows about the attempt it is choosing for. */
export interface PickContext<B> {
  /** Backends this client already tried and failed to reach; never picked again. */
  readonly tried: ReadonlySet<B>;
}

/** Chooses a backend for each connection attempt. */
export interface Strategy<B> {
  /** Returns the backend to try next, or `undefined` when none is left. */
  pick(backends: readonly B[], context: PickContext<B>): B | undefined;
}

/**
 * Round robin: s1, s2, s3, s1, … in the order given.
 *
 * The cursor moves once per connection attempt, to just past the backend it
 * picked (HAProxy does the same), so a retry after a failed connect goes on to
 * the next backend rather than starting over. Backends already tried for this
 * client are stepped over.
 *
 * No lock guards the cursor: JavaScript runs one callback at a time on the
 * event loop, and `pick` never awaits, so two connections cannot interleave
 * inside it.
 */
export class RoundRobin<B> implements Strategy<B> {
  #cursor = 0;

  pick(backends: readonly B[], context: PickContext<B>): B | undefined {
    const count = backends.length;
    for (let step = 0; step < count; step++) {
      const index = (this.#cursor + step) % count;
      const backend = backends[index]!;
      if (context.tried.has(backend)) continue;
      this.#cursor = (index + 1) % count;
      return backend;
    }
    return undefined;
  }
}
