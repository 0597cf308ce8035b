/**
 * The load balancer: accepts clients and hands each one to a backend.
 *
 * Every connection is one loop: pick a backend → dial it (with a timeout) →
 * on failure pick again, skipping what already failed → bridge the two
 * sockets → report how it went. Nothing is read from the client before a
 * backend is connected, so a retry never sends a byte twice.
 *
 * Run it: `deno run --allow-net load_balancer.ts --help`.
 *
 * @module
 */

import { formatHostPort, type HostPort, parseHostPort } from "./address.ts";
import { type Candidate, RoundRobin, type Strategy } from "./balancer.ts";
import { Bridge, type BridgeEnd, EarlyReader } from "./bridge.ts";
import { type BufferPool, defaultPools } from "./buffers.ts";
import {
  admits,
  DEFAULT_HEALTH,
  effectiveWeight,
  type Health,
  type HealthChange,
  type HealthSettings,
  INITIAL_HEALTH,
  recordCheck,
  recordConnect,
  startTrial,
} from "./health.ts";
import { WaitQueue } from "./queue.ts";
import { TimeoutQueue } from "./timeouts.ts";
import { CHECK_BUCKETS, DURATION_BUCKETS, Histogram } from "./metrics.ts";
import { HealthChecker, isOutOfDescriptors, type Probe } from "./health_check.ts";
import { type LoadBalancerFlags, parseFlags, USAGE, UsageError } from "./flags.ts";
import { type Config, ConfigError, socketsOverlap } from "./config.ts";
import { createAdminHandler } from "./admin.ts";
import { AdminServer } from "./admin_server.ts";
import { canUseLibc, ignoreSigusr1, isSignalIgnored, resetConnection } from "./libc.ts";
import { VERSION } from "./version.ts";
import { balancerOptions, resolveConfig, sourceOf, summarize } from "./setup.ts";
import { AccessLog, accessLog, describe, logDiagnostic, logEvent, useAccessLog } from "./log.ts";
import { supervise } from "./supervisor.ts";

/** How a backend's health is judged; set by the balancer that owns it. */
export interface HealthPolicy {
  settings: HealthSettings;
  /** Whether an active checker brings down backends back (else client trials do). */
  activeChecks: boolean;
  now: () => number;
  onChange: (backend: Backend, change: HealthChange) => void;
}

/** One backend of the pool, and what the strategies need to know about it. */
export class Backend implements Candidate {
  /** Where to connect; host names are resolved at each connect. */
  readonly address: HostPort;
  /** The address as written in logs, `HOST:PORT`. */
  readonly name: string;
  /** The weight it was given (a reload may change it); {@linkcode Backend.weight} ramps to it. */
  configuredWeight: number;
  backup: boolean;
  /** Connections in progress, attempts to connect included. */
  active = 0;
  /** Most connections at once; new clients wait in the queue beyond it. */
  maxConnections: number;
  /**
   * Set through the admin API until the next reload: `draining` takes no new
   * connections (health checks go on), `disabled` neither (nor checks).
   */
  adminState: "enabled" | "draining" | "disabled" = "enabled";
  /** Connections bridged to it that have ended. */
  connections = 0;
  /** Bytes from clients to it, and from it to clients, over ended connections. */
  bytesIn = 0;
  bytesOut = 0;
  /** Failed attempts to connect to it. */
  connectFailures = 0;
  /** The last active check: when, whether it passed, and why not. */
  lastCheck: { at: Date; ok: boolean; reason?: string } | undefined;
  /** How long active checks took, in seconds. */
  readonly checkSeconds = new Histogram(CHECK_BUCKETS);
  /** Up or down, and the counts behind it (see health.ts). */
  health: Health = INITIAL_HEALTH;
  /** Set by the balancer that owns it. */
  policy: HealthPolicy = {
    settings: DEFAULT_HEALTH,
    activeChecks: false,
    now: () => performance.now(),
    onChange: () => {},
  };

  constructor(
    address: HostPort,
    options: { weight?: number; backup?: boolean; maxConnections?: number } = {},
  ) {
    this.maxConnections = options.maxConnections ?? Infinity;
    this.address = address;
    this.name = formatHostPort(address);
    this.configuredWeight = options.weight ?? 1;
    this.backup = options.backup ?? false;
  }

  /** `up` or `down`, or the admin state when it is not `enabled`. */
  get state(): "up" | "down" | "draining" | "disabled" {
    return this.adminState === "enabled" ? this.health.state : this.adminState;
  }

  /** Whether new connections may go here now: enabled, healthy (or due a trial), not full. */
  get usable(): boolean {
    if (this.adminState !== "enabled" || this.active >= this.maxConnections) return false;
    // The clock matters only to a down backend (is its trial due?): read it only then.
    return this.health.state === "up" ||
      admits(this.health, this.policy.now(), this.policy.activeChecks);
  }

  /** The weight to balance with now (ramping up during slow start). */
  get weight(): number {
    const { settings, now } = this.policy;
    // Strategies read this on every pick: skip the clock unless a ramp is on.
    if (settings.slowStartMs <= 0) return this.configuredWeight;
    return effectiveWeight(this.configuredWeight, this.health, now(), settings.slowStartMs);
  }

  /** Records an active check's result, and how long it took. */
  recordCheck(ok: boolean, reason?: string, durationMs?: number): void {
    this.lastCheck = { at: new Date(), ok, ...(reason === undefined ? {} : { reason }) };
    if (durationMs !== undefined) this.checkSeconds.observe(durationMs / 1000);
    this.#apply(recordCheck(this.health, ok, this.policy.now(), this.policy.settings, reason));
  }

