/**
 * Which backends each pool has beyond the file's: those discovery found
 * (discovery.ts) and those the admin API added or removed (admin_pools.ts),
 * laid over the file's config at every reload — and what of it a state file
 * keeps across a restart (`state_file:`).
 *
 * The order of precedence, per address: the admin API's change, then the
 * file, then discovery. A backend's `source` says which one it came from.
 *
 * @module
 */

import { formatHostPort, isIpLiteral, parseHostPort, UDP_SCHEME } from "./address.ts";
import { checkBackend, type Config, loopsBack, validateConfig } from "./config.ts";
import type { Discovered } from "./discovery.ts";
import type { Backend, BackendSource, Pool } from "./pool.ts";

/** One change through the admin API: a backend to add, or the address of one to remove. */
export type BackendChange =
  | {
    readonly add: { readonly address: string; readonly weight?: number; readonly backup?: boolean };
  }
  | { readonly remove: string };

/** A backend the admin API added. */
export interface AddedBackend {
  readonly address: string;
  readonly weight?: number;
  readonly backup?: boolean;
}

interface PoolChanges {
  added: Map<string, AddedBackend>;
  removed: Set<string>;
}

/** An admin state kept in the state file: drained or disabled, and a weight set by hand. */
export interface SavedAdmin {
  readonly state?: "draining" | "disabled";
  readonly weight?: number;
}

/** What the state file holds (version 1). */
export interface SavedState {
  readonly version: 1;
  readonly pools: Record<string, {
    readonly added?: readonly AddedBackend[];
    readonly removed?: readonly string[];
    readonly admin?: Record<string, SavedAdmin>;
  }>;
}

/** The config with every pool's members in effect, and where each came from. */
export interface Overlay {
  readonly config: Config;
  /** By pool, then backend name (`HOST:PORT` as logs write it). */
  readonly sources: ReadonlyMap<string, ReadonlyMap<string, BackendSource>>;
  /**
   * By pool: the first discovered backend that was left out, and why (a
   * pool with none left out is not listed).
   */
  readonly leftOut: ReadonlyMap<string, string>;
  /** Backends the admin API added (a state file's) that no longer fit, and why. */
  readonly adminLeftOut: readonly string[];
}

/** The run-time members of every pool. */
export class Membership {
  readonly #changes = new Map<string, PoolChanges>();
  readonly #discovered = new Map<string, { kind: "dns" | "etcd"; set: readonly Discovered[] }>();
  // Admin states read from the state file, for backends not seen since.
  readonly #saved = new Map<string, Map<string, SavedAdmin>>();

