/**
 * Balancing policy: which backend gets the next connection attempt.
 *
 * A strategy is pure policy. It sees the caller's backend list and what it
 * needs to know about each (weight, backup, connections in progress, whether
 * it is usable) and the backends this client has already tried; it imports no
 * socket code, never reorders the list, and returns `undefined` when nothing
 * is left to try, so the caller decides what that means for the client.
 * Randomness is injected.
 *
 * Backup backends take traffic only when no other backend is left to try.
 *
 * No lock guards any strategy's state: JavaScript runs one callback at a time
 * on the event loop, and `pick` never awaits, so two connections cannot
 * interleave inside it.
 *
 * @module
 */

/** What a strategy may know about a backend. */
export interface Candidate {
  /** Stable identity, `HOST:PORT`; what `source-hash` hashes. */
  readonly name: string;
  /** Relative share of new connections, 1-256. */
  readonly weight: number;
  /** Takes traffic only when no non-backup backend is left to try. */
  readonly backup: boolean;
  /** Connections in progress (including attempts to connect). */
  readonly active: number;
  /** False while the backend is down, disabled or draining. */
  readonly usable: boolean;
}

/** What a strategy knows about the attempt it is choosing for. */
export interface PickContext<B> {
  /** Backends this client already tried and failed to reach; never picked again. */
  readonly tried: ReadonlySet<B>;
  /** The client's IP address, for `source-hash`. */
  readonly clientAddress?: string;
  /** The listener it came in on, and the TLS server name a route read (for policy modules). */
  readonly listener?: string;
  readonly sni?: string;
}

/** Chooses a backend for each connection attempt. */
export interface Strategy<B> {
  /** Returns the backend to try next, or `undefined` when none is left. */
  pick(backends: readonly B[], context: PickContext<B>): B | undefined;
}

/** The strategies by the names `--balance` takes. */
export const STRATEGY_NAMES = [
  "round-robin",
  "least-connections",
  "random-two",
  "source-hash",
  "first",
] as const;
/** A name `--balance` takes. */
export type StrategyName = typeof STRATEGY_NAMES[number];

/** Makes the strategy called `name`. `random` returns numbers in [0, 1). */
export function createStrategy<B extends Candidate>(
  name: StrategyName,
  random: () => number = Math.random,
): Strategy<B> {
  switch (name) {
    case "round-robin":
      return new RoundRobin<B>();
    case "least-connections":
      return new LeastConnections<B>();
    case "random-two":
      return new RandomTwo<B>(random);
    case "source-hash":
      return new SourceHash<B>();
    case "first":
      return new First<B>();
  }
}

/**
 * The backends this attempt may go to, in the caller's order: the usable
 * non-backup ones not yet tried or, when there are none, the usable backups
 * not yet tried.
 */
export function eligible<B extends Candidate>(
  backends: readonly B[],
  tried: ReadonlySet<B>,
): B[] {
  const primaries = backends.filter((b) => b.usable && !b.backup && !tried.has(b));
  if (primaries.length > 0) return primaries;
  return backends.filter((b) => b.usable && b.backup && !tried.has(b));
}

/**
 * Which tier {@linkcode eligible} would draw from, without building it;
 * undefined when neither has a backend to offer.
 */
function tierOf<B extends Candidate>(
  backends: readonly B[],
  tried: ReadonlySet<B>,
): "primary" | "backup" | undefined {
  let backups = false;
  for (const b of backends) {
    if (tried.has(b) || !b.usable) continue;
    if (!b.backup) return "primary";
    backups = true;
  }
  return backups ? "backup" : undefined;
}

/** Whether `backend` may take this attempt from the tier (primary or backup) being drawn from. */
function fitsTier<B extends Candidate>(
  backend: B,
  tried: ReadonlySet<B>,
  backup: boolean,
): boolean {
  return backend.backup === backup && !tried.has(backend) && backend.usable;
}

/**
 * Round robin: s1, s2, s3, s1, … in the order given, when weights are equal.
 *
 * The cursor moves once per connection attempt, to just past the backend it
 * picked (HAProxy does the same), so a retry after a failed connect goes on to
 * the next backend rather than starting over.
 *
 * When weights differ it is NGINX's smooth weighted round robin: each pick
 * adds every backend's weight to its running score, takes the highest, and
 * subtracts the total from the winner. Weights {5, 1, 1} give a a b a c a a,
 * spread out rather than five a's in a row; over every full period each
 * backend gets exactly its weight.
 */
