/**
 * A listener: accepts clients and hands each one to a backend of its pool.
 *
 * Every connection is one loop: pick a backend → dial it (with a timeout) →
 * on failure pick again, skipping what already failed → join the two
 * connections → report how it went. Nothing is sent to a backend before it
 * is connected, so a retry never sends a byte twice.
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
  peerAddress,
} from "./engine.ts";
import { formatHostPort, type HostPort } from "./address.ts";
import type { Edge } from "./edge.ts";
import { describe, isClientGone, isOutOfDescriptors } from "./errors.ts";
import type { ConnectionEnd, LoadBalancerEvent, RejectReason } from "./events.ts";
import { DURATION_BUCKETS, Histogram } from "./metrics.ts";
import type { Backend, Pool } from "./pool.ts";
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

/** A client connection in progress, as the balancer tracks it for draining and timeouts. */
interface Connection {
  /** Settles once the connection is over and reported. */
  done: Promise<void>;
  /** Ends it now, whatever stage it is at (connecting, queued or joined). */
  cut(): void;
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
      await Promise.all([...this.#connections].map((connection) => connection.done));
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
        client = await this.#listener.accept();
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
      if (client === undefined) continue;
      const connection: Connection = { done: Promise.resolve(), cut: () => {} };
      // In the set before it starts: it may end before #serve returns.
      this.#connections.add(connection);
      connection.done = this.#serve(client, connection);
    }
  }

