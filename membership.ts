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

import { formatHostPort, parseHostPort } from "./address.ts";
import type { BackendChange } from "./admin_pools.ts";
import { type Config, validateConfig } from "./config.ts";
import type { Discovered } from "./discovery.ts";
import type { Backend, BackendSource, Pool } from "./pool.ts";

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
   * Records an admin API change to `pool` of `config` (the one running);
   * returns why it cannot be made, or undefined.
   */
  change(config: Config, pool: string, change: BackendChange): string | undefined {
    if (!Object.hasOwn(config.pools, pool)) return `no pool ${JSON.stringify(pool)}`;
    const changes = this.#changes.get(pool) ?? { added: new Map(), removed: new Set<string>() };
    if ("add" in change) {
      changes.added.set(change.add.address, change.add);
      changes.removed.delete(change.add.address);
    } else {
      const known = config.pools[pool]!.backends.some((b) => b.address === change.remove);
      if (!known) return `pool ${pool} has no backend ${JSON.stringify(change.remove)}`;
      changes.added.delete(change.remove);
      changes.removed.add(change.remove);
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
  overlay(file: Config): Overlay {
    const sources = new Map<string, Map<string, BackendSource>>();
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
          source.set(key, discovered.kind);
          backends.push({ ...backend });
        }
      }
      const changes = this.#changes.get(name);
      const dropped = (address: string) =>
        changes !== undefined && (changes.removed.has(address) || changes.added.has(address));
      pool.backends = [
        ...backends.filter((b) => !dropped(b.address)),
        ...[...changes?.added.values() ?? []].map((b) => ({ ...b })),
      ] as typeof pool.backends;
      for (const address of changes?.added.keys() ?? []) source.set(keyOf(address), "admin");
    }
    const changed = this.#changes.size > 0 || this.#discovered.size > 0;
    return { config: changed ? validateConfig(raw) : file, sources };
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

function adminOf(backend: Backend): SavedAdmin | undefined {
  const state = backend.adminState === "enabled" ? undefined : backend.adminState;
  const weight = backend.adminWeight;
  if (state === undefined && weight === undefined) return undefined;
  return { ...(state ? { state } : {}), ...(weight === undefined ? {} : { weight }) };
}
