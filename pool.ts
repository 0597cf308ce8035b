/**
 * A pool: its backends and their health, the strategy that picks among them,
 * the queue clients wait in when all are full, and the pool's settings.
 *
 * One `Pool` object per pool of the configuration, shared by every listener
 * that uses it: one health state, one checker and one set of counters per
 * (pool, address), so the admin API and the metrics see each backend once.
 * A reload builds new `Pool` objects but hands them the `Backend` objects of
 * the backends that stay, so their health and counters carry over.
 *
 * Policy only: nothing here touches a socket but the health checker's probes.
 *
 * @module
 */

import { formatHostPort, type HostPort } from "./address.ts";
import { type Candidate, RoundRobin, type Strategy } from "./balancer.ts";
import { type Clock, realClock } from "./clock.ts";
import type { LoadBalancerEvent } from "./events.ts";
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
import { HealthChecker, type Probe } from "./health_check.ts";
import { CHECK_BUCKETS, Histogram } from "./metrics.ts";
import { WaitQueue } from "./queue.ts";

/** How a backend's health is judged; set by the pool that owns it. */
export interface HealthPolicy {
  settings: HealthSettings;
  /** Whether an active checker brings down backends back (else client trials do). */
  activeChecks: boolean;
  now: () => number;
  onChange: (backend: Backend, change: HealthChange) => void;
}

/** What a backend is given at its start, and by each reload. */
export interface BackendSettings {
  /** Relative share of new connections, 1-256. @default {1} */
  weight?: number;
  /** Takes traffic only when no other backend is left to try. @default {false} */
  backup?: boolean;
  /** Most connections at once; more wait in the queue. @default {Infinity} */
  maxConnections?: number;
  /** A PROXY header to send it before the client's bytes. @default {"off"} */
  sendProxy?: SendProxy;
}

/** Where a backend came from. */
export type BackendSource = "config" | "admin" | "dns" | "etcd";

/** Which PROXY protocol header a backend is sent, if any. */
export type SendProxy = "off" | "v1" | "v2";

/** One backend of a pool, and what the strategies need to know about it. */
/** No backend tried yet: what a pick is told when nothing was (shared, never added to). */
export const NOTHING_TRIED: ReadonlySet<Backend> = new Set();

export class Backend implements Candidate {
  /** Where to connect; host names are resolved at each connect. */
  readonly address: HostPort;
  /** The address as written in logs, `HOST:PORT`. */
  readonly name: string;
  /** The weight it was given (a reload may change it); {@linkcode Backend.weight} ramps to it. */
  configuredWeight: number;
  backup: boolean;
  /** The PROXY header it is sent, if any. */
  sendProxy: SendProxy = "off";
  /** Connections in progress, attempts to connect included. */
  active = 0;
  /** Most connections at once; new clients wait in the queue beyond it. */
  maxConnections: number;
  /**
   * Set through the admin API, until a reload of the file (see
   * {@linkcode Backend.configure}): `draining` takes no new connections
   * (health checks go on), `disabled` neither (nor checks).
   */
  adminState: "enabled" | "draining" | "disabled" = "enabled";
  /** A weight set through the admin API; it outlasts reloads that keep admin state. */
  adminWeight: number | undefined;
  /** Where it came from: the file (or flags), the admin API, DNS or etcd. */
  source: BackendSource = "config";
  /** Connections joined to it that have ended. */
  connections = 0;
  /** Bytes from clients to it, and from it to clients, over ended connections. */
  bytesIn = 0;
  bytesOut = 0;
  /** Failed attempts to connect to it. */
  connectFailures = 0;
  /** Recent time to connect, in milliseconds: a moving average (policy modules see it). */
  connectMs: number | undefined;
  // The last connect times, in milliseconds, in a ring (recorded per connection: no shifting).
  readonly #times = new Float64Array(256);
  #timesRecorded = 0;
  /** The last active check: when, whether it passed, and why not. */
  lastCheck: { at: Date; ok: boolean; reason?: string } | undefined;
  /** How long active checks took, in seconds. */
  readonly checkSeconds = new Histogram(CHECK_BUCKETS);
  /** Up or down, and the counts behind it (see health.ts). */
  health: Health = INITIAL_HEALTH;
  /** Set by the pool that owns it. */
  policy: HealthPolicy = {
    settings: DEFAULT_HEALTH,
    activeChecks: false,
    now: () => realClock.now(),
    onChange: () => {},
  };

  constructor(address: HostPort, settings: BackendSettings = {}) {
    this.address = address;
    this.name = formatHostPort(address);
    this.configuredWeight = 1;
    this.backup = false;
    this.maxConnections = Infinity;
    this.configure(settings);
  }