export class RoundRobin<B extends Candidate> implements Strategy<B> {
  readonly #cursor = new Cursor();
  readonly #score = new Map<B, number>();

  pick(backends: readonly B[], context: PickContext<B>): B | undefined {
    // Equal weights, the common case, without building a list: this runs
    // for every connection.
    const { tried } = context;
    const tier = tierOf(backends, tried);
    if (tier === undefined) return undefined;
    const backup = tier === "backup";
    let weight: number | undefined;
    let equal = true;
    for (const backend of backends) {
      if (!fitsTier(backend, tried, backup)) continue;
      weight ??= backend.weight;
      if (backend.weight !== weight) equal = false;
    }
    if (equal) return this.#cursor.nextWhere(backends, fitsTier, tried, backup);
    const pool = eligible(backends, tried);
    let total = 0;
    let best: B | undefined;
    let bestScore = -Infinity;
    for (const backend of pool) {
      const score = (this.#score.get(backend) ?? 0) + backend.weight;
      this.#score.set(backend, score);
      total += backend.weight;
      if (score > bestScore) {
        best = backend;
        bestScore = score;
      }
    }
    this.#score.set(best!, bestScore - total);
    return best;
  }
}

/**
 * A round-robin cursor over the caller's list: the next backend at or after
 * the cursor that is among `candidates`, moving the cursor just past it.
 */
class Cursor {
  #position = 0;

  next<B>(backends: readonly B[], candidates: ReadonlySet<B>): B | undefined {
    return this.nextWhere(backends, isCandidate, candidates, false);
  }

  /**
   * The same, for the next backend for which `fits(backend, set, flag)`: a
   * function and its arguments rather than a closure, as this runs for every
   * connection.
   */
  nextWhere<B>(
    backends: readonly B[],
    fits: (backend: B, set: ReadonlySet<B>, flag: boolean) => boolean,
    set: ReadonlySet<B>,
    flag: boolean,
  ): B | undefined {
    const count = backends.length;
    for (let step = 0; step < count; step++) {
      const index = (this.#position + step) % count;
      const backend = backends[index]!;
      if (!fits(backend, set, flag)) continue;
      this.#position = (index + 1) % count;
      return backend;
    }
    return undefined;
  }
}

function isCandidate<B>(backend: B, candidates: ReadonlySet<B>): boolean {
  return candidates.has(backend);
}

/** Connections in progress per unit of weight: what "least loaded" compares. */
function load(backend: Candidate): number {
  return backend.active / backend.weight;
}

/**
 * Least connections: the backend with the fewest connections in progress
 * relative to its weight. Ties go round robin, so an idle pool still rotates.
 */
export class LeastConnections<B extends Candidate> implements Strategy<B> {
  readonly #cursor = new Cursor();

  pick(backends: readonly B[], context: PickContext<B>): B | undefined {
    const pool = eligible(backends, context.tried);
    if (pool.length === 0) return undefined;
    const lowest = Math.min(...pool.map(load));
    return this.#cursor.next(backends, new Set(pool.filter((b) => load(b) === lowest)));
  }
}

/**
 * Power of two random choices: two different backends at random, and the
 * less loaded of the two. Nearly as even as least connections, without
 * every balancer herding onto the same least-loaded backend.
 */
export class RandomTwo<B extends Candidate> implements Strategy<B> {
  readonly #random: () => number;

  constructor(random: () => number = Math.random) {
    this.#random = random;
  }

