/**
 * Per-source limits (`per_source:` of a listener): how many connections one
 * client may hold at once, and how fast it may open new ones (a token
 * bucket). A client is its IPv4 address, or its IPv6 /`ipv6Prefix` network
 * ({@linkcode sourceKey}), so a host cannot escape by hopping across the
 * 2^64 addresses of its subnet.
 *
 * The table is bounded: a flood of distinct sources costs at most
 * `tableSize` entries, never memory without end. Everything is computed when
 * asked, from the injected clock: no timers.
 *
 * @module
 */

import { parseCidr, sourceKey } from "./cidr.ts";
import { type Clock, realClock } from "./clock.ts";

/** The `per_source:` settings of a listener. */
export interface SourceLimitSettings {
  /** Connections one source may hold open at once. @default {undefined} no limit */
  maxconn?: number;
  /** New connections per second one source may open, on average. @default {undefined} no limit */
  ratePerS?: number;
  /**
   * New connections one source may open at once after being quiet: the
   * bucket's size. Only with `ratePerS`. @default {max(1, ratePerS)}
   */
  burst?: number;
  /** IPv6 sources are counted per network of this prefix length (0-128), e.g. 64. */
  ipv6Prefix: number;
  /** Most sources remembered at once, e.g. 65536. */
  tableSize: number;
}

/** What {@linkcode SourceLimits.admit} decided: the reason names match the rejection reasons logged. */
export type AdmitOutcome = "ok" | "per-source-maxconn" | "per-source-rate";

/** Options for {@linkcode SourceLimits}. */
export interface SourceLimitsOptions {
  /** The clock buckets refill on. @default {realClock} */
  clock?: Clock;
}

/** Settings checked, with defaults filled in. */
interface Limits {
  readonly maxconn: number;
  readonly ratePerS: number | undefined;
  readonly burst: number;
  readonly ipv6Prefix: number;
  readonly tableSize: number;
}

/** One source's entry in the table. */
interface Source {
  /** Connections admitted and not yet released. */
  active: number;
  /** Tokens in the bucket at `refilledAtMs`; a connection takes one. */
  tokens: number;
  refilledAtMs: number;
}

/**
 * Admits or refuses each new connection by its source, and counts it until
 * released. Every call is O(1).
 *
 * The table keeps at most `tableSize` sources. When a new one arrives at a
 * full table, the least recently seen source is forgotten, but never one
 * with open connections while an idle one can go. Forgetting an idle source
 * forgets its bucket: it comes back with a full burst. If every source holds
 * connections, the least recently seen goes anyway, and that costs its
 * count: it restarts at zero, so that source may open up to `maxconn` more
 * while its old connections last, and their releases (which find no entry,
 * or the new one, and never take it below zero) may leave it undercounted
 * until they end. A table that full is under attack by more sources than it
 * was sized for; staying bounded matters more there than exactness.
 *
 * "Seen" means asked about: {@linkcode SourceLimits.admit}, whatever it
 * answers, and {@linkcode SourceLimits.release}.
 */
export class SourceLimits {
  // Two maps, each in least-recently-seen-first order (a touch deletes and
  // re-sets), so the eviction victim is always the first key of one of them.
  // Invariant: a source is in `#busy` exactly when its `active` is above 0.
  #idle = new Map<string, Source>();
  #busy = new Map<string, Source>();
  #limits: Limits;
  readonly #clock: Clock;

  /** @throws {RangeError} naming the bad setting and its value */
  constructor(settings: SourceLimitSettings, options: SourceLimitsOptions = {}) {
    this.#limits = checkSettings(settings);
    this.#clock = options.clock ?? realClock;
  }

  /** Sources in the table now. */
  get size(): number {
    return this.#idle.size + this.#busy.size;
  }

  /**
   * Decides on a new connection from `address` (a client address as
   * {@linkcode sourceKey} reads it). On `"ok"` the source holds one more
   * connection and its bucket one token less; call
   * {@linkcode SourceLimits.release} when that connection ends. A refusal
   * changes nothing but the source's last-seen time: a client refused for
   * its rate does not push its own next chance further away.
   */
  admit(address: string): AdmitOutcome {
    const limits = this.#limits;
    const key = sourceKey(address, limits.ipv6Prefix);
    const now = this.#clock.now();
    let source = this.#take(key);
    if (source === undefined) {
      // A new source is always admitted (maxconn and burst are at least 1).
      this.#evictDownTo(limits.tableSize - 1);
      source = { active: 0, tokens: limits.burst, refilledAtMs: now };
    }
    const outcome = this.#decide(source, now);
    this.#put(key, source);
    return outcome;
  }

