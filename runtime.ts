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

import { formatHostPort, parseHostPort } from "./address.ts";
import { adminUrl, type ListenerStats, startAdmin } from "./admin.ts";
import type { AdminServer } from "./admin_server.ts";
import { type Clock, realClock } from "./clock.ts";
import {
  type Config,
  ConfigError,
  listenerKey,
  listenerPool,
  socketsOverlap,
  validateConfig,
} from "./config.ts";
import type { BackendChange } from "./admin_pools.ts";
import { Edge } from "./edge.ts";
import type { Engine, EngineListener, TlsEngineListener, TlsMaterial } from "./engine.ts";
import { closeQuietly, describe, StartError } from "./errors.ts";
import { type LoadBalancerEvent, READY } from "./events.ts";
import type { LoadBalancerFlags } from "./flags.ts";
import { type AccessLog, eventLogger, logDiagnostic } from "./log.ts";
import {
  adminExposure,
  buildPools,
  edgeSettingsOf,
  needsRestart,
  type Plan,
  prepare,
  resolveConfig,
  summarize,
} from "./plan.ts";
import type { Pool } from "./pool.ts";
import { LoadBalancer } from "./proxy.ts";

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
  clock?: Clock;
}

/** A balancer process's listeners, pools and admin API. */
export class Runtime {
  readonly #flags: LoadBalancerFlags;
  readonly #host: ListenerHost;
  readonly #clock: Clock;
  readonly #accessLog: AccessLog;
  readonly #onEvent: (event: LoadBalancerEvent) => void;
  #config: Config;
  #token: string | undefined;
  #pools = new Map<string, Pool>();
  #admin: AdminServer | undefined;
  #reloading: Promise<unknown> = Promise.resolve();
  /** Backends added and removed through the admin API, by pool. */
  readonly #changes = new Map<
    string,
    {
      added: Map<string, { address: string; weight?: number; backup?: boolean }>;
      removed: Set<string>;
    }
  >();
  #stopping = false;
  /** Reloads done, and reloads that failed and changed nothing. */
  reloads = 0;
  reloadFailures = 0;

