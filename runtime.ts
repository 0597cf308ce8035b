/**
 * The running balancer: its listeners, the pools they share, the admin API,
 * and what a reload, a log reopen and a shutdown do to them.
 *
 * `load_balancer.ts` plans (plan.ts), then hands the plan and a
 * {@linkcode ListenerHost} — where the listeners run — to a
 * {@linkcode Runtime}, and routes signals to it. The pools, health checks,
 * admin API and logs always live here, on the main thread; the listeners run
 * here too ({@linkcode LocalListeners}, on an engine), or in data-plane
 * threads (threads.ts). Everything reports on stderr through log.ts and
 * throws {@linkcode StartError} when a start cannot go on.
 *
 * @module
 */

import { formatHostPort, parseListen, UDP_SCHEME } from "./address.ts";
import { adminUrl, type ListenerStats, startAdmin } from "./admin.ts";
import type { AdminServer } from "./admin_server.ts";
import { type Clock, realClock } from "./clock.ts";
import {
  type Config,
  ConfigError,
  DISCOVER_INTERVAL_MS,
  listenerKey,
  listenerPool,
  type PoolConfig,
  socketsOverlap,
} from "./config.ts";
import type { BackendChange } from "./membership.ts";
import { type Discovered, type DiscoverySource, PoolDiscovery } from "./discovery.ts";
import { DnsSource } from "./discovery_dns.ts";
import { EtcdSource } from "./discovery_etcd.ts";
import { Edge } from "./edge.ts";
import type { Engine, EngineListener, TlsEngineListener, TlsMaterial } from "./engine.ts";
import { closeQuietly, describe, StartError } from "./errors.ts";
import { type LoadBalancerEvent, READY } from "./events.ts";
import type { LoadBalancerFlags } from "./flags.ts";
import { type AccessLog, eventLogger, logDiagnostic } from "./log.ts";
import {
  adminExposure,
  buildPools,
  discoverySource,
  edgeSettingsOf,
  needsRestart,
  type Plan,
  prepare,
  resolveConfig,
  summarize,
  udpSettingsOf,
} from "./plan.ts";
import type { Pool } from "./pool.ts";
import { LoadBalancer } from "./proxy.ts";
import { UdpBalancer } from "./udp_proxy.ts";
import { Membership, type Overlay } from "./membership.ts";
import { Dashboard } from "./dashboard.ts";
import { readStateFile, writeStateFile } from "./state_file.ts";
import { type RebalanceLine, rebalancePlan } from "./rebalance.ts";

/** One listener's configuration. */
export type ListenerConfig = Config["listeners"][number];

/** Says how a message names a listener: `--listen` or `listener NAME`. */
export type Where = (listener: ListenerConfig) => string;

/** Where a runtime's listeners run. */
export interface ListenerHost {
  /** Whether its listeners can terminate TLS (the deno engine's can). */
  readonly terminatesTls: boolean;
  /**
   * Binds every listener of `config` (throwing a {@linkcode StartError} that
   * names one that cannot be bound), then serves them on `pools`. Resolves
   * with the address of each, in order.
   */
  start(config: Config, pools: ReadonlyMap<string, Pool>, where: Where): Promise<string[]>;
  /**
   * A reload: binds the listeners `config` adds (throwing an Error whose
   * message is the reload's problem, and changing nothing), then switches
   * every listener to `config` and `pools`; listeners dropped drain for up
   * to `drainMs`. Resolves with the address of each listener it added.
   */
  reload(
    config: Config,
    pools: ReadonlyMap<string, Pool>,
    drainMs: number,
    where: Where,
  ): Promise<Map<string, string>>;
  /**
   * The main thread changed `pool`'s backends (health, admin): tell whoever
   * runs them; resolves once they all have it.
   */
  changed(pool: Pool): Promise<void>;
  /** Stops accepting everywhere. */
  stopAccepting(): Promise<void>;
  /** Drains for up to `drainMs`, then cuts what is left; resolves with how many were cut. */
  drain(drainMs: number): Promise<number>;
  /**
   * A rebalance of `pool`: every listener on it closes, oldest first, the
   * given share of its connections to each backend, at about `ratePerS` in
   * all. Resolves once every listener has its share to close.
   */
  recycle(
    pool: string,
    fractions: Readonly<Record<string, number>>,
    ratePerS: number,
  ): Promise<void>;
  /** Client connections in progress. */
  readonly activeConnections: number;
  /** Each listener, for the admin API. */
  listeners(): readonly ListenerStats[];
  /** The listeners running now, by {@linkcode listenerKey}: their addresses as the config writes them. */
  running(): readonly string[];
}