  /**
   * One connection from `address` ended. A source the table forgot meanwhile
   * is not brought back, and a count never goes below zero.
   */
  release(address: string): void {
    const key = sourceKey(address, this.#limits.ipv6Prefix);
    const source = this.#take(key);
    if (source === undefined) return;
    if (source.active > 0) source.active--;
    this.#put(key, source);
  }

  /** Connections `address`'s source holds now (0 when unknown); not a touch. */
  activeConnections(address: string): number {
    const key = sourceKey(address, this.#limits.ipv6Prefix);
    return this.#busy.get(key)?.active ?? 0;
  }

  /** Whether the table remembers `address`'s source now; not a touch. */
  tracks(address: string): boolean {
    const key = sourceKey(address, this.#limits.ipv6Prefix);
    return this.#busy.has(key) || this.#idle.has(key);
  }

  /**
   * Applies new settings (a reload) and keeps what the table knows: counts
   * stay; buckets are filled up to now at the old rate, then held to the new
   * burst (full, where there was no rate before); a smaller table forgets
   * sources by the usual rule. A shorter `ipv6Prefix` merges the IPv6
   * entries into their wider networks (counts added, the emptier bucket
   * kept); a longer one cannot split them, so IPv6 entries are forgotten,
   * with the cost told in the class comment. O(table size), once per reload.
   *
   * @throws {RangeError} naming the bad setting; the old settings then stay
   */
  reconfigure(settings: SourceLimitSettings): void {
    const next = checkSettings(settings);
    const previous = this.#limits;
    const now = this.#clock.now();
    for (const source of [...this.#idle.values(), ...this.#busy.values()]) {
      const tokens = previous.ratePerS === undefined
        ? next.burst
        : available(source, now, previous);
      source.tokens = Math.min(next.burst, tokens);
      source.refilledAtMs = now;
    }
    if (next.ipv6Prefix !== previous.ipv6Prefix) this.#rekey(previous.ipv6Prefix, next.ipv6Prefix);
    this.#limits = next;
    this.#evictDownTo(next.tableSize);
  }

  /** Admits (counting and taking a token) or names the limit that refuses. */
  #decide(source: Source, now: number): AdmitOutcome {
    const limits = this.#limits;
    if (source.active >= limits.maxconn) return "per-source-maxconn";
    if (limits.ratePerS !== undefined) {
      const tokens = available(source, now, limits);
      if (tokens < 1) return "per-source-rate";
      source.tokens = tokens - 1;
      source.refilledAtMs = now;
    }
    source.active++;
    return "ok";
  }

  /** Removes and returns `key`'s entry; {@linkcode SourceLimits.#put} puts it back as most recent. */
  #take(key: string): Source | undefined {
    const busy = this.#busy.get(key);
    if (busy !== undefined) {
      this.#busy.delete(key);
      return busy;
    }
    const idle = this.#idle.get(key);
    if (idle !== undefined) this.#idle.delete(key);
    return idle;
  }

  #put(key: string, source: Source): void {
    (source.active > 0 ? this.#busy : this.#idle).set(key, source);
  }

  /** Forgets least recently seen sources, idle ones first, until at most `limit` remain. */
  #evictDownTo(limit: number): void {
    while (this.size > limit) {
      const victims = this.#idle.size > 0 ? this.#idle : this.#busy;
      victims.delete(victims.keys().next().value!);
    }
  }

  /** Moves IPv6 entries to their keys under a new prefix length, in seen order. */
  #rekey(fromPrefix: number, toPrefix: number): void {
    const moved = new Map<string, Source>();
    for (const [key, source] of [...this.#idle, ...this.#busy]) {
      const to = rekeyed(key, fromPrefix, toPrefix);
      if (to === undefined) continue;
      const already = moved.get(to);
      if (already !== undefined) {
        already.active += source.active;
        already.tokens = Math.min(already.tokens, source.tokens);
        moved.delete(to);
      }
      moved.set(to, already ?? source);
    }
    this.#idle = new Map();
    this.#busy = new Map();
    for (const [key, source] of moved) this.#put(key, source);
  }
}

/** Tokens in `source`'s bucket at `now`: refilled lazily, never past `burst`. */
function available(source: Source, now: number, limits: Limits): number {
  const elapsedMs = Math.max(0, now - source.refilledAtMs);
  return Math.min(limits.burst, source.tokens + elapsedMs * limits.ratePerS! / 1000);
}

/**
 * `key` under a new IPv6 prefix length: itself when not an IPv6 network
 * key; the wider network's key when shorter; undefined (forget it) when
 * longer, since one network's count cannot be split among its subnets.
 */
function rekeyed(key: string, fromPrefix: number, toPrefix: number): string | undefined {
  if (!key.includes(":")) return key; // IPv4, the common case: skip parsing
  let cidr;
  try {
    cidr = parseCidr(key);
  } catch {
    return key; // not an address: its own key under any prefix
  }
  if (cidr.family !== 6 || cidr.prefixLength !== fromPrefix) return key;
  if (toPrefix > fromPrefix) return undefined;
  return sourceKey(key.slice(0, key.indexOf("/")), toPrefix);
}

function checkSettings(settings: SourceLimitSettings): Limits {
  const { maxconn, ratePerS, burst, ipv6Prefix, tableSize } = settings;
  if (maxconn !== undefined && !(Number.isInteger(maxconn) && maxconn >= 1)) {
    throw new RangeError(`'maxconn' must be an integer of at least 1: got ${maxconn}`);
  }
  if (ratePerS !== undefined && !(Number.isFinite(ratePerS) && ratePerS > 0)) {
    throw new RangeError(`'ratePerS' must be a number above 0: got ${ratePerS}`);
  }
  if (burst !== undefined) {
    if (ratePerS === undefined) {
      throw new RangeError(
        `'burst' needs 'ratePerS' (a bucket needs a refill rate): got burst ${burst} alone`,
      );
    }
    if (!(Number.isFinite(burst) && burst >= 1)) {
      throw new RangeError(`'burst' must be a number of at least 1: got ${burst}`);
    }
  }
  if (!(Number.isInteger(ipv6Prefix) && ipv6Prefix >= 0 && ipv6Prefix <= 128)) {
    throw new RangeError(`'ipv6Prefix' must be an integer 0-128: got ${ipv6Prefix}`);
  }
  if (!(Number.isInteger(tableSize) && tableSize >= 1)) {
    throw new RangeError(`'tableSize' must be an integer of at least 1: got ${tableSize}`);
  }
  return {
    maxconn: maxconn ?? Infinity,
    ratePerS,
    burst: burst ?? Math.max(1, ratePerS ?? 1),
    ipv6Prefix,
    tableSize,
  };
}
