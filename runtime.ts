/**
 * The running balancer: its listeners, the pools they share, the admin API,
 * and what a reload, a log reopen and a shutdown do to them.
 *
 * `load_balancer.ts` plans (plan.ts), then hands the plan and an engine to a
 * {@linkcode Runtime}, and routes signals to it. Everything here reports on
 * stderr through log.ts and throws {@linkcode StartError} when a start
 * cannot go on.
 *
 * @module
 */

import { formatHostPort, parseHostPort } from "./address.ts";
import { adminUrl, startAdmin } from "./admin.ts";
import type { AdminServer } from "./admin_server.ts";
import { type Clock, realClock } from "./clock.ts";
import { type Config, ConfigError, socketsOverlap } from "./config.ts";
import type { Engine, EngineListener } from "./engine.ts";
import { closeQuietly, describe, StartError } from "./errors.ts";
import { READY } from "./events.ts";
import type { LoadBalancerFlags } from "./flags.ts";
import { type AccessLog, eventLogger, logDiagnostic } from "./log.ts";
import { buildPools, needsRestart, type Plan, prepare, resolveConfig, summarize } from "./plan.ts";
import type { Pool } from "./pool.ts";
import { LoadBalancer } from "./proxy.ts";

type ListenerConfig = Config["listeners"][number];

/** Options for {@linkcode Runtime}. */
export interface RuntimeOptions {
  flags: LoadBalancerFlags;
  plan: Plan;
  engine: Engine;
  clock?: Clock;
}

/** A balancer process's listeners, pools and admin API. */
export class Runtime {
  readonly #flags: LoadBalancerFlags;
  readonly #engine: Engine;
  readonly #clock: Clock;
  readonly #accessLog: AccessLog;
  readonly #onEvent: ReturnType<typeof eventLogger>;
  #config: Config;
  #token: string | undefined;
  #pools = new Map<string, Pool>();
  /** The listeners, by the address they listen on: a reload keeps every address it still lists. */
  readonly #running = new Map<string, LoadBalancer>();
  #admin: AdminServer | undefined;
  #reloading: Promise<void> = Promise.resolve();
  #stopping = false;
  /** Reloads done, and reloads that failed and changed nothing. */
  reloads = 0;
  reloadFailures = 0;

  constructor(options: RuntimeOptions) {
    this.#flags = options.flags;
    this.#engine = options.engine;
    this.#clock = options.clock ?? realClock;
    this.#config = options.plan.config;
    this.#token = options.plan.token;
    this.#accessLog = options.plan.accessLog;
    this.#onEvent = eventLogger(this.#accessLog);
  }

  /** Client connections in progress, over every listener. */
  get activeConnections(): number {
    return [...this.#running.values()].reduce((sum, b) => sum + b.activeConnections, 0);
  }

  /** Where each listener listens, in the config's order. */
  get addresses(): string[] {
    return [...this.#running.values()].map((b) => formatHostPort(b.address));
  }

  /** The admin API's URL, when it is on. */
  get adminUrl(): string | undefined {
    return this.#admin && adminUrl(this.#admin);
  }

  /**
   * Binds every listener and the admin API, then starts serving. Nothing says
   * it is listening until everything is bound. @throws {StartError}
   */
  start(): void {
    const sockets: EngineListener[] = [];
    try {
      for (const listenerConfig of this.#config.listeners) sockets.push(this.#bind(listenerConfig));
      if (this.#config.admin !== undefined) {
        const counts = () => ({ reloads: this.reloads, failures: this.reloadFailures });
        this.#admin = startAdmin(this.#config.admin.listen, {
          view: {
            listeners: () => [...this.#running.values()],
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
        });
      }
    } catch (error) {
      for (const socket of sockets) closeQuietly(socket);
      throw error;
    }
    this.#pools = buildPools(this.#config, { clock: this.#clock, onEvent: this.#onEvent });
    sockets.forEach((socket, index) => this.#serve(socket, this.#config.listeners[index]!));
    for (const pool of this.#pools.values()) pool.start();
    if (this.#admin !== undefined) {
      logDiagnostic(
        `admin API on ${adminUrl(this.#admin)} ` +
          `(changes ${this.#token === undefined ? "refused: no token" : "need the token"})`,
      );
    }
  }

  #bind(listenerConfig: ListenerConfig): EngineListener {
    try {
      return this.#engine.listen(parseHostPort(listenerConfig.listen, { allowPortZero: true }), {
        // A worker shares the port with its siblings; the supervisor has
        // already checked that no other program holds it.
        reusePort: this.#flags.asWorker,
      });
    } catch (error) {
      throw new StartError(
        `${this.#where(listenerConfig)} ${listenerConfig.listen}: ${describe(error)}`,
      );
    }
  }

  #where(listenerConfig: ListenerConfig): string {
    return this.#flags.config === undefined ? "--listen" : `listener ${listenerConfig.name}`;
  }

  #serve(socket: EngineListener, listenerConfig: ListenerConfig): void {
    const pool = this.#pools.get(listenerConfig.pool)!;
    const balancer = new LoadBalancer({
      name: listenerConfig.name,
      listener: socket,
      engine: this.#engine,
      pool,
      maxConnections: listenerConfig.maxconn,
      clock: this.#clock,
      onEvent: this.#onEvent,
    });
    this.#running.set(listenerConfig.listen, balancer);
    logDiagnostic(
      `${READY}${formatHostPort(balancer.address)}; backends ${
        pool.backends.map((b) => b.describe()).join(", ")
      }`,
    );
    balancer.serve();
  }