/** Options for {@linkcode Runtime}. */
export interface RuntimeOptions {
  flags: LoadBalancerFlags;
  plan: Plan;
  /** Where the listeners run; made from the access log's event sink. */
  host: (onEvent: (event: LoadBalancerEvent) => void) => ListenerHost;
  /** Which engine a listener runs on, for the dashboard. @default {"deno"} */
  engine?: (listener: ListenerConfig) => "epoll" | "deno";
  clock?: Clock;
}

/** A balancer process's listeners, pools and admin API. */
export class Runtime {
  readonly #flags: LoadBalancerFlags;
  readonly #host: ListenerHost;
  readonly #clock: Clock;
  readonly #accessLog: AccessLog;
  readonly #onEvent: (event: LoadBalancerEvent) => void;
  readonly #engine: (listener: ListenerConfig) => "epoll" | "deno";
  /** What the admin port's live page shows (with the admin API only). */
  #dashboard: Dashboard | undefined;
  #config: Config;
  #token: string | undefined;
  #pools = new Map<string, Pool>();
  #admin: AdminServer | undefined;
  #reloading: Promise<unknown> = Promise.resolve();
  /** The file's config as last loaded (or the flags'): run-time members are laid over it. */
  #file: Config;
  /** Backends from discovery and the admin API, by pool. */
  readonly #members = new Membership();
  /** The address each listener got, by name: a backend there would loop back. */
  readonly #bound = new Map<string, string>();
  /** Each pool's discovery, and the `discover:` block it was started from. */
  readonly #discoveries = new Map<string, { block: string; discovery: PoolDiscovery }>();
  /** Discovered sets waiting for their reload: each pool's set before them. */
  readonly #discoveryPending = new Map<string, readonly Discovered[] | undefined>();
  #stopping = false;
  /** Policy module errors, by pool, from every thread. */
  readonly #policyErrors = new Map<string, number>();
  /** Reloads done, and reloads that failed and changed nothing. */
  reloads = 0;
  reloadFailures = 0;