  /** Records a client connection's attempt to connect. */
  recordConnect(ok: boolean, reason?: string): void {
    this.#apply(recordConnect(this.health, ok, this.policy.now(), this.policy.settings, reason));
  }

  /** Notes that a client is about to try this backend while it is down (half-open). */
  startTrial(): void {
    this.health = startTrial(this.health);
  }

  #apply(outcome: { health: Health; change?: HealthChange }): void {
    this.health = outcome.health;
    if (outcome.change) this.policy.onChange(this, outcome.change);
  }

  /** How it is listed at start: `HOST:PORT`, with its weight and backup role if set. */
  describe(): string {
    const notes = [
      ...(this.configuredWeight !== 1 ? [`weight ${this.configuredWeight}`] : []),
      ...(this.backup ? ["backup"] : []),
    ];
    return notes.length > 0 ? `${this.name} (${notes.join(", ")})` : this.name;
  }
}

/** Makes a {@linkcode Backend} from its address and options. */
export function backendOf(
  address: HostPort,
  options: { weight?: number; backup?: boolean; maxConnections?: number } = {},
): Backend {
  return new Backend(address, options);
}

/** How a client connection ended; the access log's `end` field.
 *
 * The bridge's four (`client-fin`, `server-fin`, `client-reset`,
 * `server-reset`), plus:
 * - `connect-failed`: every backend was tried and none could be reached;
 * - `no-backend`: no backend was there to try (empty pool, all down);
 * - `drain-timeout`: still open when the drain timeout ran out at shutdown;
 * - `idle-timeout`: no byte either way for the idle timeout;
 * - `half-closed-timeout`: one side had finished, and no byte came for the
 *   half-closed timeout;
 * - `queue-timeout`: every usable backend was at its limit for the whole
 *   queue timeout; `queue-full`: they were, and the queue was full too.
 */
export type ConnectionEnd =
  | Exclude<BridgeEnd, "aborted">
  | "connect-failed"
  | "no-backend"
  | "drain-timeout"
  | "queue-timeout"
  | "queue-full";

/** What the access log says about one finished client connection. */
export interface AccessRecord {
  /** When the connection ended. */
  readonly time: Date;
  /** The listener's name (`default` without a config file). */
  readonly listener: string;
  /** The client's address, `HOST:PORT`. */
  readonly client: string;
  /** The backend it was bridged to, if any. */
  readonly backend: string | undefined;
  /** Bytes received from the client (and sent on to the backend). */
  readonly bytesIn: number;
  /** Bytes received from the backend (and sent on to the client). */
  readonly bytesOut: number;
  /** From accept to close, in milliseconds. */
  readonly durationMs: number;
  /** How it ended. */
  readonly end: ConnectionEnd;
}

/** Everything the balancer reports; the caller decides where it goes. */
export type LoadBalancerEvent =
  | { readonly type: "connection"; readonly record: AccessRecord }
  | {
    readonly type: "connect-error";
    readonly client: string;
    readonly backend: string;
    readonly reason: string;
  }
  | {
    /** A backend connect found no free descriptor; the client waits and tries again. */
    readonly type: "descriptor-shortage";
    readonly client: string;
    readonly backend: string;
    readonly reason: string;
    readonly waitMs: number;
  }
  | {
    /** Accepting failed (out of descriptors, …); reported once, when it starts failing. */
    readonly type: "accept-error";
    readonly reason: string;
    readonly backoffMs: number;
  }
  | {
    /** Accepting works again after `failures` failed attempts. */
    readonly type: "accept-recovered";
    readonly failures: number;
  }
  | {
    /** A backend went up or down. */
    readonly type: "backend-state";
    readonly backend: string;
    readonly from: "up" | "down";
    readonly to: "up" | "down";
    readonly why: string;
  }
  | {
    /** A bug: something threw that should not have. The connection was closed. */
    readonly type: "internal-error";
    readonly client: string;
    readonly reason: string;
  };

/** Opens a connection to a backend; must give up when `signal` aborts. */
export type Dialer = (address: HostPort, signal: AbortSignal) => Promise<Deno.TcpConn>;

/** Options for {@linkcode LoadBalancer}. */
export interface LoadBalancerOptions {
  /** The listener's name, for logs and metrics. @default {"default"} */
  name?: string;
  /** Its pool's name, for metrics. @default {"default"} */
  pool?: string;
  /** Where clients come from. The balancer owns it from now on and closes it. */
  listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>;
  /** The pool, in order. */
  backends: readonly Backend[];
  /** Which backend each attempt goes to. @default {new RoundRobin()} */
  strategy?: Strategy<Backend>;
  /** Time allowed for each backend connect attempt. @default {5000} */
  connectTimeoutMs?: number;
  /** How backends are dialled. @default {Deno.connect} */
  dial?: Dialer;
  /** Receives every event; nothing is logged from the core itself. */
  onEvent?: (event: LoadBalancerEvent) => void;
  /** Where the bridge's read buffers come from. @default {defaultPools} */
  pools?: { small: BufferPool; large: BufferPool };
  /** Rise/fall, backoff and slow start. @default {DEFAULT_HEALTH} */
  health?: HealthSettings;
  /** Active checks, off by default: how to probe and how often. */
  healthCheck?: { probe: Probe; intervalMs: number };
  /** The clock health decisions and timeouts use. @default {performance.now} */
  now?: () => number;
  /** Close a connection after this long with no byte either way. @default {3600000} */
  idleTimeoutMs?: number;
  /** Close a half-closed connection after this long with no byte. @default {60000} */
  halfClosedTimeoutMs?: number;
  /** Most client connections at once; beyond it, clients wait in the kernel's backlog. @default {10000} */
  maxConnections?: number;
  /** Where clients wait while every usable backend is at its limit. */
  queue?: { max?: number; timeoutMs?: number };
  /**
   * Sends a reset on a socket (see libc.ts); with it, resets are passed on
   * and the drain timeout resets what it cuts. @default {none: closes cleanly}
   */
  reset?: (conn: Deno.Conn) => boolean;
}

