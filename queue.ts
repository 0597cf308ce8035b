/**
 * The queue clients wait in when every usable backend is at its connection
 * limit: first come, first served, bounded in length and in waiting time.
 *
 * @module
 */

import { type Clock, realClock } from "./clock.ts";

/** Why a wait ended. */
export type WaitOutcome = "slot" | "timeout" | "full" | "cut";

interface Waiter {
  settle(outcome: WaitOutcome): void;
}

/** Options for {@linkcode WaitQueue}. */
export interface WaitQueueOptions {
  /** Most clients waiting at once; one more is turned away. @default {1000} */
  max?: number;
  /** Longest a client waits for a slot. @default {5000} */
  timeoutMs?: number;
  /** The clock the timeout runs on. @default {realClock} */
  clock?: Clock;
}

/** A bounded FIFO of clients waiting for a backend to have room. */
export class WaitQueue {
  readonly #waiters: Waiter[] = [];
  readonly #max: number;
  readonly #timeoutMs: number;
  readonly #clock: Clock;

  constructor(options: WaitQueueOptions = {}) {
    this.#max = options.max ?? 1000;
    this.#timeoutMs = options.timeoutMs ?? 5000;
    this.#clock = options.clock ?? realClock;
  }

  /** Clients waiting now. */
  get length(): number {
    return this.#waiters.length;
  }

  /**
   * Waits until {@linkcode WaitQueue.wake} reaches this client (`slot`), the
   * timeout passes (`timeout`), {@linkcode WaitQueue.cutAll} is called or
   * `signal` aborts (`cut`); resolves `full` at once when the queue is full.
   */
  wait(signal?: AbortSignal): Promise<WaitOutcome> {
    if (this.#waiters.length >= this.#max) return Promise.resolve("full");
    if (signal?.aborted) return Promise.resolve("cut");
    return new Promise((resolve) => {
      const onAbort = () => waiter.settle("cut");
      const waiter: Waiter = {
        settle: (outcome) => {
          this.#clock.clearTimer(timer);
          signal?.removeEventListener("abort", onAbort);
          const index = this.#waiters.indexOf(waiter);
          if (index >= 0) this.#waiters.splice(index, 1);
          resolve(outcome);
        },
      };
      const timer = this.#clock.setTimer(() => waiter.settle("timeout"), this.#timeoutMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /** A slot came free: the longest-waiting client tries again. */
  wake(): void {
    this.#waiters[0]?.settle("slot");
  }

  /** Ends every wait (drain timeout). */
  cutAll(): void {
    for (const waiter of [...this.#waiters]) waiter.settle("cut");
  }
}
