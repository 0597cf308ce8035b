/**
 * The epoll set of the `epoll` engine (engine_epoll.ts): which descriptor
 * is watched for what, whose handler gets its events, and the wait itself.
 *
 * A generation number guards every descriptor: an event carries the
 * generation it was registered with, and one for a descriptor closed (and
 * its number reused) earlier in the same batch is dropped.
 *
 * The loop runs owned, in a data-plane Worker that blocks in `epoll_wait`
 * itself (dataplane.ts, threads.ts), or attached, in the caller's thread,
 * for in-process tests: `epoll_wait` then runs on a thread of Deno's (a
 * nonblocking FFI call, once per batch of events, never per connection) so
 * the caller's event loop runs on (see docs/architecture.md).
 *
 * @module
 */

import { type Clock, realClock } from "./clock.ts";
import {
  EINTR,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLL_EVENT_BYTES,
  epollEvents,
  epollFd,
  epollGeneration,
  EPOLLIN,
  errnoError,
  Sys,
} from "./libc.ts";

/**
 * Bytes one read takes at most: the scratch buffer every connection shares
 * (one per thread). Measured on one stream through a copying loop: 256 KiB
 * moved 16 Gbit/s at 360 ms of CPU per GB; 64 KiB 11-12 Gbit/s at 530-620;
 * 1 MiB 12-14 Gbit/s (past the cache).
 */
export const SCRATCH_BYTES = 256 * 1024;
/** Events taken from one `epoll_wait`. */
const BATCH = 256;
/** The interest of a descriptor taken out of the epoll set for now ({@linkcode EpollLoop.park}). */
const PARKED = -1;
/**
 * An owned loop yields to its thread's event loop about this often, busy
 * or going idle, and sooner only when a message or awaited work wants a
 * turn: a turn is a message through a channel, about 2 KB of garbage and
 * 2-4 µs, and a busy loop went idle for an instant 1,500 times a second
 * (kept-alive load), most of what it allocated when it yielded each time.
 * The event loop's own tasks (a `setTimeout` of a policy module's) run only
 * at turns: within about this while the loop works, and at its next
 * wake-up (an event, one of its own timers, a message) while it sleeps.
 */
const YIELD_EVERY_MS = 5;

/** Something the loop calls when its descriptor has events. */
export interface Handler {
  onEvents(events: number): void;
}

/** A timer of an owned loop. */
interface LoopTimer {
  id: number;
  at: number;
  callback: () => void;
}

/**
 * The epoll set, and the handler of each registered descriptor.
 *
 * Two ways to run it. Attached (the default): it starts itself when a
 * descriptor is added and waits on a thread of Deno's, so the caller's event
 * loop runs on. Owned ({@linkcode EpollLoop.runOwned}, in a data-plane
 * Worker): the thread blocks in `epoll_wait` itself, with the timeout set by
 * the loop's own timers — the loop is then the thread's {@linkcode Clock}.
 */
export class EpollLoop implements Clock {
  readonly sys = new Sys();
  readonly epfd: number;
  readonly #wakeFd: number;
  readonly #handlers: (Handler | undefined)[] = [];
  /** Called around each batch of events (the UDP engine sends its queued replies after one). */
  readonly #brackets: { begin: () => void; end: () => void }[] = [];
  /** What each descriptor is watched for; {@linkcode PARKED} while out of the set. */
  readonly #interest: number[] = [];
  readonly #generations: number[] = [];
  readonly #events = new Uint8Array(BATCH * EPOLL_EVENT_BYTES);
  readonly #eventsView = new DataView(this.#events.buffer);
  readonly #eventsPointer = Deno.UnsafePointer.of(this.#events);
  readonly #ctl = new Uint8Array(EPOLL_EVENT_BYTES);
  readonly #ctlEvent = {
    view: new DataView(this.#ctl.buffer),
    pointer: Deno.UnsafePointer.of(this.#ctl),
  };
  /** The shared read buffer, and the pointer libc reads into. */
  readonly scratch = new Uint8Array(SCRATCH_BYTES);
  readonly scratchPointer = Deno.UnsafePointer.of(this.scratch);
  #running: Promise<void> | undefined;
  #registered = 0;
  /** Waits that returned events: a spinning loop shows here. @internal (tests) */
  wakeUps = 0;
  /** Marks, by descriptor number, of what this loop holds open (see {@linkcode EpollLoop.track}). */
  #held: Uint8Array | undefined;
  readonly #owned: boolean;
  // An owned loop's timers, in deadline order.
  #timers: LoopTimer[] = [];
  #nextTimer = 1;
  /** An owned loop's time, read once per wake-up (see {@linkcode EpollLoop.now}). */
  #now = performance.now();
  /** When an owned loop last yielded to its thread's event loop. */
  #yieldedAt = -Infinity;

  constructor(options: { owned?: boolean } = {}) {
    this.#owned = options.owned ?? false;
    this.epfd = this.#check(this.sys.epollCreate(), "epoll_create1");
    this.#wakeFd = this.#check(this.sys.eventfd(), "eventfd");
    this.#check(
      this.sys.epollCtl(this.epfd, EPOLL_CTL_ADD, this.#wakeFd, EPOLLIN, 0, this.#ctlEvent),
      "epoll_ctl",
    );
  }

  #check(result: number, what: string): number {
    if (result < 0) throw errnoError(result, what);
    return result;
  }