  constructor(options: RuntimeOptions) {
    this.#flags = options.flags;
    this.#clock = options.clock ?? realClock;
    this.#config = options.plan.config;
    this.#file = options.plan.config;
    this.#engine = options.engine ?? (() => "deno");
    this.#token = options.plan.token;
    this.#accessLog = options.plan.accessLog;
    const log = eventLogger(this.#accessLog);
    this.#onEvent = (event) => {
      log(event);
      if (event.type === "connection") {
        this.#dashboard?.ended(event.record.listener, event.record.end);
      } else if (event.type === "connect-error") {
        this.#dashboard?.connectError(event.backend, event.reason);
      } else if (event.type === "backend-state") {
        this.#dashboard?.note(
          "backend",
          `${event.backend} ${event.from} -> ${event.to}: ${event.why}`,
        );
      } else if (event.type === "rejected") {
        this.#dashboard?.note(
          "refused",
          `listener ${event.listener}: ${event.count} client(s), ${event.reason}: ${event.detail}`,
        );
      }
      if (event.type === "policy-error") {
        this.#policyErrors.set(event.pool, (this.#policyErrors.get(event.pool) ?? 0) + 1);
      }
      // Health decided here: whoever runs the listeners hears of it.
      if (event.type === "backend-state") {
        for (const pool of this.#pools.values()) {
          if (pool.backends.some((b) => b.name === event.backend)) void this.#host.changed(pool);
        }
      }
    };
    this.#host = options.host(this.#onEvent);
  }

  /** Client connections in progress, over every listener. */
  get activeConnections(): number {
    return this.#host.activeConnections;
  }

  /** The admin API's URL, when it is on. */
  get adminUrl(): string | undefined {
    return this.#admin && adminUrl(this.#admin);
  }

  /**
   * Binds every listener and the admin API, then starts serving. Nothing says
   * it is listening until everything is bound. @throws {StartError}
   */
  async start(): Promise<void> {
    const overlay = await this.#restoreState();
    this.#config = overlay.config;
    this.#pools = buildPools(this.#config, { clock: this.#clock, onEvent: this.#onEvent });
    this.#members.settle(this.#pools, overlay);
    this.#leftOut(overlay);
    if (this.#config.admin !== undefined) {
      const counts = () => ({ reloads: this.reloads, failures: this.reloadFailures });
      this.#dashboard = new Dashboard({
        listeners: () => this.#host.listeners(),
        pools: () => [...this.#pools.values()],
        describe: (name) => {
          const listener = this.#config.listeners.find((l) => l.name === name);
          const engine = listener === undefined ? "deno" : this.#engine(listener);
          return {
            ...(this.#bound.has(name) ? { address: this.#bound.get(name)! } : {}),
            engine,
            threads: engine === "epoll" ? this.#config.threads : 1,
          };
        },
      }, this.#clock);
      this.#dashboard.start();
      this.#admin = startAdmin(this.#config.admin.listen, {
        view: {
          listeners: () => this.#host.listeners(),
          pools: () => [...this.#pools.values()],
          discoveries: () => [...this.#discoveries.values()].map((d) => d.discovery),
          policyErrors: () => this.#policyErrors,
          get reloads() {
            return counts().reloads;
          },
          get reloadFailures() {
            return counts().failures;
          },
        },
        token: () => this.#token,
        audit: (message) => {
          logDiagnostic(message);
          this.#dashboard?.note("admin", message.replace(/^admin: /, ""));
        },
        reopenLogs: () => this.reopenLogs(),
        changeBackends: (pool, change) => this.changeBackends(pool, change),
        rebalance: (pool, ratePerS) => this.rebalance(pool, ratePerS),
        dashboard: { state: this.#dashboard, clock: this.#clock },
        changed: async (name) => {
          const pool = this.#pools.get(name);
          if (pool !== undefined) await this.#host.changed(pool);
          await this.#saveState();
        },
      });
    }
    let addresses: string[];
    try {
      addresses = await this.#host.start(this.#config, this.#pools, (l) => this.#where(l));
    } catch (error) {
      this.#dashboard?.stop();
      await this.#admin?.close();
      throw error;
    }
    this.#config.listeners.forEach((listener, i) => this.#ready(listener, addresses[i]!));
    for (const pool of this.#pools.values()) pool.start();
    this.#followDiscovery();
    if (this.#admin !== undefined) {
      logDiagnostic(
        `admin API on ${adminUrl(this.#admin)} ` +
          `(changes ${this.#token === undefined ? "refused: no token" : "need the token"})`,
      );
    }
  }

  #ready(listener: ListenerConfig, address: string): void {
    this.#bound.set(listener.name, address);
    const name = listenerPool(listener);
    const pool = this.#pools.get(name)!;
    const discover = this.#config.pools[name]?.discover;
    const learned = discover === undefined ? [] : [`more from ${discoverySource(discover)}`];
    const backends = [...pool.backends.map((b) => b.describe()), ...learned];
    logDiagnostic(`${READY}${address}; backends ${backends.join(", ") || "none"}`);
  }

  #where(listenerConfig: ListenerConfig): string {
    return this.#flags.config === undefined ? "--listen" : `listener ${listenerConfig.name}`;
  }

  /** Reopens the access log; returns what was reopened. */
  reopenLogs(): string {
    this.#accessLog.reopen();
    return this.#config.access_log ?? "(stdout)";
  }

  /**
   * Adds a backend to a pool or removes one (the admin API): applied as a
   * reload of the running configuration with the change laid over it, and
   * laid over the file at every reload after (and kept in the state file, if
   * any). Resolves with why it was refused (nothing changed), or undefined.
   */
  changeBackends(pool: string, change: BackendChange): Promise<string | undefined> {
    const run = this.#reloading.then(async () => {
      if (this.#stopping) return "the balancer is stopping";
      const undo = this.#members.snapshot();
      const refused = this.#members.change(this.#config, this.#file, pool, change, this.#bound);
      if (refused !== undefined) return refused;
      const problem = await this.#reload(`admin: pool ${pool}`, { reread: false });
      if (problem !== undefined) undo();
      else await this.#saveState();
      return problem;
    });
    this.#reloading = run.then(() => {}, () => {});
    return run;
  }

  /**
   * `POST /api/pools/{pool}/rebalance`: closes, oldest first, the
   * connections each backend holds beyond its weighted share, at about
   * `ratePerS`, so that their clients reconnect and spread out (rebalance.ts).
   * Resolves with the plan, or undefined when there is no such pool.
   */
  async rebalance(pool: string, ratePerS: number): Promise<RebalanceLine[] | undefined> {
    const running = this.#pools.get(pool);
    if (running === undefined) return undefined;
    const plan = rebalancePlan(running.backends);
    const fractions: Record<string, number> = {};
    for (const line of plan) {
      if (line.recycle > 0) fractions[line.address] = line.recycle / line.active;
    }
    if (Object.keys(fractions).length > 0) await this.#host.recycle(pool, fractions, ratePerS);
    return plan;
  }

  // The state file, if one is configured: what it kept is laid over the
  // file's config. One that cannot be read is said, and kept aside under
  // another name; one that cannot be written is said at once.
  async #restoreState(): Promise<Overlay> {
    const path = this.#config.state_file;
    const undo = this.#members.snapshot();
    if (path !== undefined) {
      try {
        const state = await readStateFile(path);
        if (state !== undefined) {
          this.#members.restore(state);
          logDiagnostic(`state file ${path}: restored`);
        }
      } catch (error) {
        const aside = `${path}.unreadable`;
        const kept = await Deno.rename(path, aside).then(
          () => `; kept aside as ${aside}`,
          () => "",
        );
        logDiagnostic(`${(error as Error).message}; starting without it${kept}`);
      }
    }
    let overlay: Overlay;
    try {
      overlay = this.#members.overlay(this.#file, this.#bound);
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      logDiagnostic(
        `state file ${path}: its changes do not fit the config (${error.problems[0]}); ` +
          `starting without them`,
      );
      undo();
      overlay = this.#members.overlay(this.#file, this.#bound);
    }
    if (path !== undefined) {
      const problem = await this.#writeState(new Map());
      if (problem !== undefined) {
        logDiagnostic(
          `state file ${path}: cannot write it (${problem}): admin API changes will not ` +
            `outlast a restart`,
        );
      }
    }
    return overlay;
  }

  // Says what of the run-time members had to be left out of the last overlay.
  #leftOut(overlay: Overlay): void {
    for (const [name, { discovery }] of this.#discoveries) {
      discovery.leaveOut(overlay.leftOut.get(name));
    }
    for (const line of overlay.adminLeftOut) logDiagnostic(`admin API change left out: ${line}`);
  }

  // Saves one at a time, in order: two admin changes at once must not
  // interleave their writes.
  #saving: Promise<void> = Promise.resolve();

  #saveState(): Promise<void> {
    this.#saving = this.#saving.then(async () => {
      const problem = await this.#writeState(this.#pools);
      if (problem !== undefined) {
        logDiagnostic(`state file ${this.#config.state_file}: cannot write it: ${problem}`);
      }
    });
    return this.#saving;
  }

  // Writes the state file, if there is one; resolves with why it could not.
  async #writeState(pools: ReadonlyMap<string, Pool>): Promise<string | undefined> {
    const path = this.#config.state_file;
    if (path === undefined) return undefined;
    try {
      await writeStateFile(path, this.#members.save(pools));
      return undefined;
    } catch (error) {
      return (error as Error).message;
    }
  }

  // Starts a discovery for each pool with a `discover:` block, restarts one
  // whose block changed, stops one whose block is gone.
  #followDiscovery(): void {
    const errors = new Map<string, number>();
    for (const [name, entry] of this.#discoveries) {
      const block = this.#config.pools[name]?.discover;
      if (block !== undefined && JSON.stringify(block) === entry.block) continue;
      this.#discoveries.delete(name);
      errors.set(name, entry.discovery.errors);
      void entry.discovery.stop();
      if (block === undefined) this.#members.discover(name, entry.discovery.source.kind, undefined);
    }
    if (this.#stopping) return;
    for (const [name, pool] of Object.entries(this.#config.pools)) {
      if (pool.discover === undefined || this.#discoveries.has(name)) continue;
      const discovery: PoolDiscovery = new PoolDiscovery({
        pool: name,
        source: createSource(pool.discover, this.#clock),
        onChange: (set) => this.#discovered(discovery, set),
        log: logDiagnostic,
        errors: errors.get(name) ?? 0,
      });
      this.#discoveries.set(name, { block: JSON.stringify(pool.discover), discovery });
      discovery.start();
    }
  }

  // A discovered set that differs from the last: one reload applies every
  // set that arrives before it runs. A set that cannot be applied is
  // rejected: the one before it stays.
  #discovered(discovery: PoolDiscovery, set: readonly Discovered[]): void {
    const pool = discovery.pool;
    if (this.#discoveries.get(pool)?.discovery !== discovery || this.#stopping) return;
    // A source started again (its block changed) may answer what is in effect already.
    const current = this.#members.discovered(pool);
    if (!this.#discoveryPending.has(pool) && JSON.stringify(current) === JSON.stringify(set)) {
      return;
    }
    const queued = this.#discoveryPending.size > 0;
    if (!this.#discoveryPending.has(pool)) {
      this.#discoveryPending.set(pool, this.#members.discovered(pool));
    }
    this.#members.discover(pool, discovery.source.kind, set);
    if (queued) return;
    this.#reloading = this.#reloading.then(async () => {
      const pending = new Map(this.#discoveryPending);
      this.#discoveryPending.clear();
      if (this.#stopping) return;
      const what = [...pending].map(([name, before]) =>
        describeChange(name, before, this.#members.discovered(name))
      );
      const problem = await this.#reload(`discovery: ${what.join("; ")}`, { reread: false });
      if (problem === undefined) return;
      for (const [name, before] of pending) {
        const entry = this.#discoveries.get(name);
        // A newer set came meanwhile: it gets its own reload; should that
        // fail too, the set to go back to is still this one's `before`.
        if (this.#discoveryPending.has(name)) {
          this.#discoveryPending.set(name, before);
          entry?.discovery.fail(`could not apply a set: ${problem}`);
          continue;
        }
        this.#members.discover(name, entry?.discovery.source.kind ?? "dns", before);
        entry?.discovery.reject(before, `could not apply it: ${problem}`);
      }
    }).catch((error) => logDiagnostic(`discovery: internal error: ${describe(error)}`));
  }

  /** Queues a reload after any in progress; never rejects. */
  requestReload(why: string): void {
    if (this.#stopping) return;
    this.#reloading = this.#reloading.then(() => this.#reload(why, { reread: true })).catch((
      error,
    ) => logDiagnostic(`reload (${why}) failed: internal error: ${describe(error)}`));
  }

  // Atomic: validate, prepare, bind new addresses, then switch; any failure
  // changes nothing, and is one line.
  async #reload(why: string, options: { reread: boolean }): Promise<string | undefined> {
    const failed = (problem: string, more = 0) => {
      this.reloadFailures++;
      this.#dashboard?.note(
        "reload",
        `${why}: failed, still running the previous config: ${problem}`,
      );
      logDiagnostic(
        `reload (${why}) failed, still running the previous config: ${problem}` +
          (more > 0 ? ` (and ${more} more)` : ""),
      );
      return problem;
    };
    const source = this.#flags.config ?? "command line";
    let plan: Plan;
    let file: Config;
    let overlay: Overlay;
    try {
      // A change of members (discovery, the admin API) reloads the config in
      // effect: an edit of the file waits for its own SIGHUP.
      file = options.reread ? await resolveConfig(this.#flags) : this.#file;
      overlay = this.#members.overlay(file, this.#bound);
      plan = await prepare(this.#flags, overlay.config, this.#accessLog);
    } catch (error) {
      if (error instanceof ConfigError) {
        return failed(`${source}: ${error.problems[0]}`, error.problems.length - 1);
      }
      return failed(`internal error: ${describe(error)}`);
    }
    // A new admin.listen waits for a restart: where the admin API is bound
    // now must not be left off loopback without a token either.
    const bound = this.#admin && formatHostPort(this.#admin.addr);
    const exposed = bound && adminExposure(bound, plan.token);
    if (exposed) return failed(`admin.listen ${bound}, bound until a restart: ${exposed}`);
    const next = plan.config;
    // TLS is a listener's socket, set up when it is bound: turning it on or
    // off for a running listener, or on at all in a process whose engine
    // cannot, waits for a restart.
    for (const [i, listener] of next.listeners.entries()) {
      const before = this.#config.listeners.find((l) => listenerKey(l) === listenerKey(listener));
      const tls = listener.tls !== undefined;
      if (tls && !this.#host.terminatesTls) {
        return failed(
          `listeners[${i}].tls: this process cannot terminate TLS; restart to apply it`,
        );
      }
      if (before !== undefined && (before.tls !== undefined) !== tls) {
        return failed(
          `listeners[${i}].tls: turning TLS ${tls ? "on" : "off"} for a running listener ` +
            `(${listener.listen}) needs a restart`,
        );
      }
    }
    // A new address that overlaps one still bound (127.0.0.1:5901 widened to
    // 0.0.0.0:5901) cannot be bound until the old socket closes.
    const running = this.#host.running();
    for (const listenerConfig of next.listeners) {
      if (running.includes(listenerKey(listenerConfig))) continue;
      const clash = running.find((address) =>
        !next.listeners.some((l) => listenerKey(l) === address) &&
        // A port-0 listener's key carries its name; it never overlaps anything.
        !address.includes("#") && socketsOverlap(address, listenerConfig.listen)
      );
      if (clash !== undefined) {
        return failed(
          `${this.#where(listenerConfig)} ${listenerConfig.listen} overlaps ${clash}, which ` +
            `stays bound until the reload is done: moving a listener to an overlapping address ` +
            `on the same port needs a restart (or use another port)`,
        );
      }
    }
    // New pools: backends that stay keep their object, health and counts.
    // Admin state survives a change of members, and with a state file, any reload.
    const pools = buildPools(next, {
      clock: this.#clock,
      onEvent: this.#onEvent,
      previous: this.#pools,
      keepAdmin: !options.reread || next.state_file !== undefined,
    });
    this.#members.settle(pools, overlay);
    const previous = this.#config;
    let added: Map<string, string>;
    try {
      added = await this.#host.reload(
        next,
        pools,
        previous.drain_timeout_ms,
        (l) => this.#where(l),
      );
    } catch (error) {
      return failed((error as Error).message);
    }
    const oldPools = this.#pools;
    this.#file = file;
    this.#config = next;
    this.#token = plan.token;
    this.#pools = pools;
    // Old pools stop checking; their waiting clients try again under the new ones.
    await Promise.all([...oldPools.values()].map((pool) => pool.stop()));
    for (const pool of this.#pools.values()) pool.start();
    this.#followDiscovery();
    this.#leftOut(overlay);
    for (const listener of next.listeners) {
      const address = added.get(listenerKey(listener));
      if (address !== undefined) this.#ready(listener, address);
    }
    this.reloads++;
    this.#dashboard?.note("reload", `${why}: ${summarize(next)}`);
    const restart = needsRestart(previous, next);
    logDiagnostic(
      `reloaded (${why}): ${summarize(next)}` +
        (restart.length > 0 ? `; not applied until a restart: ${restart.join(", ")}` : ""),
    );
    return undefined;
  }

  /**
   * Stops accepting everywhere, drains for up to the drain timeout, then cuts
   * what is left. Resolves with how many connections were cut.
   */
  async shutdown(signal: string): Promise<number> {
    this.#stopping = true;
    await this.#reloading;
    await Promise.all([...this.#discoveries.values()].map((d) => d.discovery.stop()));
    await this.#host.stopAccepting();
    const drainMs = this.#config.drain_timeout_ms;
    logDiagnostic(
      `${signal}: no longer accepting; draining ${this.activeConnections} connection(s), ` +
        `up to ${drainMs} ms`,
    );
    const cut = await this.#host.drain(drainMs);
    await Promise.all([...this.#pools.values()].map((pool) => pool.stop()));
    this.#dashboard?.stop();
    await this.#admin?.close();
    this.#accessLog.flush();
    logDiagnostic(`stopped; ${cut} connection(s) cut at the drain timeout`);
    return cut;
  }

  /** Writes what the access log holds, now (before an abrupt exit). */
  flush(): void {
    this.#accessLog.flush();
  }
}

/** Listeners run in this thread, on an engine. */
export class LocalListeners implements ListenerHost {
  readonly #engine: Engine;
  readonly #clock: Clock;
  readonly #onEvent: (event: LoadBalancerEvent) => void;
  /** Bind with SO_REUSEPORT (a `--workers` worker shares its port with its siblings). */
  readonly #reusePort: boolean;
  /** The listeners, by the address they listen on: a reload keeps every address it still lists. */
  readonly #running = new Map<string, LoadBalancer | UdpBalancer>();
  /** The listeners that terminate TLS, by key: a reload hands them a new certificate. */
  readonly #tls = new Map<string, TlsEngineListener>();
  /** Listeners a reload removed, still draining: a shutdown waits for them too. */
  readonly #retiring = new Set<LoadBalancer>();

  constructor(options: {
    engine: Engine;
    onEvent: (event: LoadBalancerEvent) => void;
    reusePort?: boolean;
    clock?: Clock;
  }) {
    this.#engine = options.engine;
    this.#onEvent = options.onEvent;
    this.#reusePort = options.reusePort ?? false;
    this.#clock = options.clock ?? realClock;
  }

  get activeConnections(): number {
    return [...this.#running.values(), ...this.#retiring].reduce(
      (sum, b) => sum + b.activeConnections,
      0,
    );
  }

  get terminatesTls(): boolean {
    return this.#engine.listenTls !== undefined;
  }

  listeners(): readonly ListenerStats[] {
    return [...this.#running.values()];
  }

  running(): readonly string[] {
    return [...this.#running.keys()];
  }

  recycle(pool: string, fractions: Readonly<Record<string, number>>, ratePerS: number) {
    const balancers = [...this.#running.values()].filter((b) => b.serves(pool));
    const rate = ratePerS / Math.max(1, balancers.length);
    for (const balancer of balancers) balancer.recycle(pool, fractions, rate);
    return Promise.resolve();
  }

  changed(): Promise<void> {
    // The pools are shared objects here: the listeners see every change at
    // once; only connections a pool no longer wants need closing.
    for (const balancer of this.#running.values()) balancer.closeUnwanted();
    return Promise.resolve();
  }

  async start(config: Config, pools: ReadonlyMap<string, Pool>, where: Where): Promise<string[]> {
    const sockets: (EngineListener | UdpBalancer)[] = [];
    try {
      for (const listener of config.listeners) {
        sockets.push(await this.#bind(listener, where, pools));
      }
    } catch (error) {
      for (const socket of sockets) closeQuietly(socket);
      throw error;
    }
    return sockets.map((socket, i) => this.#serve(socket, config.listeners[i]!, pools));
  }

  async reload(
    config: Config,
    pools: ReadonlyMap<string, Pool>,
    drainMs: number,
    where: Where,
  ): Promise<Map<string, string>> {
    // Read first: a file that cannot be read now fails the reload before
    // anything is bound or switched.
    const materials = new Map<string, TlsMaterial>();
    for (const listener of config.listeners) {
      if (listener.tls !== undefined && this.#tls.has(listenerKey(listener))) {
        materials.set(listenerKey(listener), readTls(listener.tls));
      }
    }
    const fresh = new Map<string, EngineListener | UdpBalancer>();
    for (const listener of config.listeners) {
      if (this.#running.has(listenerKey(listener))) continue;
      try {
        fresh.set(listenerKey(listener), await this.#bind(listener, where, pools));
      } catch (error) {
        for (const socket of fresh.values()) closeQuietly(socket);
        throw error;
      }
    }
    // A certificate that changed serves new clients from now on; connected ones keep theirs.
    for (const [key, material] of materials) this.#tls.get(key)!.setMaterial(material);
    const added = new Map<string, string>();
    for (const listener of config.listeners) {
      const balancer = this.#running.get(listenerKey(listener));
      if (balancer === undefined) {
        added.set(
          listenerKey(listener),
          this.#serve(fresh.get(listenerKey(listener))!, listener, pools),
        );
      } else if (balancer instanceof UdpBalancer) {
        balancer.reconfigure({
          pool: pools.get(listenerPool(listener))!,
          settings: udpSettingsOf(listener) ?? {},
        });
      } else {
        balancer.reconfigure({
          pool: pools.get(listenerPool(listener))!,
          maxConnections: listener.maxconn,
          ...this.#front(listener, pools, balancer.edge),
        });
        this.#gate(listener, balancer);
      }
    }
    for (const [address, balancer] of this.#running) {
      if (config.listeners.some((l) => listenerKey(l) === address)) continue;
      this.#running.delete(address);
      this.#tls.delete(address);
      if (balancer instanceof UdpBalancer) {
        // Its flows' replies leave through its socket, which would hold the
        // port for the whole drain: a removed UDP listener closes at once.
        balancer.shutdown(0).then(({ cut }) =>
          logDiagnostic(
            `stopped listening on ${UDP_SCHEME}${
              formatHostPort(balancer.address)
            }; ${cut} flow(s) ended with it`,
          )
        );
        continue;
      }
      this.#retiring.add(balancer);
      balancer.shutdown(drainMs).then(({ cut }) => {
        this.#retiring.delete(balancer);
        logDiagnostic(
          `stopped listening on ${
            formatHostPort(balancer.address)
          }; ${cut} connection(s) cut at the drain timeout`,
        );
      });
    }
    return added;
  }

  async stopAccepting(): Promise<void> {
    await Promise.all([...this.#running.values()].map((b) => b.stopAccepting()));
  }

  async drain(drainMs: number): Promise<number> {
    // Listeners a reload removed drain too, within this drain's time: a
    // shutdown never exits under their connections without a word for them.
    const all = [...this.#running.values(), ...this.#retiring];
    const results = await Promise.all(all.map((b) => b.shutdown(drainMs)));
    return results.reduce((sum, r) => sum + r.cut, 0);
  }

  // A listener's front door and the pools its routes may name; a reload
  // hands the running one over, for its per-source counts.
  #front(listener: ListenerConfig, pools: ReadonlyMap<string, Pool>, previous: Edge | undefined) {
    const settings = edgeSettingsOf(listener);
    return {
      routePools: pools,
      ...(settings ? { edge: new Edge(settings, this.#clock, previous) } : {}),
    };
  }

  async #bind(
    listener: ListenerConfig,
    where: Where,
    pools: ReadonlyMap<string, Pool>,
  ): Promise<EngineListener | UdpBalancer> {
    const { address } = parseListen(listener.listen);
    try {
      const udp = udpSettingsOf(listener);
      if (udp !== undefined) {
        // A UDP listener is its socket: it takes datagrams from the moment it is bound.
        return new UdpBalancer({
          name: listener.name,
          address,
          reusePort: this.#reusePort,
          engine: this.#engine,
          pool: pools.get(listenerPool(listener))!,
          settings: udp,
          clock: this.#clock,
          onEvent: this.#onEvent,
        });
      }
      if (listener.tls === undefined) {
        return this.#engine.listen(address, { reusePort: this.#reusePort });
      }
      if (this.#engine.listenTls === undefined) {
        throw new Error(`tls needs the deno engine, not ${this.#engine.name}`);
      }
      const tls = await this.#engine.listenTls(address, readTls(listener.tls));
      this.#tls.set(listenerKey(listener), tls);
      return tls;
    } catch (error) {
      throw new StartError(`${where(listener)} ${listener.listen}: ${describe(error)}`);
    }
  }

  // A TLS listener closes clients its ACLs refuse before their handshake;
  // only a PROXY header would change who the client is, and TLS listeners take none.
  #gate(listener: ListenerConfig, balancer: LoadBalancer): void {
    const edge = balancer.edge;
    const gate = edge === undefined ? undefined : (host: string) => edge.allows(host);
    this.#tls.get(listenerKey(listener))?.setGate(gate);
  }

  #serve(
    socket: EngineListener | UdpBalancer,
    listener: ListenerConfig,
    pools: ReadonlyMap<string, Pool>,
  ) {
    if (socket instanceof UdpBalancer) {
      this.#running.set(listenerKey(listener), socket);
      return `${UDP_SCHEME}${formatHostPort(socket.address)}`;
    }
    const balancer = new LoadBalancer({
      name: listener.name,
      listener: socket,
      engine: this.#engine,
      pool: pools.get(listenerPool(listener))!,
      maxConnections: listener.maxconn,
      ...this.#front(listener, pools, undefined),
      clock: this.#clock,
      onEvent: this.#onEvent,
    });
    this.#running.set(listenerKey(listener), balancer);
    this.#gate(listener, balancer);
    balancer.serve();
    return formatHostPort(balancer.address);
  }
}

/** A listener's certificate, key and ALPN list, read from its files (checked by the plan). */
function readTls(tls: NonNullable<ListenerConfig["tls"]>): TlsMaterial {
  return {
    cert: Deno.readTextFileSync(tls.cert),
    key: Deno.readTextFileSync(tls.key),
    alpn: tls.alpn,
  };
}

/** The source a pool's `discover:` block names. */
function createSource(
  discover: NonNullable<PoolConfig["discover"]>,
  clock: Clock,
): DiscoverySource {
  if (discover.etcd !== undefined) {
    return new EtcdSource({ endpoint: discover.etcd, prefix: discover.prefix! }, { clock });
  }
  return new DnsSource({
    name: discover.dns!,
    type: discover.type ?? "A",
    ...(discover.port === undefined ? {} : { port: discover.port }),
    ...(discover.resolver === undefined ? {} : { resolver: discover.resolver }),
    intervalMs: discover.interval_ms ?? DISCOVER_INTERVAL_MS,
  }, { clock });
}

// `pool web +127.0.0.1:5003 -127.0.0.1:5001`: what a discovered set changed.
function describeChange(
  pool: string,
  before: readonly Discovered[] | undefined,
  after: readonly Discovered[] | undefined,
): string {
  const had = new Set((before ?? []).map((b) => b.address));
  const has = new Set((after ?? []).map((b) => b.address));
  const changes = [
    ...[...has].filter((a) => !had.has(a)).map((a) => `+${a}`),
    ...[...had].filter((a) => !has.has(a)).map((a) => `-${a}`),
  ];
  return `pool ${pool} ${changes.length > 0 ? changes.join(" ") : "(weights or roles)"}`;
}