  constructor(options: RuntimeOptions) {
    this.#flags = options.flags;
    this.#clock = options.clock ?? realClock;
    this.#config = options.plan.config;
    this.#token = options.plan.token;
    this.#accessLog = options.plan.accessLog;
    const log = eventLogger(this.#accessLog);
    this.#onEvent = (event) => {
      log(event);
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
    this.#pools = buildPools(this.#config, { clock: this.#clock, onEvent: this.#onEvent });
    if (this.#config.admin !== undefined) {
      const counts = () => ({ reloads: this.reloads, failures: this.reloadFailures });
      this.#admin = startAdmin(this.#config.admin.listen, {
        view: {
          listeners: () => this.#host.listeners(),
          pools: () => [...this.#pools.values()],
          get reloads() {
            return counts().reloads;
          },
          get reloadFailures() {
            return counts().failures;
          },
        },
        token: () => this.#token,
        audit: logDiagnostic,
        reopenLogs: () => this.reopenLogs(),
        changeBackends: (pool, change) => this.changeBackends(pool, change),
        changed: async (name) => {
          const pool = this.#pools.get(name);
          if (pool !== undefined) await this.#host.changed(pool);
        },
      });
    }
    let addresses: string[];
    try {
      addresses = await this.#host.start(this.#config, this.#pools, (l) => this.#where(l));
    } catch (error) {
      await this.#admin?.close();
      throw error;
    }
    this.#config.listeners.forEach((listener, i) => this.#ready(listener, addresses[i]!));
    for (const pool of this.#pools.values()) pool.start();
    if (this.#admin !== undefined) {
      logDiagnostic(
        `admin API on ${adminUrl(this.#admin)} ` +
          `(changes ${this.#token === undefined ? "refused: no token" : "need the token"})`,
      );
    }
  }

  #ready(listener: ListenerConfig, address: string): void {
    const pool = this.#pools.get(listenerPool(listener))!;
    logDiagnostic(
      `${READY}${address}; backends ${pool.backends.map((b) => b.describe()).join(", ")}`,
    );
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
   * laid over the file at every reload after, until the process ends.
   * Resolves with why it was refused (nothing changed), or undefined.
   */
  changeBackends(pool: string, change: BackendChange): Promise<string | undefined> {
    const run = this.#reloading.then(async () => {
      if (this.#stopping) return "the balancer is stopping";
      if (!Object.hasOwn(this.#config.pools, pool)) return `no pool ${JSON.stringify(pool)}`;
      const before = new Map(
        [...this.#changes].map((
          [name, c],
        ) => [name, { added: new Map(c.added), removed: new Set(c.removed) }]),
      );
      const changes = this.#changes.get(pool) ?? { added: new Map(), removed: new Set<string>() };
      this.#changes.set(pool, changes);
      if ("add" in change) {
        changes.added.set(change.add.address, change.add);
        changes.removed.delete(change.add.address);
      } else {
        const known = this.#config.pools[pool]!.backends.some((b) => b.address === change.remove);
        if (!known) return `pool ${pool} has no backend ${JSON.stringify(change.remove)}`;
        changes.added.delete(change.remove);
        changes.removed.add(change.remove);
      }
      const problem = await this.#reload(`admin: pool ${pool}`);
      if (problem !== undefined) {
        this.#changes.clear();
        for (const [name, c] of before) this.#changes.set(name, c);
      }
      return problem;
    });
    this.#reloading = run.then(() => {}, () => {});
    return run;
  }

  // The file's config with the admin API's changes laid over it, validated
  // again: an added address is checked like one in the file.
  #withChanges(file: Config): Config {
    if (this.#changes.size === 0) return file;
    const raw = structuredClone(file) as Config;
    for (const [name, changes] of this.#changes) {
      const pool = raw.pools[name];
      if (pool === undefined) continue;
      const kept = pool.backends.filter((b) =>
        !changes.removed.has(b.address) && !changes.added.has(b.address)
      );
      pool.backends = [
        ...kept,
        ...[...changes.added.values()].map((b) => ({ ...b })),
      ] as typeof pool.backends;
    }
    return validateConfig(raw);
  }

  /** Queues a reload after any in progress; never rejects. */
  requestReload(why: string): void {
    if (this.#stopping) return;
    this.#reloading = this.#reloading.then(() => this.#reload(why)).catch((error) =>
      logDiagnostic(`reload (${why}) failed: internal error: ${describe(error)}`)
    );
  }

  // Atomic: validate, prepare, bind new addresses, then switch; any failure
  // changes nothing, and is one line.
  async #reload(why: string): Promise<string | undefined> {
    const failed = (problem: string, more = 0) => {
      this.reloadFailures++;
      logDiagnostic(
        `reload (${why}) failed, still running the previous config: ${problem}` +
          (more > 0 ? ` (and ${more} more)` : ""),
      );
      return problem;
    };
    const source = this.#flags.config ?? "command line";
    let plan: Plan;
    try {
      const file = await resolveConfig(this.#flags);
      plan = await prepare(this.#flags, this.#withChanges(file), this.#accessLog);
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
    const pools = buildPools(next, {
      clock: this.#clock,
      onEvent: this.#onEvent,
      previous: this.#pools,
    });
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
    this.#config = next;
    this.#token = plan.token;
    this.#pools = pools;
    // Old pools stop checking; their waiting clients try again under the new ones.
    await Promise.all([...oldPools.values()].map((pool) => pool.stop()));
    for (const pool of this.#pools.values()) pool.start();
    for (const listener of next.listeners) {
      const address = added.get(listenerKey(listener));
      if (address !== undefined) this.#ready(listener, address);
    }
    this.reloads++;
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
    await this.#host.stopAccepting();
    const drainMs = this.#config.drain_timeout_ms;
    logDiagnostic(
      `${signal}: no longer accepting; draining ${this.activeConnections} connection(s), ` +
        `up to ${drainMs} ms`,
    );
    const cut = await this.#host.drain(drainMs);
    await Promise.all([...this.#pools.values()].map((pool) => pool.stop()));
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
  readonly #running = new Map<string, LoadBalancer>();
  /** The listeners that terminate TLS, by key: a reload hands them a new certificate. */
  readonly #tls = new Map<string, TlsEngineListener>();

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
    return [...this.#running.values()].reduce((sum, b) => sum + b.activeConnections, 0);
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

  changed(): Promise<void> {
    // The pools are shared objects here: the listeners see every change at once.
    return Promise.resolve();
  }

  async start(config: Config, pools: ReadonlyMap<string, Pool>, where: Where): Promise<string[]> {
    const sockets: EngineListener[] = [];
    try {
      for (const listener of config.listeners) sockets.push(await this.#bind(listener, where));
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
    const fresh = new Map<string, EngineListener>();
    for (const listener of config.listeners) {
      if (this.#running.has(listenerKey(listener))) continue;
      try {
        fresh.set(listenerKey(listener), await this.#bind(listener, where));
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
      balancer.shutdown(drainMs).then(({ cut }) =>
        logDiagnostic(
          `stopped listening on ${
            formatHostPort(balancer.address)
          }; ${cut} connection(s) cut at the drain timeout`,
        )
      );
    }
    return added;
  }

  async stopAccepting(): Promise<void> {
    await Promise.all([...this.#running.values()].map((b) => b.stopAccepting()));
  }

  async drain(drainMs: number): Promise<number> {
    const results = await Promise.all([...this.#running.values()].map((b) => b.shutdown(drainMs)));
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

  async #bind(listener: ListenerConfig, where: Where): Promise<EngineListener> {
    const address = parseHostPort(listener.listen, { allowPortZero: true });
    try {
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

  #serve(socket: EngineListener, listener: ListenerConfig, pools: ReadonlyMap<string, Pool>) {
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