/** A client connection in progress, as the balancer tracks it for draining and timeouts. */
interface Connection {
  /** Settles once the connection is over and reported. */
  done: Promise<void>;
  /** Ends it now, whatever stage it is at (connecting or bridged). */
  cut(): void;
  /** Once bridged: the bridge, its activity count at the last sweep, and since when it is unchanged. */
  bridge?: Bridge;
  seenActivity?: number;
  quietSince?: number;
}

// Racing IPv6 against IPv4 (Happy Eyeballs, on by default in Deno) only
// helps a host name; for an address literal it costs about a fifth of the
// CPU a new connection takes, for nothing.
const defaultDial: Dialer = ({ hostname, port }, signal) =>
  Deno.connect({ hostname, port, signal, autoSelectFamily: !isIpLiteral(hostname) });

function isIpLiteral(hostname: string): boolean {
  return hostname.includes(":") || /^\d{1,3}(\.\d{1,3}){3}$/.test(hostname);
}

// Accepting again at once after EMFILE would spin; wait, doubling, up to a second.
const ACCEPT_BACKOFF_FIRST_MS = 10;
const ACCEPT_BACKOFF_MAX_MS = 1000;

/** A running load balancer. Call {@linkcode LoadBalancer.serve} to start it. */
export class LoadBalancer {
  readonly #listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>;
  /** The listener's name, for logs and metrics. */
  readonly name: string;
  /** Its pool's name (a reload may change it). */
  pool: string;
  /** How long connections lasted, in seconds. */
  readonly durations = new Histogram(DURATION_BUCKETS);
  #backends: readonly Backend[];
  #strategy: Strategy<Backend>;
  #connectTimeoutMs: number;
  readonly #dial: Dialer;
  readonly #emit: (event: LoadBalancerEvent) => void;
  readonly #pools: { small: BufferPool; large: BufferPool };
  readonly #reset: ((conn: Deno.Conn) => boolean) | undefined;
  // Set when the drain timeout runs out: every connection left is cut, and
  // none still connecting may start another attempt.
  #cutting = false;
  // Aborted when we stop accepting: ends an accept backoff early.
  readonly #stopAccepting = new AbortController();
  readonly #connections = new Set<Connection>();
  #checker: HealthChecker | undefined;
  readonly #now: () => number;
  #idleTimeoutMs: number;
  #halfClosedTimeoutMs: number;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  /** Every connect attempt's timeout, on one timer. */
  readonly #connectTimeouts = new TimeoutQueue();
  #maxConnections: number;
  #queue: WaitQueue;
  // Resolved when a connection ends, for an accept loop waiting at maxConnections.
  #roomFreed: PromiseWithResolvers<void> | undefined;
  #serving: Promise<void> | undefined;

