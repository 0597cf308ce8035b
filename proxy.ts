/**
 * A listener: accepts clients and hands each one to a backend of its pool.
 *
 * Every connection goes the same way: pick a backend → dial it (with a
 * timeout) → on failure pick again, skipping what already failed → join the
 * two connections → report how it went. Nothing is sent to a backend before
 * it is connected, so a retry never sends a byte twice. In the code, each
 * step is a method called when what it waited for has happened:
 *
 *     #start → #admitted (a front door's verdict) → #pick ⇄ queue or descriptor wait
 *       → #dial → #dialFailed (→ #pick) or #connected → #joinEnded → #finish → #forget
 *     any step → #giveUp (no backend) or #crash (a bug) → #forget
 *
 * It moves no byte itself: the sockets are the engine's (engine.ts), the
 * backends, strategy and queue the pool's (pool.ts). Every timer runs on the
 * injected clock.
 *
 * @module
 */

import { type Clock, nextBackoff, realClock, sleep } from "./clock.ts";
import {
  Attempt,
  type Engine,
  type EngineConn,
  type EngineListener,
  type Joined,
  type JoinResult,
  peerAddress,
} from "./engine.ts";
import { formatHostPort, type HostPort } from "./address.ts";
import type { Admission, Edge } from "./edge.ts";
import { describe, isClientGone, isOutOfDescriptors } from "./errors.ts";
import type { ConnectionEnd, LoadBalancerEvent, RejectReason } from "./events.ts";
import { DURATION_BUCKETS, Histogram } from "./metrics.ts";
import { type Backend, NOTHING_TRIED, type Pool } from "./pool.ts";
import { encodeProxyV1, encodeProxyV2 } from "./proxy_protocol.ts";
import { TimeoutQueue } from "./timeouts.ts";

/** Options for {@linkcode LoadBalancer}. */
export interface LoadBalancerOptions {
  /** The listener's name, for logs and metrics. @default {"default"} */
  name?: string;
  /** Where clients come from. The balancer owns it from now on and closes it. */
  listener: EngineListener;
  /** Moves the bytes. */
  engine: Engine;
  /** Its backends, strategy, queue and timeouts (shared with other listeners on it). */
  pool: Pool;
  /** Most client connections at once; beyond it, clients wait in the kernel's backlog. @default {10000} */
  maxConnections?: number;
  /** Its front door: PROXY header, source ACLs, per-source limits, routes (edge.ts). */
  edge?: Edge;
  /** The pools routes may name (all of them). */
  routePools?: ReadonlyMap<string, Pool>;
  /** The clock every timeout runs on. @default {realClock} */
  clock?: Clock;
  /** Receives every event; nothing is logged from the core itself. */
  onEvent?: (event: LoadBalancerEvent) => void;
}

/**
 * A client connection in progress: what the balancer tracks for draining and
 * timeouts, and where it is on its way from accept to close.
 */
interface Connection {
  readonly client: EngineConn;
  readonly startedAt: number;
  /** Who the client is: its peer, or what its PROXY header says. */
  clientName: string;
  clientHost: string;
  /** What the front door decided, when the listener has one: route, PROXY addresses. */
  front?: Front;
  /** The client reset or closed while we dialled or waited. */
  gone: boolean;
  /** Ends it now, whatever stage it is at (connecting, queued or joined). */
  cut(): void;
  /** Backends tried for it so far; none yet, or joined, when undefined. */
  tried: Set<Backend> | undefined;
  /** How long it waited last for a descriptor (each wait doubles). */
  shortageWaitMs: number;
  /** Why the queue let it go without a slot. */
  queueEnd?: "queue-timeout" | "queue-full";
  /** Gives back its per-source count, when the front door took one. */
  releaseSource?: () => void;
  /** Once reported, with its per-source count given back: nothing more happens to it. */
  over: boolean;
  /** Once joined: the join, its activity at the last sweep, and since when it is unchanged. */
  joined?: Joined;
  /** Once joined: the pool and backend it went to (for `on_remove: close`). */
  pool?: Pool;
  backend?: Backend;
  /** Cut because its backend left its pool, or went down, and the pool closes such connections. */
  shutdown?: "backend-removed" | "backend-down" | "rebalanced";
  /** When it was joined, on the clock (a rebalance closes the oldest first). */
  joinedAt?: number;
  /** A rebalance has it down to be closed (a second one must not count it again). */
  recycling?: boolean;
  seenActivity?: number;
  quietSince?: number;
}