  /** Reopens the access log; returns what was reopened. */
  reopenLogs(): string {
    this.#accessLog.reopen();
    return this.#config.access_log ?? "(stdout)";
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
  async #reload(why: string): Promise<void> {
    const failed = (problem: string, more = 0) => {
      this.reloadFailures++;
      logDiagnostic(
        `reload (${why}) failed, still running the previous config: ${problem}` +
          (more > 0 ? ` (and ${more} more)` : ""),
      );
    };
    const source = this.#flags.config ?? "command line";
    let plan: Plan;
    try {
      plan = await prepare(this.#flags, await resolveConfig(this.#flags), this.#accessLog);
    } catch (error) {
      if (error instanceof ConfigError) {
        return failed(`${source}: ${error.problems[0]}`, error.problems.length - 1);
      }
      return failed(`internal error: ${describe(error)}`);
    }
    const next = plan.config;
    // A new address that overlaps one still bound (127.0.0.1:5901 widened to
    // 0.0.0.0:5901) cannot be bound until the old socket closes.
    for (const listenerConfig of next.listeners) {
      if (this.#running.has(listenerConfig.listen)) continue;
      const clash = [...this.#running.keys()].find((address) =>
        !next.listeners.some((l) => l.listen === address) &&
        socketsOverlap(address, listenerConfig.listen)
      );
      if (clash !== undefined) {
        return failed(
          `${this.#where(listenerConfig)} ${listenerConfig.listen} overlaps ${clash}, which ` +
            `stays bound until the reload is done: moving a listener to an overlapping address ` +
            `on the same port needs a restart (or use another port)`,
        );
      }
    }
    const fresh = new Map<string, EngineListener>();
    for (const listenerConfig of next.listeners) {
      if (this.#running.has(listenerConfig.listen)) continue;
      try {
        fresh.set(listenerConfig.listen, this.#bind(listenerConfig));
      } catch (error) {
        for (const socket of fresh.values()) closeQuietly(socket);
        return failed((error as Error).message);
      }
    }
    // Switch: new pools (backends that stay keep their object), then listeners.
    const previous = this.#config;
    const oldPools = this.#pools;
    this.#config = next;
    this.#token = plan.token;
    this.#pools = buildPools(next, {
      clock: this.#clock,
      onEvent: this.#onEvent,
      previous: oldPools,
    });
    for (const listenerConfig of next.listeners) {
      const balancer = this.#running.get(listenerConfig.listen);
      if (balancer === undefined) {
        this.#serve(fresh.get(listenerConfig.listen)!, listenerConfig);
      } else {
        balancer.reconfigure({
          pool: this.#pools.get(listenerConfig.pool)!,
          maxConnections: listenerConfig.maxconn,
        });
      }
    }
    // Old pools stop checking; their waiting clients try again under the new ones.
    await Promise.all([...oldPools.values()].map((pool) => pool.stop()));
    for (const pool of this.#pools.values()) pool.start();
    for (const [address, balancer] of this.#running) {
      if (next.listeners.some((l) => l.listen === address)) continue;
      this.#running.delete(address);
      balancer.shutdown(previous.drain_timeout_ms).then(({ cut }) =>
        logDiagnostic(
          `stopped listening on ${address}; ${cut} connection(s) cut at the drain timeout`,
        )
      );
    }
    this.reloads++;
    const restart = needsRestart(previous, next);
    logDiagnostic(
      `reloaded (${why}): ${summarize(next)}` +
        (restart.length > 0 ? `; not applied until a restart: ${restart.join(", ")}` : ""),
    );
  }

  /**
   * Stops accepting everywhere, drains for up to the drain timeout, then cuts
   * what is left. Resolves with how many connections were cut.
   */
  async shutdown(signal: string): Promise<number> {
    this.#stopping = true;
    await this.#reloading;
    const balancers = [...this.#running.values()];
    await Promise.all(balancers.map((b) => b.stopAccepting()));
    const drainMs = this.#config.drain_timeout_ms;
    logDiagnostic(
      `${signal}: no longer accepting; draining ${this.activeConnections} connection(s), ` +
        `up to ${drainMs} ms`,
    );
    const results = await Promise.all(balancers.map((b) => b.shutdown(drainMs)));
    await Promise.all([...this.#pools.values()].map((pool) => pool.stop()));
    await this.#admin?.close();
    this.#accessLog.flush();
    const cut = results.reduce((sum, r) => sum + r.cut, 0);
    logDiagnostic(`stopped; ${cut} connection(s) cut at the drain timeout`);
    return cut;
  }

  /** Writes what the access log holds, now (before an abrupt exit). */
  flush(): void {
    this.#accessLog.flush();
  }
}
