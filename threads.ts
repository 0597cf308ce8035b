/**
 * `--threads N` on the epoll engine: the listeners run in N data-plane
 * threads (dataplane.ts), each blocking in its own `epoll_wait` on its own
 * SO_REUSEPORT socket per listener; the kernel spreads new connections across
 * them. Seen from the main thread they are one {@linkcode ListenerHost}: the
 * pools, health checks, admin API, metrics and access log stay here.
 *
 * Main → threads: the configuration, and every change to a pool's backends
 * (health, admin), each message followed by a write to the thread's eventfd.
 * Threads → main: batches of events (access records, diagnostics), counts
 * per backend and connect outcomes, which feed the one set of backends here
 * (passive health is decided here, for every thread at once).
 *
 * A backend's `maxconn_per_backend` is shared out among the threads (each
 * allows its share, rounded up).
 *
 * @module
 */

import { formatHostPort, parseListen, UDP_SCHEME } from "./address.ts";
import type { ListenerStats } from "./admin.ts";
import { type Config, listenerKey, listenerPool } from "./config.ts";
import { describe, StartError } from "./errors.ts";
import { isRejectReason, type LoadBalancerEvent, type RejectReason } from "./events.ts";
import { edgeSettingsOf, udpSettingsOf } from "./plan.ts";
import { shiftHealth } from "./health.ts";
import { Sys } from "./libc.ts";
import {
  addUdpCounts,
  DURATION_BUCKETS,
  emptyUdpCounts,
  Histogram,
  type UdpCounts,
} from "./metrics.ts";
import type { UdpSettings } from "./udp_proxy.ts";
import type { Pool } from "./pool.ts";
import { type FromThread, type PoolSnapshot, type ToThreadBody, unpackEvents } from "./protocol.ts";
import type { ListenerConfig, ListenerHost, Where } from "./runtime.ts";

/**
 * Descriptor numbers a thread's holdings are tracked for (one shared byte
 * each; untouched pages cost no memory). Numbers past it are not tracked.
 */
const HELD_SLOTS = 1 << 20;

/** One data-plane thread, as the main thread keeps it. */
interface Thread {
  readonly worker: Worker;
  /** Set by the thread while it holds a descriptor open: what to close if it dies. */
  readonly held: Uint8Array;
  /** It died (or was not wanted): nothing more may be posted to it. */
  dead: boolean;
  wakeFd: number;
  /** Raised before each message posted: the thread compares it with what it has received. */
  readonly sent: Int32Array;
  /** Replies awaited, by the id of their request. */
  readonly waiters: Map<number, (message: FromThread) => void>;
  /** Connections in progress here, per listener and per backend (`pool address`). */
  active: Readonly<Record<string, number>>;
  readonly backendActive: Map<string, number>;
}

/** A listener's figures, summed over the threads. */
class ThreadedListener implements ListenerStats {
  readonly durations = new Histogram(DURATION_BUCKETS);
  readonly rejected = new Map<RejectReason, number>();
  pool: { name: string };
  /** A UDP listener's counts, summed over the threads' batches. */
  readonly udp: UdpCounts | undefined;
  constructor(
    readonly name: string,
    pool: string,
    readonly threads: readonly Thread[],
    udp: boolean,
  ) {
    this.pool = { name: pool };
    this.udp = udp ? emptyUdpCounts() : undefined;
  }
  get activeConnections(): number {
    return this.threads.reduce((sum, thread) => sum + (thread.active[this.name] ?? 0), 0);
  }
}

/** Options for {@linkcode ThreadedListeners}. */
export interface ThreadedListenersOptions {
  /** How many data-plane threads. */
  threads: number;
  /** Where the threads' events go (the access log, diagnostics). */
  onEvent: (event: LoadBalancerEvent) => void;
  /**
   * Bind each new address once first, without SO_REUSEPORT, to find a port
   * another program holds (and make port 0 concrete). Off in a `--workers`
   * worker, whose siblings hold the port. @default {true}
   */
  probe?: boolean;
}

/** The listeners, run by data-plane threads. */
export class ThreadedListeners implements ListenerHost {
  /** TLS runs on the deno engine, not in these threads. */
  readonly terminatesTls = false;
  readonly #sys = new Sys();
  readonly #count: number;
  readonly #onEvent: (event: LoadBalancerEvent) => void;
  readonly #probeFirst: boolean;
  #threads: Thread[] = [];
  #config: Config | undefined;
  #pools: ReadonlyMap<string, Pool> = new Map();
  /** Listen address as configured → as bound (port 0 made concrete). */
  #bound = new Map<string, string>();
  #stats = new Map<string, ThreadedListener>();
  #nextId = 1;
  /** Stopping (accepting ended, or draining): a thread that dies now is not replaced. */
  #stopped = false;