  // One client connection from accept to close. Nothing it does may escape:
  // an unexpected error ends this connection only.
  //
  // Chained, not awaited: once a connection is joined, what is left to do
  // waits as a callback on the join's result, and no suspended async
  // function holds it (the three that did kept 0.8 KiB of frames for as long
  // as the connection lasted; most connections held open are idle).
  #serve(client: EngineConn, connection: Connection): Promise<void> {
    return this.#handle(client, connection)
      .catch(async (error) => {
        await this.#engine.close(client).catch(() => {});
        this.#emit({ type: "internal-error", client: client.peer, reason: describe(error) });
      })
      .finally(() => {
        this.#connections.delete(connection);
        this.#roomFreed?.resolve();
        this.#roomFreed = undefined;
      });
  }

  // `connection.cut` is pointed at whatever the connection is doing now.
  async #handle(client: EngineConn, connection: Connection): Promise<void> {
    const startedAt = this.#clock.now();
    // Who the client is: its peer, or what its PROXY header says.
    let clientName = client.peer;
    let clientHost = client.peerHost;
    const finish = (end: ConnectionEnd, backend?: Backend, bytesIn = 0, bytesOut = 0) => {
      const durationMs = this.#clock.now() - startedAt;
      this.durations.observe(durationMs / 1000);
      this.#emit({
        type: "connection",
        record: {
          time: new Date(),
          listener: this.name,
          client: clientName,
          backend: backend?.name,
          bytesIn,
          bytesOut,
          durationMs,
          end,
        },
      });
    };

    // A client that resets while we dial is noticed at once, and its dial
    // abandoned: it never costs the backend a connection.
    // A flag and a cut, not an AbortController: this runs for every connection.
    const watched = { gone: false };
    this.#engine.watch(client, () => {
      watched.gone = true;
      connection.cut();
    });
    // The front door, when the listener has one: decided before any dial.
    // Without one, nothing here costs a connection anything.
    const edge = this.#edge;
    const admission = edge === undefined
      ? undefined
      : await edge.admit(this.#engine, client, this.#peekTimeouts, (cut) => {
        connection.cut = cut;
      });
    if (admission !== undefined) {
      clientName = formatHostPort(admission.client);
      clientHost = admission.client.hostname;
      if (!admission.ok) {
        await this.#engine.close(client);
        if (watched.gone) return finish("client-reset");
        if (this.#cutting) return finish("drain-timeout");
        this.#noteRejection(admission.reason, clientName, admission.detail);
        return finish(admission.reason);
      }
    }
    const served = this.#connectAndJoin(
      client,
      connection,
      watched,
      finish,
      startedAt,
      clientName,
      clientHost,
      admission,
    );
    // A per-source count is given back once the connection is over, whatever became of it.
    if (!admission?.counted) return served;
    return served.finally(() => edge!.release(admission.client));
  }

  // Pick, dial, on failure pick again; then join and account.
  async #connectAndJoin(
    client: EngineConn,
    connection: Connection,
    watched: { gone: boolean },
    finish: (end: ConnectionEnd, backend?: Backend, bytesIn?: number, bytesOut?: number) => void,
    startedAt: number,
    clientName: string,
    clientHost: string,
    /** What the front door decided, when there is one: route, PROXY addresses. */
    front?: {
      pool: string | undefined;
      client: HostPort;
      destination: HostPort | undefined;
      sni?: string;
    },
  ): Promise<void> {
    const tried = new Set<Backend>();
    let backend: Backend | undefined;
    let server: EngineConn | undefined;
    let queueEnd: "queue-timeout" | "queue-full" | undefined;
    let shortageWaitMs = 0;
    let pool = this.#pool;
    while (server === undefined && !this.#cutting && !watched.gone) {
      // A route names its pool; a reload may have replaced it since.
      pool = (front?.pool && this.#routePools.get(front.pool)) || this.#pool;
      backend = pool.strategy.pick(pool.backends, {
        tried,
        clientAddress: clientHost,
        listener: this.name,
        sni: front?.sni,
      });
      if (backend === undefined) {
        // Nothing to try now; if that is because healthy backends are full,
        // wait in the queue for one to have room.
        if (!pool.hasRoomLater(tried)) break;
        const waiting = new AbortController();
        connection.cut = () => waiting.abort();
        // A client gone meanwhile cuts the wait too (through connection.cut).
        const outcome = await pool.queue.wait(waiting.signal);
        if (outcome === "slot") continue;
        if (outcome !== "cut") queueEnd = outcome === "full" ? "queue-full" : "queue-timeout";
        break;
      }
      tried.add(backend);
      // Counted from the attempt on, so a burst of new clients spreads out
      // under least-connections before any of them has connected.
      backend.active++;
      if (backend.health.state === "down") backend.startTrial();
      try {
        const dialled = this.#clock.now();
        server = await this.#connect(backend, connection, pool);
        backend.recordConnect(true);
        backend.recordConnectTime(this.#clock.now() - dialled);
      } catch (error) {
        backend.active--;
        pool.queue.wake();
        if (this.#cutting || watched.gone) break;
        const reason = describe(error);
        if (isOutOfDescriptors(error)) {
          // Our shortage, not the backend's: leave its health and counters
          // alone, and wait for descriptors (closing connections free them)
          // as long as the connect timeout allows.
          const waitedMs = this.#clock.now() - startedAt;
          const limitMs = pool.settings.connectTimeoutMs;
          if (waitedMs >= limitMs) break;
          shortageWaitMs = Math.min(
            nextBackoff(shortageWaitMs, BACKOFF_FIRST_MS, BACKOFF_MAX_MS),
            limitMs - waitedMs,
          );
          this.#emit({
            type: "descriptor-shortage",
            client: clientName,
            backend: backend.name,
            reason,
            waitMs: shortageWaitMs,
          });
          tried.delete(backend);
          const waiting = new AbortController();
          connection.cut = () => waiting.abort();
          await sleep(this.#clock, shortageWaitMs, waiting.signal);
          continue;
        }
        backend.connectFailures++;
        backend.recordConnect(false, reason);
        this.#emit({ type: "connect-error", client: clientName, backend: backend.name, reason });
      }
    }
    if (server === undefined) {
      const end = watched.gone ? "client-reset" : queueEnd ??
        (this.#cutting ? "drain-timeout" : tried.size === 0 ? "no-backend" : "connect-failed");
      await this.#engine.close(client, { reset: end === "drain-timeout" });
      finish(end);
      return;
    }

    const prefix = backend!.sendProxy === "off"
      ? undefined
      : this.#proxyHeader(backend!.sendProxy, client, front?.client, front?.destination);
    const joined = this.#engine.join(client, server, prefix);
    connection.cut = () => joined.cut("aborted");
    connection.joined = joined;
    connection.pool = pool;
    connection.backend = backend;
    connection.joinedAt = this.#clock.now();
    connection.seenActivity = 0;
    connection.quietSince = connection.joinedAt;
    // Returned, not awaited: see #serve.
    const joinedTo = backend!;
    return joined.result.then((result) => {
      joinedTo.active--;
      joinedTo.connections++;
      joinedTo.bytesIn += result.bytesFromClient;
      joinedTo.bytesOut += result.bytesFromServer;
      pool.queue.wake();
      const end = result.end !== "aborted" ? result.end : connection.shutdown ?? "drain-timeout";
      finish(end, joinedTo, result.bytesFromClient, result.bytesFromServer);
    });
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

  // One attempt, bounded by the connect timeout and by a drain cut-off.
  async #connect(backend: Backend, connection: Connection, pool: Pool): Promise<EngineConn> {
    const attempt = new Attempt();
    const timeoutMs = pool.settings.connectTimeoutMs;
    const timeout = this.#connectTimeouts.add(
      timeoutMs,
      () => attempt.abort(new Deno.errors.TimedOut(`no answer in ${timeoutMs} ms`)),
    );
    connection.cut = () => attempt.abort(new Deno.errors.Interrupted("draining"));
    try {
      return await this.#engine.dial(backend.address, attempt);
    } catch (error) {
      // Deno reports an aborted connect as a generic AbortError; say why.
      throw attempt.aborted ? attempt.reason : error;
    } finally {
      timeout.cancel();
    }
  }
}
