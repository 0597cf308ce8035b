/**
 * Many timeouts, one timer: the connect timeout of every backend attempt.
 *
 * In Deno 2.9.6 `setTimeout` builds a Node-style `Timeout` object and a
 * runtime timer; one of those per new connection (armed, then almost always
 * cleared a fraction of a millisecond later) was about a sixth of the
 * balancer's own instructions per connection (README, "Speed"). Here an
 * attempt costs an entry in an array, and one timer serves them all.
 *
 * Entries are kept in deadline order. Attempts share one length of timeout
 * (a reload may change it), so a new entry almost always goes at the end;
 * the timer is armed for the earliest deadline and, when it fires, expires
 * what is due and re-arms for the next. A cancelled entry is only marked;
 * entries are dropped from the front as soon as they are cancelled or due,
 * so the queue holds about as many entries as there are attempts in flight.
 *
 * @module
 */

import { type Clock, realClock } from "./clock.ts";

/** A timeout in a {@linkcode TimeoutQueue}; cancel it once the work is done. */
export interface Timeout {
  cancel(): void;
}

class Entry implements Timeout {
  cancelled = false;
  constructor(
    readonly deadline: number,
    readonly onTimeout: () => void,
    readonly queue: TimeoutQueue,
  ) {}

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.queue.dropFront();
  }
}

/** Timeouts served by a single timer. */
export class TimeoutQueue {
  // Spent slots before #head are emptied: a cancelled entry's callback
  // holds its connection, which must not outlive it here.
  #entries: (Entry | undefined)[] = [];
  #head = 0;
  #timer: number | undefined;
  /** When the armed timer is due. */
  #timerAt = Infinity;
  readonly #clock: Clock;

  constructor(clock: Clock = realClock) {
    this.#clock = clock;
  }

  /** Timeouts neither cancelled, expired nor dropped yet (cancelled ones behind a live one count). */
  get length(): number {
    return this.#entries.length - this.#head;
  }

  /** Calls `onTimeout` in `ms` unless the returned timeout is cancelled first. */
  add(ms: number, onTimeout: () => void): Timeout {
    const entry = new Entry(this.#clock.now() + ms, onTimeout, this);
    const entries = this.#entries;
    let at = entries.length;
    // Only after a reload shortened the timeout can a deadline come before the last.
    while (at > this.#head && entries[at - 1]!.deadline > entry.deadline) at--;
    if (at === entries.length) entries.push(entry);
    else entries.splice(at, 0, entry);
    if (entry.deadline < this.#timerAt) this.#arm(entry.deadline);
    return entry;
  }

  /** Forgets every timeout and stops the timer (at shutdown). */
  clear(): void {
    this.#entries = [];
    this.#head = 0;
    this.#disarm();
  }

  /** @internal Drops cancelled entries from the front. */
  dropFront(): void {
    const entries = this.#entries;
    while (this.#head < entries.length && entries[this.#head]!.cancelled) {
      entries[this.#head++] = undefined;
    }
    this.#compact();
  }

  #fire(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = this.#clock.now();
    while (this.#head < this.#entries.length) {
      const entry = this.#entries[this.#head]!;
      if (!entry.cancelled && entry.deadline > now) break;
      this.#entries[this.#head++] = undefined;
      if (!entry.cancelled) {
        entry.cancelled = true;
        entry.onTimeout();
      }
    }
    this.#compact();
    // A callback may have added a timeout (a retry) and armed the timer for
    // it; one queued before it may be due sooner.
    const next = this.#entries[this.#head];
    if (next !== undefined && next.deadline < this.#timerAt) this.#arm(next.deadline);
  }

  #arm(deadline: number): void {
    this.#disarm();
    this.#timerAt = deadline;
    // Never keeps the process alive by itself: the attempts it times belong
    // to connections, which do.
    this.#timer = this.#clock.setTimer(
      () => this.#fire(),
      Math.max(0, deadline - this.#clock.now()),
      { unref: true },
    );
  }

  #disarm(): void {
    if (this.#timer !== undefined) this.#clock.clearTimer(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
  }

  // Reuse the array: reset it when empty, shift it down when mostly spent.
  #compact(): void {
    const entries = this.#entries;
    if (this.#head === entries.length) {
      entries.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > entries.length) {
      this.#entries = entries.slice(this.#head);
      this.#head = 0;
    }
  }
}
