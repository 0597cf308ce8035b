/**
 * The one clock every timer in the process runs on: connect, idle and
 * half-closed timeouts, the queue, the bridge, health checks, the admin
 * server's deadlines, the log's flush, the supervisor's backoff.
 *
 * Injected everywhere, so tests of timing logic run on `FakeClock`
 * (`test_util.ts`), fast and exact, instead of sleeping.
 *
 * @module
 */

/** Time in milliseconds, and timers on it. */
export interface Clock {
  /** Milliseconds since some fixed point (never goes back). */
  now(): number;
  /**
   * Calls `callback` once, `ms` from now; returns an id for
   * {@linkcode Clock.clearTimer}. A timer set with `unref` does not keep the
   * process alive by itself.
   */
  setTimer(callback: () => void, ms: number, options?: { unref?: boolean }): number;
  /** Cancels a timer; unknown or fired ids are ignored. */
  clearTimer(id: number | undefined): void;
}

/** The real clock: `performance.now()` and `setTimeout`. */
export const realClock: Clock = {
  now: () => performance.now(),
  setTimer(callback, ms, options) {
    const id = setTimeout(callback, ms) as unknown as number;
    if (options?.unref) Deno.unrefTimer(id);
    return id;
  },
  clearTimer: (id) => clearTimeout(id),
};

/** Resolves after `ms` on `clock`, or at once when `signal` aborts. */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clock.clearTimer(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = clock.setTimer(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * The backoff rule every retry loop here uses: start at `firstMs`, double
 * after each failure, never past `maxMs`.
 */
export function nextBackoff(previousMs: number, firstMs: number, maxMs: number): number {
  return Math.min(previousMs === 0 ? firstMs : previousMs * 2, maxMs);
}