  /**
   * Takes the settings a (re)load gives it. Admin changes (state, weight)
   * end here, unless `keepAdmin`: a change of membership (discovery, the
   * admin API) or a state file keeps them.
   */
  configure(settings: BackendSettings, options: { keepAdmin?: boolean } = {}): void {
    if (!options.keepAdmin) {
      this.adminState = "enabled";
      this.adminWeight = undefined;
    }
    this.configuredWeight = this.adminWeight ?? settings.weight ?? 1;
    this.backup = settings.backup ?? false;
    this.maxConnections = settings.maxConnections ?? Infinity;
    this.sendProxy = settings.sendProxy ?? "off";
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

  /** Whether it is healthy and enabled but has no room: a client may wait for it. */
  get full(): boolean {
    return this.adminState === "enabled" && this.health.state === "up" &&
      this.active >= this.maxConnections;
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

  /** Folds one connect's time into {@linkcode Backend.connectMs} (each new one weighs a fifth). */
  recordConnectTime(ms: number): void {
    this.connectMs = this.connectMs === undefined ? ms : this.connectMs + (ms - this.connectMs) / 5;
    this.#times[this.#timesRecorded++ % this.#times.length] = ms;
  }

  /** The last connect times, in milliseconds (at most 256, in no order), for percentiles. */
  recentConnectTimes(): number[] {
    return Array.from(this.#times.subarray(0, Math.min(this.#timesRecorded, this.#times.length)));
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

/** A pool's settings for the connections it serves. */
export interface PoolSettings {
  /** Time allowed for each backend connect attempt. @default {5000} */
  connectTimeoutMs: number;
  /** Close a connection after this long with no byte either way. @default {3600000} */
  idleTimeoutMs: number;
  /** Close a half-closed connection after this long with no byte. @default {60000} */
  halfClosedTimeoutMs: number;
  /**
   * What happens to a backend's open connections when it leaves the pool:
   * they finish (`drain`) or are closed at once (`close`). @default {"drain"}
   */
  onRemove: "drain" | "close";
  /**
   * What happens to a backend's open connections when it is marked down
   * (health) or disabled (admin API): they stay, or are closed at once.
   * @default {"keep-sessions"}
   */
  onDown: "keep-sessions" | "shutdown-sessions";
}

/** Options for {@linkcode Pool}. */
export interface PoolOptions {
  /** Its name, for logs, metrics and the admin API. @default {"default"} */
  name?: string;
  /** The backends, in order. */
  backends: readonly Backend[];
  /** Which backend each attempt goes to. @default {new RoundRobin()} */
  strategy?: Strategy<Backend>;
  /** Timeouts of the connections it serves. */
  settings?: Partial<PoolSettings>;
  /** Where clients wait while every usable backend is at its limit. */
  queue?: { max?: number; timeoutMs?: number };
  /** Rise/fall, backoff and slow start. @default {DEFAULT_HEALTH} */
  health?: HealthSettings;
  /** Active checks, off by default: how to probe and how often. */
  healthCheck?: { probe: Probe; intervalMs: number };
  /**
   * Whether active checks bring down backends back, when they run elsewhere
   * (a data-plane thread's replica of a pool). @default {healthCheck given}
   */
  activeChecks?: boolean;
  /** The clock health and the queue run on. @default {realClock} */
  clock?: Clock;
  /** Receives the pool's events (backends going up or down). */
  onEvent?: (event: LoadBalancerEvent) => void;
}

/** A pool of backends, shared by the listeners that use it. */
export class Pool {
  readonly name: string;
  readonly backends: readonly Backend[];
  readonly strategy: Strategy<Backend>;
  readonly settings: PoolSettings;
  /** Clients waiting for a backend with room. */
  readonly queue: WaitQueue;
  readonly #checker: HealthChecker | undefined;
  #started = false;

  constructor(options: PoolOptions) {
    const clock = options.clock ?? realClock;
    const onEvent = options.onEvent ?? (() => {});
    this.name = options.name ?? "default";
    this.backends = options.backends;
    this.strategy = options.strategy ?? new RoundRobin();
    this.settings = {
      connectTimeoutMs: options.settings?.connectTimeoutMs ?? 5000,
      idleTimeoutMs: options.settings?.idleTimeoutMs ?? 3_600_000,
      halfClosedTimeoutMs: options.settings?.halfClosedTimeoutMs ?? 60_000,
      onRemove: options.settings?.onRemove ?? "drain",
      onDown: options.settings?.onDown ?? "keep-sessions",
    };
    this.queue = new WaitQueue({ ...options.queue, clock });
    const policy: HealthPolicy = {
      settings: options.health ?? DEFAULT_HEALTH,
      activeChecks: options.activeChecks ?? options.healthCheck !== undefined,
      now: () => clock.now(),
      onChange: (backend, change) => {
        try {
          onEvent({ type: "backend-state", backend: backend.name, ...change });
        } catch {
          // A failing log sink must not stop health tracking.
        }
      },
    };
    for (const backend of this.backends) backend.policy = policy;
    this.#checker = options.healthCheck && new HealthChecker({
      backends: this.backends,
      probe: options.healthCheck.probe,
      intervalMs: options.healthCheck.intervalMs,
      clock,
    });
  }

  /** Starts active checks, if any (once). */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#checker?.start();
  }

  /** Stops active checks; clients in the queue try again (under whatever replaced this pool). */
  async stop(): Promise<void> {
    await this.#checker?.stop();
    while (this.queue.length > 0) this.queue.wake();
  }

  /** Whether a client that found no backend to try should wait: some healthy one is only full. */
  hasRoomLater(tried: ReadonlySet<Backend>): boolean {
    return this.backends.some((backend) => !tried.has(backend) && backend.full);
  }
}
