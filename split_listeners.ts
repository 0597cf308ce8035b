/**
 * Listeners on two hosts at once: those that terminate TLS on the `deno`
 * engine in this thread, the others in the epoll engine's data-plane
 * threads. The runtime sees one host; each listener goes where it can run.
 *
 * @module
 */

import type { ListenerStats } from "./admin.ts";
import type { Config } from "./config.ts";
import type { Pool } from "./pool.ts";
import type { ListenerHost, Where } from "./runtime.ts";

/** Which listeners of a config run on the second host (`local`). */
export type Placement = (listener: Config["listeners"][number]) => boolean;

/** Two listener hosts as one: `local` takes the listeners `placement` picks. */
export class SplitListeners implements ListenerHost {
  readonly terminatesTls: boolean;
  readonly #main: ListenerHost;
  readonly #local: ListenerHost;
  readonly #placement: Placement;

  constructor(main: ListenerHost, local: ListenerHost, placement: Placement) {
    this.#main = main;
    this.#local = local;
    this.#placement = placement;
    this.terminatesTls = local.terminatesTls || main.terminatesTls;
  }

  get activeConnections(): number {
    return this.#main.activeConnections + this.#local.activeConnections;
  }

  async start(config: Config, pools: ReadonlyMap<string, Pool>, where: Where): Promise<string[]> {
    const [local, main] = this.#split(config);
    const localAddresses = await this.#local.start(local, pools, where);
    const mainAddresses = await this.#main.start(main, pools, where);
    // In the config's order.
    return config.listeners.map((listener) =>
      this.#placement(listener) ? localAddresses.shift()! : mainAddresses.shift()!
    );
  }

  /**
   * Each host binds what it adds before it switches; the local one (TLS:
   * certificates read, sockets bound) goes first, as the likelier to fail.
   */
  async reload(
    config: Config,
    pools: ReadonlyMap<string, Pool>,
    drainMs: number,
    where: Where,
  ): Promise<Map<string, string>> {
    const [local, main] = this.#split(config);
    const added = await this.#local.reload(local, pools, drainMs, where);
    for (const [key, address] of await this.#main.reload(main, pools, drainMs, where)) {
      added.set(key, address);
    }
    return added;
  }

  async recycle(
    pool: string,
    fractions: Readonly<Record<string, number>>,
    ratePerS: number,
  ): Promise<void> {
    // Each side closes its own connections, at half the pace.
    await Promise.all([
      this.#main.recycle(pool, fractions, ratePerS / 2),
      this.#local.recycle(pool, fractions, ratePerS / 2),
    ]);
  }

  async changed(pool: Pool): Promise<void> {
    await Promise.all([this.#main.changed(pool), this.#local.changed(pool)]);
  }

  async stopAccepting(): Promise<void> {
    await Promise.all([this.#main.stopAccepting(), this.#local.stopAccepting()]);
  }

  async drain(drainMs: number): Promise<number> {
    const [main, local] = await Promise.all([
      this.#main.drain(drainMs),
      this.#local.drain(drainMs),
    ]);
    return main + local;
  }

  listeners(): readonly ListenerStats[] {
    return [...this.#main.listeners(), ...this.#local.listeners()];
  }

  running(): readonly string[] {
    return [...this.#main.running(), ...this.#local.running()];
  }

  // The config each host is given: its own listeners, every pool.
  #split(config: Config): [Config, Config] {
    return [
      { ...config, listeners: config.listeners.filter((l) => this.#placement(l)) },
      { ...config, listeners: config.listeners.filter((l) => !this.#placement(l)) },
    ];
  }
}