/** What the front door let through: where to, and who the client is. */
interface Front {
  readonly pool: string | undefined;
  readonly client: HostPort;
  readonly destination: HostPort | undefined;
  readonly sni?: string;
}

const NOTHING = () => {};

// Accepting again at once after EMFILE would spin; wait, doubling, up to a second.
const BACKOFF_FIRST_MS = 10;
const BACKOFF_MAX_MS = 1000;
// The most often a failing accept is reported.
const WARN_EVERY_MS = 1000;

/** A running listener. Call {@linkcode LoadBalancer.serve} to start it. */
export class LoadBalancer {
  readonly #listener: EngineListener;
  readonly #engine: Engine;
  /** The listener's name, for logs and metrics. */
  readonly name: string;
  /** How long connections lasted, in seconds. */
  readonly durations = new Histogram(DURATION_BUCKETS);
  #pool: Pool;
  #maxConnections: number;
  #edge: Edge | undefined;
  #routePools: ReadonlyMap<string, Pool>;
  /** Clients closed at the front door, by reason. */
  readonly rejected = new Map<RejectReason, number>();
  // When each reason was last said in the log, and how many came since.
  readonly #rejectionsSaid = new Map<RejectReason, { at: number; count: number }>();
  readonly #clock: Clock;
  readonly #emit: (event: LoadBalancerEvent) => void;
  // Set when the drain timeout runs out: every connection left is cut, and
  // none still connecting may start another attempt.
  #cutting = false;
  // Aborted when we stop accepting: ends an accept backoff early.
  readonly #acceptBackoff = new AbortController();
  #stoppedAccepting = false;
  readonly #connections = new Set<Connection>();
  #sweeper: number | undefined;
  /** Every connect attempt's timeout, on one timer. */
  readonly #connectTimeouts: TimeoutQueue;
  /** Every front-door wait's timeout (edge.ts), on another: a queue holds one length. */
  readonly #peekTimeouts: TimeoutQueue;
  // Resolved when a connection ends, for an accept loop waiting at maxConnections.
  #roomFreed: PromiseWithResolvers<void> | undefined;
  // Resolved when the last connection ends, for a drain waiting for it.
  #emptied: PromiseWithResolvers<void> | undefined;
  #serving: Promise<void> | undefined;
  // Once shutting down: its outcome, and what ends the drain early.
  #shutdown:
    | { done: Promise<{ cut: number }>; timeUp: PromiseWithResolvers<"timeout"> }
    | undefined;