  constructor(options: LoadBalancerOptions) {
    this.#listener = options.listener;
    this.name = options.name ?? "default";
    this.pool = "default";
    this.#dial = options.dial ?? defaultDial;
    const onEvent = options.onEvent ?? (() => {});
    this.#emit = (event) => {
      try {
        onEvent(event);
      } catch {
        // A failing log sink (a closed stdout, …) must not take connections down.
      }
    };
    this.#pools = options.pools ?? defaultPools;
    this.#reset = options.reset;
    this.#now = options.now ?? (() => performance.now());
    this.#backends = [];
    this.#strategy = new RoundRobin();
    this.#connectTimeoutMs = 0;
    this.#idleTimeoutMs = 0;
    this.#halfClosedTimeoutMs = 0;
    this.#maxConnections = 0;
    this.#queue = new WaitQueue();
    this.#apply(options);
  }

  /**
   * Takes a new configuration for new connections; connections in progress
   * keep the backend they have. Backends left out get no new connections,
   * and theirs finish. Pass the same {@linkcode Backend} objects for backends
   * that stay, so their health and connection counts carry over.
   */
  reconfigure(
    options: Omit<LoadBalancerOptions, "listener" | "dial" | "onEvent" | "pools" | "now">,
  ) {
    this.#checker?.stop();
    const waiting = this.#queue;
    this.#apply(options);
    // Clients waiting for room try again under the new configuration.
    while (waiting.length > 0) waiting.wake();
    if (this.#serving !== undefined) {
      this.#checker?.start();
      this.#startSweeper();
    }
  }

  #apply(options: Omit<LoadBalancerOptions, "listener" | "dial" | "onEvent" | "pools" | "now">) {
    this.pool = options.pool ?? "default";
    this.#backends = options.backends;
    this.#strategy = options.strategy ?? new RoundRobin();
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 3_600_000;
    this.#halfClosedTimeoutMs = options.halfClosedTimeoutMs ?? 60_000;
    this.#maxConnections = options.maxConnections ?? 10_000;
    this.#queue = new WaitQueue(options.queue);
    const policy: HealthPolicy = {
      settings: options.health ?? DEFAULT_HEALTH,
      activeChecks: options.healthCheck !== undefined,
      now: this.#now,
      onChange: (backend, change) =>
        this.#emit({ type: "backend-state", backend: backend.name, ...change }),
    };
    for (const backend of this.#backends) backend.policy = policy;
    this.#checker = options.healthCheck && new HealthChecker({
      backends: this.#backends,
      probe: options.healthCheck.probe,
      intervalMs: options.healthCheck.intervalMs,
      now: this.#now,
    });
  }

  // One timer for every connection's timeouts, rather than one per read.
  #startSweeper(): void {
    clearInterval(this.#sweeper);
    const everyMs = Math.min(
      1000,
      Math.max(5, Math.min(this.#idleTimeoutMs, this.#halfClosedTimeoutMs) / 4),
    );
    this.#sweeper = setInterval(() => this.#sweep(), everyMs);
    Deno.unrefTimer(this.#sweeper as unknown as number);
  }

  /** Where clients connect. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /** The backends new connections go to. */
  get backends(): readonly Backend[] {
    return this.#backends;
  }

  /** Clients waiting for a backend with room. */
  get queueLength(): number {
    return this.#queue.length;
  }

  /** Client connections in progress. */
  get activeConnections(): number {
    return this.#connections.size;
  }

  /** Accepts clients until {@linkcode shutdown}; resolves when accepting stops. */
  serve(): Promise<void> {
    if (this.#serving === undefined) {
      this.#checker?.start();
      this.#startSweeper();
    }
    this.#serving ??= this.#acceptLoop();
    return this.#serving;
  }

  /**
   * Closes the listening socket; resolves once it is really gone, so new
   * clients are refused from then on. (Deno releases a listener only after
   * its pending `accept()` has been torn down, a moment after `close()`.)
   */
  async stopAccepting(): Promise<void> {
    this.#stopAccepting.abort();
    this.#roomFreed?.resolve();
    await this.#checker?.stop();
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    await this.#serving;
  }

  /**
   * Stops accepting at once (new clients are refused), waits for connections
   * in progress to finish, and when `drainTimeoutMs` runs out closes what is
   * left, each reported as `drain-timeout`. Resolves with how many were cut.
   */
  async shutdown(drainTimeoutMs: number): Promise<{ cut: number }> {
    await this.stopAccepting();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), drainTimeoutMs);
    });
    const outcome = await Promise.race([this.#allDone(), timedOut]);
    clearTimeout(timer);
    let cut = 0;
    if (outcome === "timeout") {
      cut = this.#connections.size;
      this.#cutting = true;
      this.#queue.cutAll();
      for (const connection of this.#connections) connection.cut();
      await this.#allDone();
    }
    clearInterval(this.#sweeper);
    this.#connectTimeouts.clear();
    return { cut };
  }

  // Cuts bridged connections that have been quiet too long: the idle timeout,
  // or the shorter half-closed one once a side has finished.
  #sweep(): void {
    const now = this.#now();
    for (const connection of this.#connections) {
      const bridge = connection.bridge;
      if (bridge === undefined) continue;
      if (bridge.activity !== connection.seenActivity) {
        connection.seenActivity = bridge.activity;
        connection.quietSince = now;
        continue;
      }
      const quietMs = now - connection.quietSince!;
      if (bridge.halfClosedAt !== undefined && quietMs >= this.#halfClosedTimeoutMs) {
        bridge.cut("half-closed-timeout");
      } else if (quietMs >= this.#idleTimeoutMs) {
        bridge.cut("idle-timeout");
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
  // for good (Deno's accept() throws in both cases).
  async #acceptLoop(): Promise<void> {
    let failures = 0;
    let backoffMs = 0;
    while (!this.#stopAccepting.signal.aborted) {
      if (this.#connections.size >= this.#maxConnections) {
        // At the limit: stop accepting; the kernel's backlog holds the rest.
        this.#roomFreed ??= Promise.withResolvers<void>();
        await this.#roomFreed.promise;
        continue;
      }
      let client: Deno.TcpConn | undefined;
      try {
        client = await this.#listener.accept();
      } catch (error) {
        if (this.#stopAccepting.signal.aborted) break;
        // A client that reset before we accepted it: accepting itself works.
        if (!isClientGone(error)) {
          // Out of descriptors (EMFILE/ENFILE) or the like: the pending client
          // stays queued in the kernel; back off so we do not spin, then retry.
          // Said once per episode, so a long shortage does not flood the log.
          failures++;
          backoffMs = Math.min(
            backoffMs === 0 ? ACCEPT_BACKOFF_FIRST_MS : backoffMs * 2,
            ACCEPT_BACKOFF_MAX_MS,
          );
          if (failures === 1) {
            this.#emit({ type: "accept-error", reason: describe(error), backoffMs });
          }
          await sleep(backoffMs, this.#stopAccepting.signal);
          continue;
        }
      }
      if (failures > 0) this.#emit({ type: "accept-recovered", failures });
      failures = 0;
      backoffMs = 0;
      if (client === undefined) continue;
      const connection: Connection = { done: Promise.resolve(), cut: () => {} };
      // In the set before it starts: it may end before #serve first awaits.
      this.#connections.add(connection);
      connection.done = this.#serve(client, connection);
    }
  }

  // One client connection from accept to close. Nothing it does may escape:
  // an unexpected error ends this connection only.
  async #serve(client: Deno.TcpConn, connection: Connection): Promise<void> {
    try {
      await this.#handle(client, connection);
    } catch (error) {
      closeQuietly(client);
      this.#emit({ type: "internal-error", client: describeAddr(client), reason: describe(error) });
    } finally {
      this.#connections.delete(connection);
      this.#roomFreed?.resolve();
      this.#roomFreed = undefined;
    }
  }

  // `connection.cut` is pointed at whatever the connection is doing now.
  async #handle(client: Deno.TcpConn, connection: Connection): Promise<void> {
    const startedAt = performance.now();
    const clientName = formatHostPort(client.remoteAddr);
    setNoDelay(client);
    const finish = (
      end: ConnectionEnd,
      backend?: Backend,
      bytesIn = 0,
      bytesOut = 0,
    ) => {
      const durationMs = performance.now() - startedAt;
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

    // Reading from the client starts now, so that a client that resets
    // while we dial is noticed and the dial abandoned. What this read brings
    // is forwarded once a backend is connected: nothing has been sent before
    // then, so a retry never sends a byte twice.
    const clientGone = new AbortController();
    const early = new EarlyReader(client, this.#pools.small.take(), () => {
      clientGone.abort();
      connection.cut();
    });
    const tried = new Set<Backend>();
    const clientAddress = client.remoteAddr.hostname;
    let backend: Backend | undefined;
    let server: Deno.TcpConn | undefined;
    let queueEnd: "queue-timeout" | "queue-full" | undefined;
    let shortageWaitMs = 0;
    while (server === undefined && !this.#cutting && !clientGone.signal.aborted) {
      backend = this.#strategy.pick(this.#backends, { tried, clientAddress });
      if (backend === undefined) {
        // Nothing to try now; if that is because healthy backends are full,
        // wait in the queue for one to have room.
        const full = this.#backends.some((b) =>
          !tried.has(b) && b.adminState === "enabled" && b.health.state === "up" &&
          b.active >= b.maxConnections
        );
        if (!full) break;
        const outcome = await this.#queue.wait(clientGone.signal);
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
        server = await this.#connect(backend, connection);
        backend.recordConnect(true);
      } catch (error) {
        backend.active--;
        this.#queue.wake();
        if (this.#cutting || clientGone.signal.aborted) break;
        const reason = describe(error);
        if (isOutOfDescriptors(error)) {
          // Our shortage, not the backend's: leave its health and counters
          // alone, and wait for descriptors (closing connections free them)
          // as long as the connect timeout allows.
          const waitedMs = performance.now() - startedAt;
          if (waitedMs >= this.#connectTimeoutMs) break;
          shortageWaitMs = Math.min(
            shortageWaitMs === 0 ? ACCEPT_BACKOFF_FIRST_MS : shortageWaitMs * 2,
            ACCEPT_BACKOFF_MAX_MS,
            this.#connectTimeoutMs - waitedMs,
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
          await sleep(shortageWaitMs, waiting.signal);
          continue;
        }
        backend.connectFailures++;
        backend.recordConnect(false, reason);
        this.#emit({ type: "connect-error", client: clientName, backend: backend.name, reason });
      }
    }
    if (server === undefined) {
      const end = clientGone.signal.aborted ? "client-reset" : queueEnd ??
        (this.#cutting ? "drain-timeout" : tried.size === 0 ? "no-backend" : "connect-failed");
      early.stop();
      if (end === "drain-timeout") this.#reset?.(client);
      closeQuietly(client);
      // A read under way settles once the socket is closed; then its buffer is free.
      await early.settle();
      this.#pools.small.give(early.buffer);
      finish(end);
      return;
    }

    setNoDelay(server);
    const bridge = new Bridge(client, server, {
      pools: this.#pools,
      now: this.#now,
      early,
      reset: this.#reset,
    });
    connection.cut = () => bridge.cut();
    connection.bridge = bridge;
    connection.seenActivity = 0;
    connection.quietSince = this.#now();
    const result = await bridge.result;
    backend!.active--;
    backend!.connections++;
    backend!.bytesIn += result.bytesFromClient;
    backend!.bytesOut += result.bytesFromServer;
    this.#queue.wake();
    const end = result.end === "aborted" ? "drain-timeout" : result.end;
    finish(end, backend, result.bytesFromClient, result.bytesFromServer);
  }

  // One attempt, bounded by the connect timeout and by a drain cut-off.
  async #connect(backend: Backend, connection: Connection): Promise<Deno.TcpConn> {
    const attempt = new AbortController();
    const timeoutMs = this.#connectTimeoutMs;
    const timeout = this.#connectTimeouts.add(
      timeoutMs,
      () => attempt.abort(new Deno.errors.TimedOut(`no answer in ${timeoutMs} ms`)),
    );
    connection.cut = () => attempt.abort(new Deno.errors.Interrupted("draining"));
    try {
      return await this.#dial(backend.address, attempt.signal);
    } catch (error) {
      // Deno reports an aborted connect as a generic AbortError; say why.
      throw attempt.signal.aborted ? attempt.signal.reason : error;
    } finally {
      timeout.cancel();
    }
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

function describeAddr(conn: Deno.TcpConn): string {
  try {
    return formatHostPort(conn.remoteAddr);
  } catch {
    return "-";
  }
}

function setNoDelay(conn: Deno.TcpConn): void {
  try {
    // Deno leaves Nagle's algorithm on; a proxy must not add its delay to
    // every small write. HAProxy and NGINX set TCP_NODELAY too.
    conn.setNoDelay(true);
  } catch {
    // The peer already reset; the bridge will see it and end the connection.
  }
}

function isClientGone(error: unknown): boolean {
  return error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** A start-up failure: the message for stderr, and the exit code (2: usage or setup). */
class StartError extends Error {
  constructor(message: string, readonly code = 2) {
    super(message);
  }
}

/** Runs the load balancer from the command line; see `--help`. */
export async function main(args: readonly string[]): Promise<void> {
  // Before anything else: no window in which SIGUSR1 opens a debugger.
  const sigusr1 = guardSigusr1();
  let code: number;
  try {
    code = await run(args, sigusr1);
  } catch (error) {
    if (error instanceof StartError) {
      for (const line of error.message.split("\n")) console.error(`load_balancer: ${line}`);
      code = error.code;
    } else {
      // A bug: say it on one line, and never report success.
      console.error(`load_balancer: internal error at start-up: ${describe(error)}`);
      code = 70;
    }
  }
  accessLog.flush();
  Deno.exit(code);
}

/**
 * Sets SIGUSR1 to "ignored" (see libc.ts), or says why it could not. Deno
 * starts V8's inspector on SIGUSR1, which would let any local user run code
 * in the balancer.
 */
function guardSigusr1(): string | undefined {
  if (!canUseLibc()) {
    return Deno.build.os === "linux"
      ? "warning: SIGUSR1 would open a debugger on 127.0.0.1:9229 (Deno's inspector) that " +
        "any local user could attach to; run with --allow-ffi (deno task lb does) so the " +
        "balancer can ignore it, and never send SIGUSR1 (the access log reopens on SIGUSR2)"
      : undefined;
  }
  try {
    ignoreSigusr1();
    return undefined;
  } catch (error) {
    return `warning: could not ignore SIGUSR1, which opens a debugger: ${describe(error)}`;
  }
}

// The command line, from flags to a running balancer; resolves with the
// exit code when the process should end (signals exit on their own).
async function run(args: readonly string[], sigusr1Warning: string | undefined): Promise<number> {
  let flags;
  try {
    flags = parseFlags(args);
  } catch (error) {
    if (error instanceof UsageError) throw new StartError(error.message);
    throw error;
  }
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }
  if (flags.version) {
    console.log(`load_balancer ${VERSION} (deno ${Deno.version.deno})`);
    return 0;
  }
  const source = sourceOf(flags);
  const problems = (error: ConfigError) => error.problems.map((p) => `${source}: ${p}`).join("\n");
  let config: Config;
  let prepared: Prepared;
  try {
    config = await resolveConfig(flags);
    // The same checks whether we start or only --check: nothing binds here.
    prepared = await prepare(flags, config);
  } catch (error) {
    if (error instanceof ConfigError) throw new StartError(problems(error), flags.check ? 1 : 2);
    throw error;
  }
  if (flags.check) {
    console.log(`load_balancer: ${source}: valid: ${summarize(config)}`);
    return 0;
  }
  // Listen for signals before anything says it is listening, so that a
  // SIGHUP or SIGTERM sent right after never meets the default action
  // (which ends the process). What each does is set once serving.
  const on: Partial<Record<"SIGHUP" | "SIGUSR2" | "SIGINT" | "SIGTERM", () => void>> = {};
  const early = (signal: string) => () => {
    logDiagnostic(`${signal} before serving: exiting`);
    Deno.exit(0);
  };
  const isSupervisor = config.workers > 1 && !flags.asWorker;
  if (!isSupervisor) {
    for (const signal of ["SIGHUP", "SIGUSR2", "SIGINT", "SIGTERM"] as const) {
      const exit = signal === "SIGINT" || signal === "SIGTERM" ? early(signal) : () => {};
      Deno.addSignalListener(signal, () => (on[signal] ?? exit)());
    }
  }
  if (isSupervisor) {
    const listen = parseHostPort(config.listeners[0]!.listen, { allowPortZero: true });
    return await supervise({
      listen,
      workers: config.workers,
      args,
      permissions: workerPermissions(flags),
    });
  }

  // Bind every socket first, admin included: one that cannot bind stops
  // the start before anything says it is listening.
  const bind = (listenerConfig: Config["listeners"][number]) =>
    Deno.listen({
      ...parseHostPort(listenerConfig.listen, { allowPortZero: true }),
      // A worker shares the port with its siblings; the supervisor has
      // already checked that no other program holds it.
      ...(flags.asWorker ? { reusePort: true } : {}),
    });
  const where = (listenerConfig: Config["listeners"][number]) =>
    flags.config === undefined ? "--listen" : `listener ${listenerConfig.name}`;
  const sockets: Deno.TcpListener[] = [];
  const closeAll = () => sockets.forEach((socket) => socket.close());
  for (const listenerConfig of config.listeners) {
    try {
      sockets.push(bind(listenerConfig));
    } catch (error) {
      closeAll();
      throw new StartError(`${where(listenerConfig)} ${listenerConfig.listen}: ${describe(error)}`);
    }
  }
  let adminSocket: Deno.TcpListener | undefined;
  if (config.admin !== undefined) {
    try {
      adminSocket = Deno.listen(parseHostPort(config.admin.listen, { allowPortZero: true }));
    } catch (error) {
      closeAll();
      throw new StartError(`admin ${config.admin.listen}: ${describe(error)}`);
    }
  }
  useAccessLog(prepared.accessLog);
  const reopenAccessLog = () => {
    accessLog.reopen();
    return flags.accessLog ?? "(stdout)";
  };
  on.SIGUSR2 = () => {
    try {
      logDiagnostic(`SIGUSR2: reopened the access log ${reopenAccessLog()}`);
    } catch (error) {
      logDiagnostic(`SIGUSR2: could not reopen the access log: ${describe(error)}`);
    }
  };
  // Last line of defence: one connection's bug must not end every other one.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    logDiagnostic(`unexpected error, still serving: ${oneLine(describe(event.reason))}`);
  });

  // The running balancers, by the address they listen on: a reload keeps
  // the socket (and the balancer) of every address it still lists.
  const running = new Map<string, LoadBalancer>();
  const start = (
    listener: Deno.TcpListener,
    index: number,
    options: ReturnType<typeof balancerOptions>,
  ) => {
    const name = config.listeners[index]!.name;
    const balancer = new LoadBalancer({
      ...options,
      name,
      listener,
      onEvent: logEvent,
      ...(canUseLibc() ? { reset: resetConnection } : {}),
    });
    running.set(config.listeners[index]!.listen, balancer);
    logDiagnostic(
      `listening on ${formatHostPort(balancer.addr)}; backends ${
        options.backends.map((b) => b.describe()).join(", ")
      }`,
    );
    balancer.serve();
    return balancer;
  };
  sockets.forEach((socket, index) => start(socket, index, prepared.balancers[index]!));
  if (sigusr1Warning !== undefined) logDiagnostic(sigusr1Warning);
  const active = () => [...running.values()].reduce((sum, b) => sum + b.activeConnections, 0);
  let stopping = false;

  const counts = { reloads: 0, reloadFailures: 0 };
  let token = prepared.token;
  if (adminSocket !== undefined) {
    const view = {
      balancers: () => [...running.values()],
      get reloads() {
        return counts.reloads;
      },
      get reloadFailures() {
        return counts.reloadFailures;
      },
    };
    const handler = createAdminHandler({
      view,
      token: () => token,
      audit: logDiagnostic,
      reopenLogs: reopenAccessLog,
    });
    const server = new AdminServer({ listener: adminSocket, handler });
    logDiagnostic(
      `admin API on http://${formatHostPort(server.addr)} ` +
        `(changes ${token === undefined ? "refused: no token" : "need the token"})`,
    );
  }

  // Atomic: validate, prepare, bind new addresses, then switch; any failure
  // changes nothing, and is one line.
  const reload = async (why: string) => {
    const failed = (problem: string, more = 0) => {
      counts.reloadFailures++;
      logDiagnostic(
        `reload (${why}) failed, still running the previous config: ${oneLine(problem)}` +
          (more > 0 ? ` (and ${more} more)` : ""),
      );
    };
    let next: Config;
    let nextPrepared: Prepared;
    try {
      next = await resolveConfig(flags);
      nextPrepared = await prepare(flags, next, accessLog);
    } catch (error) {
      if (error instanceof ConfigError) {
        return failed(`${source}: ${error.problems[0]}`, error.problems.length - 1);
      }
      return failed(`internal error: ${describe(error)}`);
    }
    // A new address that overlaps one still bound (127.0.0.1:5901 widened to
    // 0.0.0.0:5901) cannot be bound until the old socket closes.
    for (const listenerConfig of next.listeners) {
      if (running.has(listenerConfig.listen)) continue;
      const clash = [...running.keys()].find((address) =>
        !next.listeners.some((l) => l.listen === address) &&
        socketsOverlap(address, listenerConfig.listen)
      );
      if (clash !== undefined) {
        return failed(
          `${where(listenerConfig)} ${listenerConfig.listen} overlaps ${clash}, which stays ` +
            `bound until the reload is done: moving a listener to an overlapping address on ` +
            `the same port needs a restart (or use another port)`,
        );
      }
    }
    const fresh = new Map<string, Deno.TcpListener>();
    for (const listenerConfig of next.listeners) {
      if (running.has(listenerConfig.listen)) continue;
      try {
        fresh.set(listenerConfig.listen, bind(listenerConfig));
      } catch (error) {
        for (const socket of fresh.values()) socket.close();
        return failed(`${where(listenerConfig)} ${listenerConfig.listen}: ${describe(error)}`);
      }
    }
    const previous = config;
    config = next;
    token = nextPrepared.token;
    next.listeners.forEach((listenerConfig, index) => {
      const balancer = running.get(listenerConfig.listen);
      if (balancer === undefined) {
        start(fresh.get(listenerConfig.listen)!, index, nextPrepared.balancers[index]!);
      } else {
        // Backends that stay keep their object: health and counts carry over.
        const kept = new Map(balancer.backends.map((b) => [b.name, b]));
        balancer.reconfigure(balancerOptions(next, index, kept));
      }
    });
    for (const [address, balancer] of running) {
      if (next.listeners.some((l) => l.listen === address)) continue;
      running.delete(address);
      balancer.shutdown(previous.drain_timeout_ms).then(({ cut }) =>
        logDiagnostic(
          `stopped listening on ${address}; ${cut} connection(s) cut at the drain timeout`,
        )
      );
    }
    counts.reloads++;
    const restart = needsRestart(previous, next);
    logDiagnostic(
      `reloaded (${why}): ${summarize(next)}` +
        (restart.length > 0 ? `; not applied until a restart: ${restart.join(", ")}` : ""),
    );
  };
  let reloading = Promise.resolve();
  const requestReload = (why: string) => {
    if (stopping) return;
    // Never rejects: a failed reload must leave the next one, and shutdown, working.
    reloading = reloading.then(() => reload(why)).catch((error) =>
      logDiagnostic(`reload (${why}) failed: internal error: ${oneLine(describe(error))}`)
    );
  };
  on.SIGHUP = () => requestReload("SIGHUP");
  if (flags.watch && flags.config !== undefined) watchConfig(flags.config, requestReload);

  let signals = 0;
  const onSignal = async (signal: string) => {
    signals++;
    stopping = true;
    if (signals > 1) {
      logDiagnostic(`${signal} again: exiting now, cutting ${active()} connection(s)`);
      accessLog.flush();
      Deno.exit(1);
    }
    await reloading;
    const balancers = [...running.values()];
    await Promise.all(balancers.map((b) => b.stopAccepting()));
    logDiagnostic(
      `${signal}: no longer accepting; draining ${active()} connection(s), ` +
        `up to ${config.drain_timeout_ms} ms`,
    );
    const results = await Promise.all(balancers.map((b) => b.shutdown(config.drain_timeout_ms)));
    accessLog.flush();
    const cut = results.reduce((sum, r) => sum + r.cut, 0);
    logDiagnostic(`stopped; ${cut} connection(s) cut at the drain timeout`);
    Deno.exit(0);
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) on[signal] = () => onSignal(signal);
  if (flags.asWorker) {
    // A supervisor killed outright cannot pass on a signal: notice that we
    // were handed to another parent, and drain as if told to stop.
    const supervisor = Deno.ppid;
    const watch = setInterval(() => {
      if (Deno.ppid === supervisor) return;
      clearInterval(watch);
      onSignal("supervisor gone");
    }, 1000);
    Deno.unrefTimer(watch);
  }
  if (canUseLibc()) {
    // In case a future Deno installs its SIGUSR1 handler anew after start-up.
    const check = setTimeout(() => {
      if (!isSignalIgnored()) logDiagnostic("SIGUSR1 had a handler again; ignoring it again");
    }, 2000);
    Deno.unrefTimer(check);
  }
  // Serve until a signal ends the process.
  return await new Promise<number>(() => {});
}

/** Settings a reload cannot apply to a running process, as `key (old -> new)`. */
function needsRestart(previous: Config, next: Config): string[] {
  const changed: string[] = [];
  const before = previous.admin?.listen ?? "off";
  const after = next.admin?.listen ?? "off";
  if (before !== after) changed.push(`admin.listen (${before} -> ${after})`);
  if (previous.workers !== next.workers) {
    changed.push(`workers (${previous.workers} -> ${next.workers})`);
  }
  return changed;
}

/** Everything a start (or a reload) needs beyond the config, checked before anything binds. */
interface Prepared {
  /** The admin token, when the admin API is on and one is configured. */
  token: string | undefined;
  /** The balancer options of each listener, in order. */
  balancers: ReturnType<typeof balancerOptions>[];
  /** The access log, opened (a reload keeps the running one). */
  accessLog: AccessLog;
}

/**
 * Reads the token, opens the access log and builds each listener's options:
 * every check start-up makes short of binding, so `--check` finds what start
 * would. @throws {ConfigError}
 */
async function prepare(
  flags: LoadBalancerFlags,
  config: Config,
  runningLog?: AccessLog,
): Promise<Prepared> {
  const problems: string[] = [];
  let token: string | undefined;
  try {
    token = config.admin === undefined ? undefined : await readToken(config.admin.token_file);
  } catch (error) {
    problems.push((error as Error).message);
  }
  let log = runningLog;
  if (log === undefined) {
    try {
      log = new AccessLog({ path: flags.accessLog, format: flags.logFormat });
      if (flags.check) log.close();
    } catch (error) {
      problems.push(`--access-log ${flags.accessLog}: ${describe(error)}`);
    }
  }
  // Built afresh, so a reload that fails later has touched no running backend.
  const balancers = config.listeners.map((_, index) => balancerOptions(config, index));
  if (problems.length > 0) {
    if (log !== runningLog) log?.close();
    throw new ConfigError(problems);
  }
  return { token, balancers, accessLog: log! };
}

/** The admin token: from its file (never empty), else from LB_ADMIN_TOKEN. @throws {Error} */
async function readToken(file: string | undefined): Promise<string | undefined> {
  if (file !== undefined) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (error) {
      throw new Error(`admin.token_file ${file}: ${describe(error)}`);
    }
    const token = text.trim();
    if (token === "" || /\s/.test(token)) {
      throw new Error(
        `admin.token_file ${file}: expected one token (no spaces), got ${
          token === "" ? "an empty file" : "more than one word"
        }`,
      );
    }
    return token;
  }
  const permission = await Deno.permissions.query({ name: "env", variable: "LB_ADMIN_TOKEN" });
  if (permission.state !== "granted") {
    // Whether it is set cannot be known without the permission: never
    // guess, since a token set but ignored would leave changes refused.
    throw new Error(
      "the admin API reads its token from LB_ADMIN_TOKEN when no token file is given, and " +
        "that needs --allow-env=LB_ADMIN_TOKEN (deno task lb grants it); grant it even to run " +
        "read-only with the variable unset, or give admin.token_file / --admin-token-file",
    );
  }
  const token = Deno.env.get("LB_ADMIN_TOKEN")?.trim();
  return token === "" ? undefined : token;
}

/** The permissions a worker needs for the features this command line uses. */
function workerPermissions(flags: LoadBalancerFlags): string[] {
  const permissions: string[] = [];
  // Workers read the same file (and re-read it on SIGHUP).
  if (flags.config !== undefined) {
    permissions.push("--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM");
  } else if (flags.adminTokenFile !== undefined) {
    permissions.push(`--allow-read=${flags.adminTokenFile}`);
  }
  if (flags.accessLog !== undefined) permissions.push(`--allow-write=${flags.accessLog}`);
  if (canUseLibc()) permissions.push("--allow-ffi");
  return permissions;
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " | ");
}

/** Calls `onChange` when the file changes, at most once per 100 ms burst of events. */
function watchConfig(path: string, onChange: (why: string) => void): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  (async () => {
    // Watch the folder: editors often replace the file rather than write it.
    const folder = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
    const name = path.slice(path.lastIndexOf("/") + 1);
    for await (const event of Deno.watchFs(folder, { recursive: false })) {
      if (!event.paths.some((changed) => changed.endsWith(`/${name}`))) continue;
      clearTimeout(timer);
      timer = setTimeout(() => onChange("file changed"), 100);
    }
  })().catch((error) => logDiagnostic(`--watch ${path}: stopped watching: ${describe(error)}`));
}

if (import.meta.main) await main(Deno.args);