  /** A copy of the admin API's changes, to put back when a change fails. */
  snapshot(): () => void {
    const copy = new Map(
      [...this.#changes].map(([name, c]) => [name, {
        added: new Map(c.added),
        removed: new Set(c.removed),
      }]),
    );
    return () => {
      this.#changes.clear();
      for (const [name, c] of copy) this.#changes.set(name, c);
    };
  }

  /**
   * Records an admin API change to `pool` of `running` (the config in
   * effect), laid over `file`; returns why it cannot be made, or undefined.
   *
   * A removal of a backend the file or discovery gives holds until an add
   * of the same address with nothing but the address, which hands it back
   * to its source; an add with a weight or role is the admin API's own.
   */
  change(
    running: Config,
    file: Config,
    pool: string,
    change: BackendChange,
    bound: ReadonlyMap<string, string> = new Map(),
  ): string | undefined {
    if (!Object.hasOwn(running.pools, pool)) return `no pool ${JSON.stringify(pool)}`;
    const changes = this.#changes.get(pool) ?? { added: new Map(), removed: new Set<string>() };
    const underneath = (address: string) =>
      file.pools[pool]?.backends.some((b) => b.address === address) === true ||
      (file.pools[pool]?.discover !== undefined &&
        this.discovered(pool)?.some((b) => b.address === address) === true);
    if ("add" in change) {
      const { address } = change.add;
      const problem = unusable(running, pool, change.add, bound);
      if (problem !== undefined) return problem;
      const own = change.add.weight !== undefined || change.add.backup !== undefined;
      if (changes.removed.delete(address) && underneath(address) && !own) {
        changes.added.delete(address);
      } else {
        changes.added.set(address, change.add);
      }
    } else {
      const address = change.remove;
      const known = running.pools[pool]!.backends.some((b) => b.address === address);
      if (!known) return `pool ${pool} has no backend ${JSON.stringify(address)}`;
      changes.added.delete(address);
      if (underneath(address)) changes.removed.add(address);
    }
    this.#changes.set(pool, changes);
    return undefined;
  }

  /** The set discovery gives `pool` now; undefined forgets it. */
  discover(pool: string, kind: "dns" | "etcd", set: readonly Discovered[] | undefined): void {
    if (set === undefined) this.#discovered.delete(pool);
    else this.#discovered.set(pool, { kind, set });
  }

  /** The set in effect for `pool`, as last given to {@linkcode discover}. */
  discovered(pool: string): readonly Discovered[] | undefined {
    return this.#discovered.get(pool)?.set;
  }

  /**
   * `file` with every pool's members in effect: its own backends, then the
   * discovered ones it does not list (for a pool with `discover:`), with the
   * admin API's removals and additions applied last. Checked again as a file
   * would be. @throws {ConfigError}
   */
  overlay(file: Config, bound: ReadonlyMap<string, string> = new Map()): Overlay {
    const sources = new Map<string, Map<string, BackendSource>>();
    const leftOut = new Map<string, string>();
    const adminLeftOut: string[] = [];
    const raw = structuredClone(file) as Config;
    for (const [name, pool] of Object.entries(raw.pools)) {
      const source = new Map<string, BackendSource>();
      sources.set(name, source);
      const keyOf = (address: string) => {
        try {
          return formatHostPort(parseHostPort(address));
        } catch {
          return address; // the config check names it
        }
      };
      const backends = [...pool.backends];
      for (const backend of backends) source.set(keyOf(backend.address), "config");
      const discovered = this.#discovered.get(name);
      if (pool.discover !== undefined && discovered !== undefined) {
        for (const backend of discovered.set) {
          const key = keyOf(backend.address);
          if (source.has(key)) continue;
          const problem = unusable(file, name, backend, bound);
          if (problem !== undefined) {
            if (!leftOut.has(name)) leftOut.set(name, problem);
            continue;
          }
          source.set(key, discovered.kind);
          backends.push({ ...backend });
        }
      }
      const changes = this.#changes.get(name);
      const dropped = (address: string) =>
        changes !== undefined && (changes.removed.has(address) || changes.added.has(address));
      // A state file's add that no longer fits (the file changed) is left out too.
      const added = [...changes?.added.values() ?? []].filter((b) => {
        const problem = unusable(file, name, b, bound);
        if (problem !== undefined) adminLeftOut.push(`pool ${name}: ${problem}`);
        return problem === undefined;
      });
      pool.backends = [
        ...backends.filter((b) => !dropped(b.address)),
        ...added.map((b) => ({ ...b })),
      ] as typeof pool.backends;
      for (const b of added) source.set(keyOf(b.address), "admin");
    }
    const changed = this.#changes.size > 0 || this.#discovered.size > 0;
    return { config: changed ? validateConfig(raw) : file, sources, leftOut, adminLeftOut };
  }

  /**
   * Marks each backend of `pools` with its source, and hands a backend first
   * seen since the state file was read the admin state saved for it.
   */
  settle(pools: ReadonlyMap<string, Pool>, overlay: Overlay): void {
    for (const pool of pools.values()) {
      const saved = this.#saved.get(pool.name);
      for (const backend of pool.backends) {
        backend.source = overlay.sources.get(pool.name)?.get(backend.name) ?? "config";
        const admin = saved?.get(backend.name);
        if (admin === undefined) continue;
        saved!.delete(backend.name);
        if (admin.state !== undefined) backend.adminState = admin.state;
        if (admin.weight !== undefined) {
          backend.adminWeight = admin.weight;
          backend.configuredWeight = admin.weight;
        }
      }
    }
  }

  /** What a state file keeps of `pools` and the admin API's changes. */
  save(pools: ReadonlyMap<string, Pool>): SavedState {
    const saved: Record<string, SavedState["pools"][string]> = {};
    const names = new Set([...this.#changes.keys(), ...pools.keys(), ...this.#saved.keys()]);
    for (const name of [...names].sort()) {
      const changes = this.#changes.get(name);
      const admin: Record<string, SavedAdmin> = {};
      for (const [address, state] of this.#saved.get(name) ?? []) admin[address] = state;
      for (const backend of pools.get(name)?.backends ?? []) {
        const state = adminOf(backend);
        if (state !== undefined) admin[backend.name] = state;
      }
      const entry = {
        ...(changes && changes.added.size > 0 ? { added: [...changes.added.values()] } : {}),
        ...(changes && changes.removed.size > 0 ? { removed: [...changes.removed] } : {}),
        ...(Object.keys(admin).length > 0 ? { admin } : {}),
      };
      if (Object.keys(entry).length > 0) saved[name] = entry;
    }
    return { version: 1, pools: saved };
  }

  /** Takes what a state file kept (before the first {@linkcode overlay}). */
  restore(state: SavedState): void {
    for (const [name, pool] of Object.entries(state.pools)) {
      const changes: PoolChanges = { added: new Map(), removed: new Set() };
      for (const added of pool.added ?? []) changes.added.set(added.address, added);
      for (const removed of pool.removed ?? []) changes.removed.add(removed);
      if (changes.added.size > 0 || changes.removed.size > 0) this.#changes.set(name, changes);
      const admin = Object.entries(pool.admin ?? {});
      if (admin.length > 0) this.#saved.set(name, new Map(admin));
    }
  }
}

/**
 * Why a backend learned at run time may not join `pool` of `config`: what a
 * file's backend would be refused for, or undefined. Named by its address,
 * not by a place in the file it is not in. `bound` has the address each
 * listener got, by name (a listener on port 0 has its port only then).
 */
function unusable(
  config: Config,
  pool: string,
  backend: { address: string; weight?: number; backup?: boolean },
  bound: ReadonlyMap<string, string>,
): string | undefined {
  const checked = checkBackend(backend);
  if ("problem" in checked) return `${JSON.stringify(backend.address)}: ${checked.problem}`;
  for (const listener of config.listeners) {
    const uses = listener.pool === pool || listener.routes.some((r) => r.pool === pool);
    const listen = bound.get(listener.name) ?? listener.listen;
    if (uses && loopsBack(listen, backend.address)) {
      return `${backend.address}: listener ${listener.name}'s own address (${listen}): ` +
        `every connection would loop back into the balancer`;
    }
    // A UDP flow's replies are matched by the address they come from.
    if (uses && listener.listen.startsWith(UDP_SCHEME)) {
      const host = parseHostPort(backend.address).hostname;
      if (!isIpLiteral(host)) {
        return `${JSON.stringify(backend.address)}: a UDP backend needs an IP address ` +
          `(pool ${pool} serves UDP listener ${listener.name})`;
      }
    }
  }
  return undefined;
}

function adminOf(backend: Backend): SavedAdmin | undefined {
  const state = backend.adminState === "enabled" ? undefined : backend.adminState;
  const weight = backend.adminWeight;
  if (state === undefined && weight === undefined) return undefined;
  return { ...(state ? { state } : {}), ...(weight === undefined ? {} : { weight }) };
}