  constructor(options: ThreadedListenersOptions) {
    this.#count = options.threads;
    this.#onEvent = options.onEvent;
    this.#probeFirst = options.probe ?? true;
  }

  get activeConnections(): number {
    return [...this.#stats.values()].reduce((sum, s) => sum + s.activeConnections, 0);
  }

  listeners(): readonly ListenerStats[] {
    return [...this.#stats.values()];
  }

  running(): readonly string[] {
    return [...this.#bound.keys()];
  }

  async start(config: Config, pools: ReadonlyMap<string, Pool>, where: Where): Promise<string[]> {
    const bound = this.#probe(config.listeners, where, (message) => new StartError(message));
    this.#threads = await Promise.all(Array.from({ length: this.#count }, () => this.#spawn()));
    try {
      await this.#configure(config, pools, bound, config.drain_timeout_ms);
    } catch (error) {
      for (const thread of this.#threads) thread.worker.terminate();
      this.#threads = [];
      throw new StartError((error as Error).message);
    }
    return config.listeners.map((listener) => bound.get(listenerKey(listener))!);
  }

  async reload(
    config: Config,
    pools: ReadonlyMap<string, Pool>,
    drainMs: number,
    where: Where,
  ): Promise<Map<string, string>> {
    const fresh = config.listeners.filter((listener) => !this.#bound.has(listenerKey(listener)));
    const bound = new Map(
      [...this.#bound].filter(([key]) => config.listeners.some((l) => listenerKey(l) === key)),
    );
    for (const [listen, address] of this.#probe(fresh, where, (m) => new Error(m))) {
      bound.set(listen, address);
    }
    await this.#configure(config, pools, bound, drainMs);
    return new Map(
      fresh.map((listener) => [listenerKey(listener), bound.get(listenerKey(listener))!]),
    );
  }

  async changed(pool: Pool): Promise<void> {
    const config = this.#config;
    if (config === undefined || this.#pools.get(pool.name) !== pool) return;
    const snapshot = this.#snapshot(pool, config);
    await Promise.all(
      this.#threads.map((thread) =>
        this.#request(thread, { type: "backends", pool: pool.name, backends: snapshot.backends })
      ),
    );
  }

  async stopAccepting(): Promise<void> {
    this.#stopped = true;
    await Promise.all(
      this.#threads.map((thread) => this.#request(thread, { type: "stop-accepting" })),
    );
  }

  async recycle(
    pool: string,
    fractions: Readonly<Record<string, number>>,
    ratePerS: number,
  ): Promise<void> {
    const threads = this.#threads;
    const share = ratePerS / Math.max(1, threads.length);
    await Promise.all(
      threads.map((thread) =>
        this.#request(thread, { type: "recycle", pool, fractions, ratePerS: share })
      ),
    );
  }

  async drain(drainMs: number): Promise<number> {
    // Out of the list first: a thread closes its eventfd once drained, and
    // nothing may write that number after.
    this.#stopped = true;
    const threads = this.#threads;
    this.#threads = [];
    const drained = await Promise.all(
      threads.map((thread) => this.#request(thread, { type: "drain", timeoutMs: drainMs })),
    );
    for (const thread of threads) thread.worker.terminate();
    return drained.reduce((sum, m) => sum + (m.type === "drained" ? m.cut : 0), 0);
  }

  // Binds each new address once without SO_REUSEPORT: a port another program
  // holds is reported as in use, and port 0 becomes the port every thread shares.
  #probe(
    listeners: readonly ListenerConfig[],
    where: Where,
    fail: (message: string) => Error,
  ): Map<string, string> {
    const bound = new Map<string, string>();
    for (const listener of listeners) {
      const { transport, address } = parseListen(listener.listen);
      const scheme = transport === "udp" ? UDP_SCHEME : "";
      if (!this.#probeFirst) {
        bound.set(listenerKey(listener), scheme + formatHostPort(address));
        continue;
      }
      try {
        const probe = transport === "udp"
          ? Deno.listenDatagram({ hostname: address.hostname, port: address.port, transport })
          : Deno.listen({ hostname: address.hostname, port: address.port });
        // The address as bound: a host name resolved, port 0 made concrete.
        bound.set(listenerKey(listener), scheme + formatHostPort(probe.addr as Deno.NetAddr));
        probe.close();
      } catch (error) {
        throw fail(`${where(listener)} ${listener.listen}: ${describe(error)}`);
      }
    }
    return bound;
  }

  async #spawn(): Promise<Thread> {
    const worker = new Worker(new URL("./dataplane.ts", import.meta.url).href, { type: "module" });
    const thread: Thread = {
      worker,
      held: new Uint8Array(new SharedArrayBuffer(HELD_SLOTS)),
      dead: false,
      wakeFd: -1,
      sent: new Int32Array(new SharedArrayBuffer(4)),
      waiters: new Map(),
      active: {},
      backendActive: new Map(),
    };
    worker.onmessage = (event: MessageEvent<FromThread>) => this.#receive(thread, event.data);
    worker.onerror = (event) => {
      event.preventDefault();
      this.#died(thread, event.message).catch(() => {});
    };
    const ready = await this.#reply(thread, 0);
    if (ready.type !== "ready") throw new StartError(ready.type === "failed" ? ready.message : "");
    thread.wakeFd = ready.wakeFd;
    await this.#request(thread, {
      type: "hello",
      sent: thread.sent.buffer as SharedArrayBuffer,
      held: thread.held.buffer as SharedArrayBuffer,
    });
    return thread;
  }

  /**
   * A thread died (a bug: nothing it runs should throw this far). What it
   * held is closed — its clients see their connections end, and its
   * listening sockets stop taking connections nobody would serve — and,
   * unless the balancer is stopping, another thread takes its place.
   */
  async #died(thread: Thread, why: string): Promise<void> {
    if (thread.dead) return;
    // Out of the list at once, and answering nothing more: nobody may wait
    // on it, and nothing may write its eventfd's number once it is closed.
    thread.dead = true;
    const message = `data-plane thread died: ${why}`;
    const index = this.#threads.indexOf(thread);
    if (index >= 0) this.#threads.splice(index, 1);
    for (const done of thread.waiters.values()) done({ id: 0, type: "failed", message });
    thread.waiters.clear();
    thread.worker.terminate();
    const closed = this.#closeHeld(thread);
    const restart = index >= 0 && !this.#stopped;
    this.#onEvent({
      type: "internal-error",
      client: "-",
      reason: `${message}; closed the ${closed} descriptors it held` +
        (restart ? "; starting another" : ""),
    });
    if (!restart) return;
    try {
      const fresh = await this.#spawn();
      // What runs now (a reload may have come meanwhile), unless stopping.
      const config = this.#config;
      if (this.#stopped || config === undefined) {
        fresh.dead = true;
        fresh.worker.terminate();
        this.#closeHeld(fresh);
        return;
      }
      this.#threads.push(fresh);
      const reply = await this.#request(
        fresh,
        this.#configureMessage(config, this.#pools, this.#bound, config.drain_timeout_ms),
      );
      if (reply.type === "failed") throw new Error(reply.message);
      this.#onEvent({
        type: "internal-error",
        client: "-",
        reason: "a new data-plane thread took the dead one's place",
      });
    } catch (error) {
      this.#onEvent({
        type: "internal-error",
        client: "-",
        reason: `could not start a data-plane thread in place of the dead one: ${describe(error)}`,
      });
    }
  }

  /** Closes every descriptor `thread` marked as held; returns how many. */
  #closeHeld(thread: Thread): number {
    let closed = 0;
    for (let fd = 0; fd < thread.held.length; fd++) {
      if (thread.held[fd] === 0) continue;
      thread.held[fd] = 0;
      this.#sys.close(fd);
      closed++;
    }
    return closed;
  }

  /** Tests only: makes thread `index` throw from its loop, as a bug would. @internal */
  killThreadForTest(index: number): void {
    const thread = this.#threads[index];
    if (thread !== undefined) this.#request(thread, { type: "die" });
  }

  async #configure(
    config: Config,
    pools: ReadonlyMap<string, Pool>,
    bound: ReadonlyMap<string, string>,
    drainMs: number,
  ): Promise<void> {
    this.#config = config;
    this.#pools = pools;
    const message = this.#configureMessage(config, pools, bound, drainMs);
    const replies = await Promise.all(
      this.#threads.map((thread) => this.#request(thread, message)),
    );
    const failure = replies.find((m) => m.type === "failed");
    if (failure?.type === "failed") throw new Error(failure.message);
    this.#bound = new Map(bound);
    const stats = new Map<string, ThreadedListener>();
    for (const listener of config.listeners) {
      const udp = udpSettingsOf(listener) !== undefined;
      // A listener that changed between TCP and UDP starts its counts again.
      const kept = this.#stats.get(listener.name);
      const pool = listenerPool(listener);
      const stat = kept !== undefined && (kept.udp !== undefined) === udp
        ? kept
        : new ThreadedListener(listener.name, pool, this.#threads, udp);
      stat.pool = { name: pool };
      stats.set(listener.name, stat);
    }
    this.#stats = stats;
  }

  #configureMessage(
    config: Config,
    pools: ReadonlyMap<string, Pool>,
    bound: ReadonlyMap<string, string>,
    drainMs: number,
  ): ToThreadBody {
    return {
      type: "configure",
      listeners: config.listeners.map((listener) => ({
        name: listener.name,
        listen: bound.get(listenerKey(listener))!,
        pool: listenerPool(listener),
        maxconn: Math.max(1, Math.ceil(listener.maxconn / this.#count)),
        edge: edgeSettingsOf(listener),
        ...this.#udpShare(listener),
      })),
      pools: [...pools.values()].map((pool) => this.#snapshot(pool, config)),
      drainTimeoutMs: drainMs,
    };
  }

  // A UDP listener's settings, with each thread's share of max_sessions.
  #udpShare(listener: ListenerConfig): { udp?: UdpSettings } {
    const udp = udpSettingsOf(listener);
    if (udp === undefined) return {};
    return { udp: { ...udp, maxSessions: Math.max(1, Math.ceil(udp.maxSessions / this.#count)) } };
  }

  #snapshot(pool: Pool, config: Config): PoolSnapshot {
    const spec = config.pools[pool.name]!;
    const share = (limit: number) => limit === Infinity ? null : Math.ceil(limit / this.#count);
    return {
      name: pool.name,
      balance: spec.balance,
      settings: pool.settings,
      queue: { max: spec.queue.max, timeoutMs: spec.queue.timeout_ms },
      health: pool.backends[0]?.policy.settings ?? {
        rise: spec.health.rise,
        fall: spec.health.fall,
        backoffBaseMs: spec.health.backoff_base_ms,
        backoffMaxMs: spec.health.backoff_max_ms,
        slowStartMs: spec.health.slow_start_ms,
      },
      activeChecks: spec.health.check !== undefined,
      backends: pool.backends.map((backend) => ({
        address: backend.name,
        weight: backend.configuredWeight,
        backup: backend.backup,
        maxConnections: share(backend.maxConnections),
        adminState: backend.adminState,
        sendProxy: backend.sendProxy,
        // Times from the Unix epoch: each thread's clock has its own origin.
        health: shiftHealth(backend.health, performance.timeOrigin),
      })),
    };
  }

  /** Posts `body` to `thread` and resolves with its reply (the message with its id). */
  #request(thread: Thread, body: ToThreadBody): Promise<FromThread> {
    if (thread.dead) {
      return Promise.resolve({ id: 0, type: "failed", message: "the data-plane thread died" });
    }
    const id = this.#nextId++;
    const reply = this.#reply(thread, id);
    // Counted before it is posted: the thread waits until it has them all.
    Atomics.add(thread.sent, 0, 1);
    thread.worker.postMessage({ ...body, id });
    this.#sys.wake(thread.wakeFd);
    return reply;
  }

  #reply(thread: Thread, id: number): Promise<FromThread> {
    return new Promise((done) => thread.waiters.set(id, done));
  }

  #receive(thread: Thread, message: FromThread): void {
    if (message.type === "batch") return this.#batch(thread, message);
    const done = thread.waiters.get(message.id);
    if (done !== undefined) {
      thread.waiters.delete(message.id);
      return done(message);
    }
    if (message.type === "failed") {
      this.#onEvent({ type: "internal-error", client: "-", reason: message.message });
    }
  }

  #batch(thread: Thread, batch: Extract<FromThread, { type: "batch" }>): void {
    thread.active = batch.active;
    for (const [name, counts] of Object.entries(batch.udp)) {
      const sum = this.#stats.get(name)?.udp;
      if (sum !== undefined) addUdpCounts(sum, counts);
    }
    for (const counts of batch.backends) {
      const backend = this.#pools.get(counts.pool)?.backends.find((b) => b.name === counts.address);
      if (backend === undefined) continue;
      backend.connections += counts.connections;
      backend.bytesIn += counts.bytesIn;
      backend.bytesOut += counts.bytesOut;
      backend.connectFailures += counts.connectFailures;
      const key = `${counts.pool} ${counts.address}`;
      thread.backendActive.set(key, counts.active);
      backend.active = this.#threads.reduce((sum, t) => sum + (t.backendActive.get(key) ?? 0), 0);
      // Passive health is decided here, once for every thread.
      for (const outcome of counts.connects) {
        if (outcome === true) backend.recordConnect(true);
        else backend.recordConnect(false, outcome);
      }
      for (const ms of counts.connectTimes) backend.recordConnectTime(ms);
    }
    unpackEvents(batch.events, (event) => {
      if (event.type === "connection") {
        const { record } = event;
        const stat = this.#stats.get(record.listener);
        stat?.durations.observe(record.durationMs / 1000);
        if (stat !== undefined && isRejectReason(record.end)) {
          stat.rejected.set(record.end, (stat.rejected.get(record.end) ?? 0) + 1);
        }
      }
      this.#onEvent(event);
    });
  }
}