  constructor(options: LoadBalancerOptions) {
    this.#listener = options.listener;
    this.#engine = options.engine;
    this.name = options.name ?? "default";
    this.#pool = options.pool;
    this.#maxConnections = options.maxConnections ?? 10_000;
    this.#edge = options.edge;
    this.#routePools = options.routePools ?? new Map();
    this.#clock = options.clock ?? realClock;
    this.#connectTimeouts = new TimeoutQueue(this.#clock);
    this.#peekTimeouts = new TimeoutQueue(this.#clock);
    const onEvent = options.onEvent ?? (() => {});
    this.#emit = (event) => {
      try {
        onEvent(event);
      } catch {
        // A failing log sink (a closed stdout, …) must not take connections down.
      }
    };
  }

  /**
   * Takes a new pool and limit for new connections; connections in progress
   * keep the backend they have. Clients waiting in the old pool's queue are
   * woken by its `stop()` and try again under the new one.
   */
  reconfigure(
    options: Pick<LoadBalancerOptions, "pool" | "maxConnections" | "edge" | "routePools">,
  ): void {
    this.#pool = options.pool;
    this.#maxConnections = options.maxConnections ?? 10_000;
    this.#edge = options.edge;
    this.#routePools = options.routePools ?? new Map();
    if (this.#serving !== undefined) this.#startSweeper();
    this.closeUnwanted();
  }

  /**
   * Closes, oldest first, `fractions[backend]` of this listener's
   * connections to each backend of `pool`, spread over time at `ratePerS`
   * with jitter, so that their clients reconnect and are placed anew (a
   * rebalance). Resolves with how many it will close.
   */
  recycle(
    pool: string,
    fractions: Readonly<Record<string, number>>,
    ratePerS: number,
    random: () => number = Math.random,
  ): number {
    const byBackend = new Map<string, Connection[]>();
    for (const connection of this.#connections) {
      const backend = connection.backend;
      if (connection.pool?.name !== pool || backend === undefined || connection.shutdown) continue;
      if (connection.recycling) continue;
      if (!((fractions[backend.name] ?? 0) > 0)) continue;
      const list = byBackend.get(backend.name) ?? [];
      list.push(connection);
      byBackend.set(backend.name, list);
    }
    const chosen: Connection[] = [];
    for (const [name, list] of byBackend) {
      list.sort((a, b) => a.joinedAt! - b.joinedAt!);
      chosen.push(...list.slice(0, Math.round(list.length * fractions[name]!)));
    }
    chosen.sort((a, b) => a.joinedAt! - b.joinedAt!);
    const gapMs = 1000 / ratePerS;
    chosen.forEach((connection, i) => {
      connection.recycling = true;
      // Unref'd: a pending close never keeps a stopping process alive.
      this.#clock.setTimer(
        () => {
          if (!this.#connections.has(connection) || connection.shutdown) return;
          connection.shutdown = "rebalanced";
          connection.cut();
        },
        (i + random()) * gapMs,
        { unref: true },
      );
    });
    return chosen.length;
  }

  /**
   * Closes the connections a pool no longer wants: to a backend that left it
   * (`on_remove: close`), or that is down or disabled (`on_down:
   * shutdown-sessions`). Others finish in their own time. Called after every
   * change of pools or of a backend's state.
   */
  closeUnwanted(): void {
    for (const connection of this.#connections) {
      const { pool, backend } = connection;
      if (pool === undefined || backend === undefined || connection.shutdown) continue;
      const next = pool.name === this.#pool.name ? this.#pool : this.#routePools.get(pool.name);
      const current = next?.backends.find((b) => b.name === backend.name);
      const settings = (next ?? pool).settings;
      if (current === undefined) {
        if (settings.onRemove !== "close") continue;
        connection.shutdown = "backend-removed";
      } else {
        const down = current.health.state === "down" || current.adminState === "disabled";
        if (!down || settings.onDown !== "shutdown-sessions") continue;
        connection.shutdown = "backend-down";
      }
      connection.cut();
    }
  }

  /** Whether new connections may go to `pool` here: its own pool, or one its routes name. */
  serves(pool: string): boolean {
    return this.#pool.name === pool || (this.#edge?.settings.routes.some((r) => r.pool === pool) ??
      false);
  }

  /** Where clients connect. */
  get address(): { hostname: string; port: number } {
    return this.#listener.address;
  }

  /** Its front door, if it has one (a reload hands it to the next, for its per-source counts). */
  get edge(): Edge | undefined {
    return this.#edge;
  }

  /** The pool new connections go to. */
  get pool(): Pool {
    return this.#pool;
  }

  /** The backends new connections go to. */
  get backends(): readonly Backend[] {
    return this.#pool.backends;
  }

  /** Client connections in progress. */
  get activeConnections(): number {
    return this.#connections.size;
  }

  /** Whether accepting is paused at the connection limit (the kernel's backlog holds the rest). */
  get paused(): boolean {
    return this.#roomFreed !== undefined;
  }

  /** Accepts clients until {@linkcode shutdown}; resolves when accepting stops. */
  serve(): Promise<void> {
    if (this.#serving === undefined) this.#startSweeper();
    this.#serving ??= this.#acceptLoop();
    return this.#serving;
  }

  /** Closes the listening socket; resolves once its accept loop has ended. */
  async stopAccepting(): Promise<void> {
    this.#stoppedAccepting = true;
    this.#acceptBackoff.abort();
    this.#roomFreed?.resolve();
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    await this.#serving;
  }

  /**
   * Stops accepting at once (new clients are refused), waits for connections
   * in progress to finish, and when `drainTimeoutMs` runs out cuts what is
   * left, each reported as `drain-timeout`. Resolves with how many were cut.
   */
  async shutdown(drainTimeoutMs: number): Promise<{ cut: number }> {
    // Called again while it drains (a shutdown after a reload removed this
    // listener): the same drain, ending at the earlier of the two deadlines.
    if (this.#shutdown !== undefined) {
      const { done, timeUp } = this.#shutdown;
      const timer = this.#clock.setTimer(() => timeUp.resolve("timeout"), drainTimeoutMs);
      const result = await done;
      this.#clock.clearTimer(timer);
      return result;
    }
    const timeUp = Promise.withResolvers<"timeout">();
    const done = Promise.withResolvers<{ cut: number }>();
    this.#shutdown = { done: done.promise, timeUp };
    done.resolve(this.#drain(drainTimeoutMs, timeUp));
    return await done.promise;
  }

  async #drain(
    drainTimeoutMs: number,
    timedOut: PromiseWithResolvers<"timeout">,
  ): Promise<{ cut: number }> {
    await this.stopAccepting();
    const timer = this.#clock.setTimer(() => timedOut.resolve("timeout"), drainTimeoutMs);
    const outcome = await Promise.race([this.#allDone(), timedOut.promise]);
    this.#clock.clearTimer(timer);
    let cut = 0;
    if (outcome === "timeout") {
      cut = this.#connections.size;
      this.#cutting = true;
      for (const connection of this.#connections) connection.cut();
      await this.#allDone();
    }
    this.#clock.clearTimer(this.#sweeper);
    this.#connectTimeouts.clear();
    this.#peekTimeouts.clear();
    return { cut };
  }

  // One timer for every connection's timeouts, rather than one per read.
  #startSweeper(): void {
    this.#clock.clearTimer(this.#sweeper);
    const { idleTimeoutMs, halfClosedTimeoutMs } = this.#pool.settings;
    const everyMs = Math.min(1000, Math.max(5, Math.min(idleTimeoutMs, halfClosedTimeoutMs) / 4));
    const tick = () => {
      this.#sweep();
      this.#sweeper = this.#clock.setTimer(tick, everyMs, { unref: true });
    };
    this.#sweeper = this.#clock.setTimer(tick, everyMs, { unref: true });
  }

  // Cuts joined connections that have been quiet too long: the idle timeout,
  // or the shorter half-closed one once a side has finished.
  #sweep(): void {
    const now = this.#clock.now();
    const { idleTimeoutMs, halfClosedTimeoutMs } = this.#pool.settings;
    for (const connection of this.#connections) {
      const joined = connection.joined;
      if (joined === undefined) continue;
      if (joined.activity !== connection.seenActivity) {
        connection.seenActivity = joined.activity;
        connection.quietSince = now;
        continue;
      }
      const quietMs = now - connection.quietSince!;
      if (joined.halfClosedAt !== undefined && quietMs >= halfClosedTimeoutMs) {
        joined.cut("half-closed-timeout");
      } else if (quietMs >= idleTimeoutMs) {
        joined.cut("idle-timeout");
      }
    }
  }

  async #allDone(): Promise<"done"> {
    while (this.#connections.size > 0) {
      this.#emptied ??= Promise.withResolvers<void>();
      await this.#emptied.promise;
    }
    return "done";
  }

  // One failed accept must never stop the loop: a client that resets before
  // we accept it, or running out of descriptors, would otherwise end serving
  // for good.
  async #acceptLoop(): Promise<void> {
    let failures = 0;
    let backoffMs = 0;
    // At the edge of a shortage accepting can work and fail by turns: one
    // warning a second at most, and a recovery line only after a warning.
    let warnedAt = -Infinity;
    let warned = false;
    // A field, not the signal's getter, read for every connection.
    while (!this.#stoppedAccepting) {
      if (this.#connections.size >= this.#maxConnections) {
        // At the limit: stop accepting; the kernel's backlog holds the rest.
        this.#roomFreed ??= Promise.withResolvers<void>();
        await this.#roomFreed.promise;
        continue;
      }
      let client: EngineConn | undefined;
      try {
        // Clients already waiting are taken one after another without a
        // promise each, where the listener can.
        client = this.#listener.acceptNow?.() ?? await this.#listener.accept();
      } catch (error) {
        if (this.#stoppedAccepting) break;
        // A client that reset before we accepted it: accepting itself works.
        if (!isClientGone(error)) {
          // Out of descriptors (EMFILE/ENFILE) or the like: the pending client
          // stays queued in the kernel; back off so we do not spin, then retry.
          // Said once per episode, so a long shortage does not flood the log.
          failures++;
          backoffMs = nextBackoff(backoffMs, BACKOFF_FIRST_MS, BACKOFF_MAX_MS);
          if (failures === 1 && this.#clock.now() - warnedAt >= WARN_EVERY_MS) {
            this.#emit({ type: "accept-error", reason: describe(error), backoffMs });
            warnedAt = this.#clock.now();
            warned = true;
          }
          await sleep(this.#clock, backoffMs, this.#acceptBackoff.signal);
          continue;
        }
      }
      if (failures > 0 && warned) this.#emit({ type: "accept-recovered", failures });
      if (failures > 0) warned = false;
      failures = 0;
      backoffMs = 0;
      if (client !== undefined) this.#start(client);
    }
  }

  // A client connection goes from accept to close through the methods
  // below, each called when what it waited for has happened, none suspended
  // in between: a connection costs no async frames (they cost about 5 µs of
  // a new connection's CPU, and 0.8 KiB for as long as it lasted), and a
  // joined one waits as one callback on its join's result. Nothing a step
  // does may escape: an unexpected error ends this connection only (#crash).

  #start(client: EngineConn): void {
    const connection: Connection = {
      client,
      startedAt: this.#clock.now(),
      clientName: client.peer,
      clientHost: client.peerHost,
      gone: false,
      cut: NOTHING,
      tried: undefined,
      shortageWaitMs: 0,
      queueEnd: undefined,
      releaseSource: undefined,
      over: false,
      // Every field from the start, so that none added later costs the
      // object a new shape and a property store: one is made per connection.
      front: undefined,
      joined: undefined,
      pool: undefined,
      backend: undefined,
      shutdown: undefined,
      joinedAt: undefined,
      recycling: false,
      seenActivity: undefined,
      quietSince: undefined,
    };
    this.#connections.add(connection);
    try {
      // A client that resets while we dial is noticed at once, and its dial
      // abandoned: it never costs the backend a connection.
      this.#engine.watch(client, () => {
        connection.gone = true;
        connection.cut();
      });
      const edge = this.#edge;
      if (edge === undefined) return this.#pick(connection);
      // The front door: decided before any dial.
      edge.admit(this.#engine, client, this.#peekTimeouts, (cut) => {
        connection.cut = cut;
      }).then(
        (admission) => this.#admitted(connection, edge, admission),
        (error) => this.#crash(connection, error),
      );
    } catch (error) {
      this.#crash(connection, error);
    }
  }

  #admitted(connection: Connection, edge: Edge, admission: Admission): void {
    try {
      // A per-source count is given back once the connection is over, whatever became of it.
      if (admission.ok && admission.counted) {
        connection.releaseSource = () => edge.release(admission.client);
      }
      connection.clientName = formatHostPort(admission.client);
      connection.clientHost = admission.client.hostname;
      if (admission.ok) {
        connection.front = admission;
        return this.#pick(connection);
      }
      this.#engine.close(connection.client).then(() => {
        if (connection.gone) return this.#finish(connection, "client-reset");
        if (this.#cutting) return this.#finish(connection, "drain-timeout");
        this.#noteRejection(admission.reason, connection.clientName, admission.detail);
        this.#finish(connection, admission.reason);
      }).catch((error) => this.#crash(connection, error));
    } catch (error) {
      this.#crash(connection, error);
    }
  }

  // Picks a backend and dials it; with none to pick, waits in the queue or gives up.
  #pick(connection: Connection): void {
    if (this.#cutting || connection.gone) return this.#giveUp(connection);
    // A route names its pool; a reload may have replaced it since.
    const front = connection.front;
    const pool = (front?.pool && this.#routePools.get(front.pool)) || this.#pool;
    const tried = connection.tried ?? NOTHING_TRIED;
    const backend = pool.strategy.pick(pool.backends, {
      tried,
      clientAddress: connection.clientHost,
      listener: this.name,
      sni: front?.sni,
    });
    if (backend === undefined) {
      // Nothing to try now; if that is because healthy backends are full,
      // wait in the queue for one to have room.
      if (!pool.hasRoomLater(tried)) return this.#giveUp(connection);
      const waiting = new AbortController();
      // A client gone meanwhile cuts the wait too (through connection.cut).
      connection.cut = () => waiting.abort();
      pool.queue.wait(waiting.signal).then((outcome) => {
        if (outcome === "slot") return this.#pick(connection);
        if (outcome !== "cut") {
          connection.queueEnd = outcome === "full" ? "queue-full" : "queue-timeout";
        }
        this.#giveUp(connection);
      }).catch((error) => this.#crash(connection, error));
      return;
    }
    (connection.tried ??= new Set()).add(backend);
    // Counted from the attempt on, so a burst of new clients spreads out
    // under least-connections before any of them has connected.
    backend.active++;
    try {
      this.#dial(connection, pool, backend);
    } catch (error) {
      // Before any callback could: the attempt is not under way.
      backend.active--;
      pool.queue.wake();
      throw error;
    }
  }

  // One attempt, bounded by the connect timeout and by a drain cut-off.
  #dial(connection: Connection, pool: Pool, backend: Backend): void {
    if (backend.health.state === "down") backend.startTrial();
    const attempt = new Attempt();
    const timeoutMs = pool.settings.connectTimeoutMs;
    const timeout = this.#connectTimeouts.add(
      timeoutMs,
      () => attempt.abort(new Deno.errors.TimedOut(`no answer in ${timeoutMs} ms`)),
    );
    connection.cut = () => attempt.abort(new Deno.errors.Interrupted("draining"));
    const dialledAt = this.#clock.now();
    this.#engine.dial(backend.address, attempt, (server, error) => {
      timeout.cancel();
      if (server !== undefined && !attempt.aborted) {
        return this.#connected(connection, pool, backend, server, dialledAt);
      }
      // Connected just as the attempt was abandoned (a drain's cut, the
      // client gone): not joined, or a drain would wait for it.
      if (server !== undefined) this.#engine.close(server).catch(NOTHING);
      // Deno reports an aborted connect as a generic AbortError; say why.
      this.#dialFailed(connection, pool, backend, attempt.aborted ? attempt.reason : error);
    });
  }

  #dialFailed(connection: Connection, pool: Pool, backend: Backend, error: unknown): void {
    if (connection.over) return;
    try {
      backend.active--;
      pool.queue.wake();
      if (this.#cutting || connection.gone) return this.#giveUp(connection);
      const reason = describe(error);
      if (isOutOfDescriptors(error)) {
        // Our shortage, not the backend's: leave its health and counters
        // alone, and wait for descriptors (closing connections free them)
        // as long as the connect timeout allows.
        const waitedMs = this.#clock.now() - connection.startedAt;
        const limitMs = pool.settings.connectTimeoutMs;
        if (waitedMs >= limitMs) return this.#giveUp(connection);
        const waitMs = Math.min(
          nextBackoff(connection.shortageWaitMs, BACKOFF_FIRST_MS, BACKOFF_MAX_MS),
          limitMs - waitedMs,
        );
        connection.shortageWaitMs = waitMs;
        this.#emit({
          type: "descriptor-shortage",
          client: connection.clientName,
          backend: backend.name,
          reason,
          waitMs,
        });
        connection.tried?.delete(backend);
        const waiting = new AbortController();
        connection.cut = () => waiting.abort();
        sleep(this.#clock, waitMs, waiting.signal).then(() => this.#pick(connection))
          .catch((error) => this.#crash(connection, error));
        return;
      }
      backend.connectFailures++;
      backend.recordConnect(false, reason);
      this.#emit({
        type: "connect-error",
        client: connection.clientName,
        backend: backend.name,
        reason,
      });
      this.#pick(connection);
    } catch (error) {
      this.#crash(connection, error);
    }
  }

  #connected(
    connection: Connection,
    pool: Pool,
    backend: Backend,
    server: EngineConn,
    dialledAt: number,
  ): void {
    try {
      backend.recordConnect(true);
      backend.recordConnectTime(this.#clock.now() - dialledAt);
      const front = connection.front;
      const { client } = connection;
      const prefix = backend.sendProxy === "off"
        ? undefined
        : this.#proxyHeader(backend.sendProxy, client, front?.client, front?.destination);
      // Its tries are over: the set is not kept for as long as it lasts.
      connection.tried = undefined;
      connection.joinedAt = this.#clock.now();
      connection.seenActivity = 0;
      connection.quietSince = connection.joinedAt;
      // The join may end before it returns (the client's early bytes could
      // not be written): #joinEnded has then reported it already.
      const joined = this.#engine.join(
        client,
        server,
        (result) => this.#joinEnded(connection, pool, backend, result),
        prefix,
      );
      connection.cut = () => joined.cut("aborted");
      connection.joined = joined;
      connection.pool = pool;
      connection.backend = backend;
    } catch (error) {
      if (connection.joined === undefined) {
        // Not joined: the backend connection is ours to close, its count ours to give back.
        this.#engine.close(server).catch(NOTHING);
        backend.active--;
        pool.queue.wake();
      }
      this.#crash(connection, error);
    }
  }

  #joinEnded(connection: Connection, pool: Pool, backend: Backend, result: JoinResult): void {
    if (connection.over) return;
    try {
      backend.active--;
      backend.connections++;
      backend.bytesIn += result.bytesFromClient;
      backend.bytesOut += result.bytesFromServer;
      pool.queue.wake();
      const end = result.end !== "aborted" ? result.end : connection.shutdown ?? "drain-timeout";
      this.#finish(connection, end, backend, result.bytesFromClient, result.bytesFromServer);
    } catch (error) {
      this.#crash(connection, error);
    }
  }

  // No backend for it: closed, and reported with the reason.
  #giveUp(connection: Connection): void {
    const tried = connection.tried ?? NOTHING_TRIED;
    const end = connection.gone ? "client-reset" : connection.queueEnd ??
      (this.#cutting ? "drain-timeout" : tried.size === 0 ? "no-backend" : "connect-failed");
    this.#engine.close(connection.client, { reset: end === "drain-timeout" })
      .then(() => this.#finish(connection, end))
      .catch((error) => this.#crash(connection, error));
  }

  // Reports it: its duration, its access record.
  #finish(
    connection: Connection,
    end: ConnectionEnd,
    backend?: Backend,
    bytesIn = 0,
    bytesOut = 0,
  ): void {
    if (connection.over) return;
    const durationMs = this.#clock.now() - connection.startedAt;
    this.durations.observe(durationMs / 1000);
    this.#emit({
      type: "connection",
      record: {
        time: new Date(),
        listener: this.name,
        client: connection.clientName,
        backend: backend?.name,
        bytesIn,
        bytesOut,
        durationMs,
        end,
      },
    });
    this.#forget(connection);
  }

  // Something unexpected: the connection is closed and the error reported.
  #crash(connection: Connection, error: unknown): void {
    if (connection.over) return;
    this.#engine.close(connection.client).catch(NOTHING).finally(() => {
      if (connection.over) return;
      this.#emit({
        type: "internal-error",
        client: connection.client.peer,
        reason: describe(error),
      });
      this.#forget(connection);
    });
  }

  // Forgets it: off the books, its per-source count given back.
  #forget(connection: Connection): void {
    connection.over = true;
    this.#connections.delete(connection);
    this.#roomFreed?.resolve();
    this.#roomFreed = undefined;
    if (this.#connections.size === 0) {
      this.#emptied?.resolve();
      this.#emptied = undefined;
    }
    try {
      connection.releaseSource?.();
    } catch {
      // A count not given back is the front door's to mend, not this connection's.
    }
  }

  // Counts a refusal; says so at most once a second per reason, with the
  // count since it last did and the last one's why.
  #noteRejection(reason: RejectReason, client: string, detail: string): void {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1);
    let said = this.#rejectionsSaid.get(reason);
    if (said === undefined) this.#rejectionsSaid.set(reason, said = { at: -Infinity, count: 0 });
    said.count++;
    const now = this.#clock.now();
    if (now - said.at < WARN_EVERY_MS) return;
    const { count } = said;
    said.at = now;
    said.count = 0;
    this.#emit({ type: "rejected", listener: this.name, reason, count, client, detail });
  }

  // The PROXY header we send a backend: the client as we know it, and where it connected.
  #proxyHeader(
    version: "v1" | "v2",
    client: EngineConn,
    source: HostPort | undefined,
    destination: HostPort | undefined,
  ): Uint8Array {
    const from = source ?? peerAddress(client);
    // Where the client connected: the listener's address, unless it listens
    // on every interface (then the socket says which, for a system call).
    const listening = this.#listener.address;
    const wildcard = listening.hostname === "0.0.0.0" || listening.hostname === "::";
    const to = destination ?? (wildcard ? this.#engine.localAddress(client) : listening);
    return version === "v1" ? encodeProxyV1(from, to) : encodeProxyV2(from, to);
  }
}