  pick(backends: readonly B[], context: PickContext<B>): B | undefined {
    const pool = eligible(backends, context.tried);
    if (pool.length <= 1) return pool[0];
    const first = Math.floor(this.#random() * pool.length);
    let second = Math.floor(this.#random() * (pool.length - 1));
    if (second >= first) second++;
    const a = pool[first]!;
    const b = pool[second]!;
    return load(b) < load(a) ? b : a;
  }
}

/** The first usable backend in the order given (HAProxy's `first`): fill one, then spill over. */
export class First<B extends Candidate> implements Strategy<B> {
  pick(backends: readonly B[], context: PickContext<B>): B | undefined {
    return eligible(backends, context.tried)[0];
  }
}

/**
 * Size of a Maglev lookup table: a prime well above a hundred times any pool
 * we expect, as the paper advises, so shares stay even.
 */
export const MAGLEV_TABLE_SIZE = 65537;

/** FNV-1a, 32 bits, over a string's UTF-16 code units. */
export function fnv1a(text: string, seed = 0x811c9dc5): number {
  let hash = seed >>> 0;
  for (let i = 0; i < text.length; i++) {
    hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193) >>> 0;
  }
  // A final avalanche, so that similar names (ports 5001, 5002) land far apart.
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b) >>> 0;
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35) >>> 0;
  hash ^= hash >>> 16;
  return hash >>> 0;
}

let cubes: Int32Array | undefined;

/**
 * j³ mod M for every j < M, computed once. M − 1 = 2¹⁶ has no factor 3, so
 * cubing is one-to-one on the table's entries: a fixed permutation that is
 * far from a shift.
 */
function cubesModTableSize(): Int32Array {
  if (cubes) return cubes;
  const size = MAGLEV_TABLE_SIZE;
  cubes = new Int32Array(size);
  for (let j = 0; j < size; j++) cubes[j] = (j * j % size) * j % size;
  return cubes;
}

/** Where a name's walk through the Maglev table starts, and its stride (1…M − 1). */
export function maglevWalk(name: string): { offset: number; skip: number } {
  const size = MAGLEV_TABLE_SIZE;
  return { offset: fnv1a(name) % size, skip: (fnv1a(name, 0x9747b28c) % (size - 1)) + 1 };
}

/**
 * Builds a Maglev lookup table (Eisenbud et al., NSDI 2016) over `names`:
 * each entry holds the index of a backend. Every name walks its own
 * permutation of the table, defined by an offset and a skip hashed from the
 * name; the names take turns claiming their next free entry until the table
 * is full. Each backend ends up with ⌊M/N⌋ or ⌈M/N⌉ entries, and removing one
 * backend moves little more than the entries it had.
 *
 * One departure from the paper: a name's j-th entry is offset + skip·j³,
 * not offset + skip·j. With the paper's form, two names whose skips collide
 * (1 in 65,536 per pair) walk the same sequence shifted, fight over every
 * entry, and a removal beside them moved up to 30% more keys than its own
 * share; cubing makes their walks unrelated.
 */
export function maglevTable(names: readonly string[]): Int32Array {
  const size = MAGLEV_TABLE_SIZE;
  const table = new Int32Array(size).fill(-1);
  if (names.length === 0) return table;
  const cubed = cubesModTableSize();
  const walks = names.map(maglevWalk);
  const offset = walks.map((walk) => walk.offset);
  const skip = walks.map((walk) => walk.skip);
  const next = new Array<number>(names.length).fill(0);
  let filled = 0;
  while (true) {
    for (let i = 0; i < names.length; i++) {
      let entry = (offset[i]! + cubed[next[i]!]! * skip[i]!) % size;
      while (table[entry]! >= 0) {
        next[i]!++;
        entry = (offset[i]! + cubed[next[i]!]! * skip[i]!) % size;
      }
      table[entry] = i;
      next[i]!++;
      if (++filled === size) return table;
    }
  }
}

/**
 * Source hash with Maglev consistent hashing on the client's IP address: a
 * client keeps its backend while the set of usable backends stays the same,
 * and when one of N leaves, about 1/N of clients move. The table is built
 * over the usable backends and kept until that set changes. If the client's
 * backend failed to connect, the next entries of the table are tried.
 * The table is built over the backends sorted by name, so balancers that
 * see the same set agree on every client, whatever order they list it in.
 */
export class SourceHash<B extends Candidate> implements Strategy<B> {
  #key = "";
  #pool: B[] = [];
  #table: Int32Array = new Int32Array(0);

  pick(backends: readonly B[], context: PickContext<B>): B | undefined {
    // The table follows what is usable, not what this client tried.
    const pool = eligible(backends, new Set());
    if (pool.length === 0) return undefined;
    const key = pool.map((b) => b.name).join("\n");
    if (key !== this.#key) {
      this.#key = key;
      // By name, not as listed: the same set gives the same table whatever
      // order it came in (a reordered file, another instance that learned
      // the backends in another order).
      this.#pool = pool.toSorted((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
      this.#table = maglevTable(this.#pool.map((b) => b.name));
    }
    // All of them failed for this client: on to the backups, if any.
    if (this.#pool.every((b) => context.tried.has(b))) return eligible(backends, context.tried)[0];
    const size = this.#table.length;
    const start = fnv1a(context.clientAddress ?? "") % size;
    for (let step = 0; step < size; step++) {
      const backend = this.#pool[this.#table[(start + step) % size]!]!;
      if (!context.tried.has(backend)) return backend;
    }
    return undefined; // Not reached: some backend in the pool is untried.
  }
}