  /**
   * Marks in `held` (shared with the main thread) every descriptor this loop
   * holds open, from now on: if this thread dies, the main thread closes
   * them, so its listening sockets stop taking connections nobody serves.
   */
  track(held: Uint8Array): void {
    this.#held = held;
    this.hold(this.epfd);
    this.hold(this.#wakeFd);
  }

  /** Marks `fd` as held open here (a socket just made or accepted). */
  hold(fd: number): void {
    if (this.#held !== undefined && fd >= 0 && fd < this.#held.length) this.#held[fd] = 1;
  }

  /** Watches `fd` for `events`, calling `handler`; starts the loop if it is idle. */
  add(fd: number, events: number, handler: Handler): void {
    const generation = ((this.#generations[fd] ?? 0) + 1) >>> 0;
    const added = this.sys.epollCtl(
      this.epfd,
      EPOLL_CTL_ADD,
      fd,
      events,
      generation,
      this.#ctlEvent,
    );
    if (added < 0) throw errnoError(added, "epoll_ctl");
    this.#handlers[fd] = handler;
    this.#interest[fd] = events;
    this.#generations[fd] = generation;
    this.#registered++;
    this.hold(fd);
    if (!this.#owned) this.#running ??= this.#run();
  }

  /**
   * An owned loop reads the time once per wake-up, as HAProxy and NGINX do:
   * every connection in a batch sees the same instant.
   */
  now(): number {
    return this.#owned ? this.#now : performance.now();
  }

  setTimer(callback: () => void, ms: number, options?: { unref?: boolean }): number {
    if (!this.#owned) return realClock.setTimer(callback, ms, options);
    const timer = { id: this.#nextTimer++, at: this.now() + Math.max(0, ms), callback };
    let at = this.#timers.length;
    while (at > 0 && this.#timers[at - 1]!.at > timer.at) at--;
    this.#timers.splice(at, 0, timer);
    return timer.id;
  }

  clearTimer(id: number | undefined): void {
    if (!this.#owned) return realClock.clearTimer(id);
    const at = this.#timers.findIndex((timer) => timer.id === id);
    if (at >= 0) this.#timers.splice(at, 1);
  }

  /**
   * Runs an owned loop until `stop()` says so: waits in `epoll_wait` (this
   * thread blocks; the timeout is the next timer's), hands events to their
   * handlers, fires due timers, lets promise callbacks run after every
   * batch. About every {@linkcode YIELD_EVERY_MS}, busy or about to block, it
   * yields a turn to the thread's event loop (its tasks, messages); an idle
   * loop whose turn is not yet due blocks no longer than until it is.
   * `onWake` is called after an {@linkcode EpollLoop.nudge} (a message may be
   * waiting), after a turn.
   */
  async runOwned(stop: () => boolean, onWake: () => boolean): Promise<void> {
    let woken = false;
    let idle = false;
    while (!stop()) {
      // Busy: poll. Every YIELD_EVERY_MS, and when a message or a lookup
      // wants it, let the event loop run a turn (tasks, messages) first; an
      // idle loop that did not, blocks no longer than until its turn is due.
      // While work that needs the event loop is under way (an import), never
      // block in epoll_wait; while a lookup is, block a millisecond at most.
      let took = false;
      const outside = this.#outside > 0;
      const settling = this.#settling > 0;
      const due = (idle && settling) || this.#now - this.#yieldedAt >= YIELD_EVERY_MS;
      if (due || woken || outside) {
        await this.#yieldTurn();
        this.#yieldedAt = this.#now = performance.now();
        // The message may come a turn after its wake-up: keep looking until it has.
        if (woken) {
          woken = !onWake();
          took = true;
        }
        if (stop()) break;
      }
      // What onWake took runs in promise callbacks queued just now: poll, and
      // let them run (the next turn) before any wait that could block.
      const timeout = idle && !woken && !took && !outside ? this.#waitFor(due, settling) : 0;
      const count = this.sys.epollWait(this.epfd, this.#eventsPointer, BATCH, timeout);
      this.#now = performance.now();
      if (count > 0) this.wakeUps++;
      if (count < 0 && count !== -EINTR) throw errnoError(count, "epoll_wait");
      if (count > 0 && this.#dispatchOwned(this.#eventsView, count)) woken = true;
      this.#fireTimers();
      idle = count <= 0;
      // Promise callbacks queued by the handlers run here.
      await null;
    }
  }

  // How long an idle owned loop may block: until its next timer, and no
  // later than its next yield (when it skipped one) or a millisecond (while
  // a lookup is under way); -1 for as long as it takes.
  #waitFor(justYielded: boolean, settling: boolean): number {
    const next = this.#timers[0];
    let ms = next === undefined ? -1 : Math.max(0, Math.ceil(next.at - this.now()));
    const cap = settling
      ? 1
      : justYielded
      ? -1
      : Math.max(0, Math.ceil(this.#yieldedAt + YIELD_EVERY_MS - this.#now));
    if (cap >= 0 && (ms < 0 || cap < ms)) ms = cap;
    return ms;
  }

  // Promises the thread's event loop settles, awaited now (see settle()).
  #settling = 0;

  /**
   * Waits for `work`, which the thread's event loop settles (a host-name
   * lookup): until it has, an owned loop going idle yields to the event
   * loop first and blocks in `epoll_wait` for a millisecond at most.
   */
  async settle<T>(work: Promise<T>): Promise<T> {
    this.#settling++;
    try {
      return await work;
    } finally {
      this.#settling--;
    }
  }

  // Work under way that only the thread's event loop moves on (see outside()).
  #outside = 0;

  /**
   * Runs `work`, which needs the thread's event loop (a module import, file
   * reads), without the owned loop blocking in `epoll_wait` until it is done:
   * meanwhile it polls, a turn of the event loop at a time.
   */
  async outside<T>(work: () => Promise<T>): Promise<T> {
    this.#outside++;
    try {
      return await work();
    } finally {
      this.#outside--;
    }
  }

  // One turn of the thread's event loop, through a message to ourselves: a
  // task, so every promise callback queued before runs first, without the
  // delay a timer would add.
  #turn: { channel: MessageChannel; resolve: (() => void) | undefined } | undefined;

  #yieldTurn(): Promise<void> {
    if (this.#turn === undefined) {
      const turn = {
        channel: new MessageChannel(),
        resolve: undefined as (() => void) | undefined,
      };
      turn.channel.port2.onmessage = () => turn.resolve?.();
      this.#turn = turn;
    }
    const turn = this.#turn;
    return new Promise((resolve) => {
      turn.resolve = resolve;
      turn.channel.port1.postMessage(null);
    });
  }

  /** The eventfd that {@linkcode EpollLoop.nudge} writes; another thread may write it too. */
  get wakeFd(): number {
    return this.#wakeFd;
  }

  // Like dispatch(), saying whether the wake-up descriptor was among the events.
  #dispatchOwned(view: DataView, count: number): boolean {
    let woken = false;
    for (let i = 0; i < count; i++) {
      if (epollFd(view, i) === this.#wakeFd) woken = true;
    }
    this.dispatch(view, count);
    return woken;
  }

  #fireTimers(): void {
    const now = this.now();
    // Only timers set before this pass: one that keeps setting itself again
    // at 0 ms must not keep the loop from epoll_wait.
    const setBefore = this.#nextTimer;
    while (this.#timers.length > 0 && this.#timers[0]!.at <= now) {
      if (this.#timers[0]!.id >= setBefore) break;
      this.#timers.shift()!.callback();
    }
  }

  /** Changes what `fd` is watched for (a no-op when it is already that). */
  modify(fd: number, events: number): void {
    const interest = this.#interest[fd];
    if (interest === events) return;
    if (interest === PARKED) {
      // Out of the set until there is something to watch for again.
      if (events === 0) return;
      this.#interest[fd] = events;
      const generation = this.#generations[fd]!;
      this.sys.epollCtl(this.epfd, EPOLL_CTL_ADD, fd, events, generation, this.#ctlEvent);
      return;
    }
    this.#interest[fd] = events;
    this.sys.epollCtl(this.epfd, EPOLL_CTL_MOD, fd, events, this.#generations[fd]!, this.#ctlEvent);
  }

  /**
   * Takes `fd` out of the epoll set until {@linkcode EpollLoop.modify} asks
   * for events again: the kernel reports a hang-up at every wait whatever
   * we ask for, so a hung-up socket we are not reading would spin the loop.
   */
  park(fd: number): void {
    if (this.#interest[fd] === PARKED || this.#handlers[fd] === undefined) return;
    this.#interest[fd] = PARKED;
    this.sys.epollCtl(this.epfd, EPOLL_CTL_DEL, fd, 0, 0, this.#ctlEvent);
  }

  /** Hands `fd`'s events to another handler, keeping its registration. */
  replace(fd: number, handler: Handler): void {
    this.#handlers[fd] = handler;
  }

  /** Stops watching `fd` and closes it; a later event for its number is dropped. */
  close(fd: number): void {
    if (this.#handlers[fd] !== undefined) {
      // No EPOLL_CTL_DEL: closing the one descriptor of a socket (we never
      // duplicate one) takes it out of the epoll set, one system call fewer.
      this.#handlers[fd] = undefined;
      this.#interest[fd] = 0;
      this.#generations[fd] = ((this.#generations[fd] ?? 0) + 1) >>> 0;
      // Nothing left to watch: let a wait in progress return, so the loop ends.
      if (--this.#registered === 0) this.nudge();
    }
    if (this.#held !== undefined && fd < this.#held.length) this.#held[fd] = 0;
    this.sys.close(fd);
  }

  /** Resolves once the loop has ended (nothing registered). */
  idle(): Promise<void> {
    return this.#running ?? Promise.resolve();
  }

  /** Waits for the loop to end, then closes the epoll set itself. */
  async dispose(): Promise<void> {
    await this.idle();
    this.#turn?.channel.port1.close();
    this.#turn?.channel.port2.close();
    this.#turn = undefined;
    this.close(this.#wakeFd);
    this.close(this.epfd);
  }

  async #run(): Promise<void> {
    while (this.#registered > 0) {
      const count = await this.sys.epollWaitAsync(this.epfd, this.#eventsPointer, BATCH, -1);
      if (count < 0) {
        if (count === -EINTR) continue;
        throw errnoError(count, "epoll_wait");
      }
      if (count > 0) this.wakeUps++;
      this.dispatch(this.#eventsView, count);
    }
    this.#running = undefined;
  }

  /**
   * Calls `begin` before the handlers of every batch of events run, and
   * `end` after them: work the handlers queue (UDP replies to many clients)
   * leaves once per batch.
   */
  bracket(begin: () => void, end: () => void): void {
    this.#brackets.push({ begin, end });
  }

  /** Hands each of `count` events in `view` to its descriptor's handler. @internal (tests) */
  dispatch(view: DataView, count: number): void {
    const brackets = this.#brackets;
    for (let b = 0; b < brackets.length; b++) brackets[b]!.begin();
    try {
      for (let i = 0; i < count; i++) {
        const fd = epollFd(view, i);
        if (fd === this.#wakeFd) {
          this.sys.drain(this.#wakeFd);
          continue;
        }
        // Closed, or closed and reused, earlier in this batch: not for its new owner.
        if (epollGeneration(view, i) !== this.#generations[fd]) continue;
        this.#handlers[fd]?.onEvents(epollEvents(view, i));
      }
    } finally {
      for (let b = 0; b < brackets.length; b++) brackets[b]!.end();
    }
  }

  /** The generation `fd` is registered with now. @internal (tests) */
  generation(fd: number): number | undefined {
    return this.#generations[fd];
  }

  /** Wakes a loop waiting with nothing to do, so it notices new registrations or the end. */
  nudge(): void {
    this.sys.wake(this.#wakeFd);
  }
}
