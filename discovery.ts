/**
 * Backends learned at run time: a pool's `discover:` block names a source
 * (DNS, discovery_dns.ts; etcd, discovery_etcd.ts; made by
 * {@linkcode createSource} in runtime.ts) and a {@linkcode PoolDiscovery}
 * keeps what it last answered well.
 *
 * The rule that matters: a source that fails never empties a pool. An error,
 * a name that no longer resolves, an etcd that cannot be reached or a value
 * that cannot be read keeps the last good set; the error is counted every
 * time and said once per change (and again when the source answers well).
 *
 * Policy only: a source reads DNS or HTTP, never a client's socket.
 *
 * @module
 */

/** One backend a source found, checked as the file's backends are. */
export interface Discovered {
  readonly address: string;
  readonly weight: number;
  readonly backup: boolean;
}

/**
 * What a source says: the whole set it sees now, or a problem, or both (a
 * set with one unreadable entry left out).
 */
export interface SourceReport {
  readonly backends?: readonly Discovered[];
  readonly error?: string;
}

/** A source of backends: it reports each answer until stopped. */
export interface DiscoverySource {
  /** `dns` or `etcd`: the `source` label of metrics, and of `/api/backends`. */
  readonly kind: "dns" | "etcd";
  /** What it asks, for messages: `dns _echo._tcp.service.test SRV`. */
  readonly describe: string;
  start(report: (report: SourceReport) => void): void;
  /** Stops asking; resolves once nothing more will be reported. */
  stop(): Promise<void>;
}

/** Options for {@linkcode PoolDiscovery}. */
export interface PoolDiscoveryOptions {
  pool: string;
  source: DiscoverySource;
  /** Called with each new set that differs from the last (sorted by address). */
  onChange: (backends: readonly Discovered[]) => void;
  /** Where its one-line messages go. */
  log: (message: string) => void;
  /** Errors counted by the discovery this one replaces (its block changed). @default {0} */
  errors?: number;
}

/** A pool's discovery: its source, the last good set, and its errors. */
export class PoolDiscovery {
  readonly pool: string;
  readonly source: DiscoverySource;
  /** Errors counted: every failed answer, and every entry that could not be used. */
  errors = 0;
  #backends: readonly Discovered[] | undefined;
  #key = "";
  // The problem said last, until the source answers well again.
  #failing: string | undefined;
  // What the balancer last left out of the set, and why.
  #leftOut: string | undefined;
  readonly #onChange: (backends: readonly Discovered[]) => void;
  readonly #log: (message: string) => void;

  constructor(options: PoolDiscoveryOptions) {
    this.pool = options.pool;
    this.source = options.source;
    this.#onChange = options.onChange;
    this.#log = options.log;
    this.errors = options.errors ?? 0;
  }

  /** The last good set; undefined until the source has answered well once. */
  get backends(): readonly Discovered[] | undefined {
    return this.#backends;
  }

  /** The problem in effect now, if the source is failing. */
  get failing(): string | undefined {
    return this.#failing;
  }

  /** What the balancer left out of the last set, and why (see {@linkcode leaveOut}). */
  get leftOut(): string | undefined {
    return this.#leftOut;
  }

  start(): void {
    this.source.start((report) => this.report(report));
  }

  stop(): Promise<void> {
    return this.source.stop();
  }

  /** Takes one report of the source (exposed for tests). */
  report(report: SourceReport): void {
    const where = `discovery: pool ${this.pool} (${this.source.describe})`;
    if (report.error !== undefined) this.fail(report.error);
    if (report.backends === undefined) return;
    if (report.error === undefined && this.#failing !== undefined) {
      this.#failing = undefined;
      this.#log(`${where}: answering again`);
    }
    const sorted = [...report.backends].sort((a, b) =>
      a.address < b.address ? -1 : a.address > b.address ? 1 : 0
    );
    const key = JSON.stringify(sorted);
    if (this.#backends !== undefined && key === this.#key) return;
    this.#backends = sorted;
    this.#key = key;
    this.#onChange(sorted);
  }

  /**
   * The balancer could not apply the last set (it failed the checks a file's
   * backends pass): `kept` stays the set in effect, and the problem counts.
   * The same answer is tried again when the source next gives it.
   */
  reject(kept: readonly Discovered[] | undefined, problem: string): void {
    this.#backends = kept;
    this.#key = kept === undefined ? "" : JSON.stringify(kept);
    this.fail(problem);
  }

  /**
   * The balancer left entries of the set out (an address it may not connect
   * to, such as a listener's own): counted each time, said when it changes.
   * Undefined: nothing was left out.
   */
  leaveOut(problem: string | undefined): void {
    if (problem !== undefined) this.errors++;
    if (problem === this.#leftOut) return;
    this.#leftOut = problem;
    if (problem !== undefined) {
      this.#log(
        `discovery: pool ${this.pool} (${this.source.describe}): left out ${problem}; ` +
          `the rest applied`,
      );
    }
  }

  /** Counts a problem, and says it if it is not the one said last. */
  fail(problem: string): void {
    this.errors++;
    if (problem === this.#failing) return;
    this.#failing = problem;
    const kept = this.#backends === undefined
      ? "no backends learned yet"
      : `keeping the last good set of ${this.#backends.length} backend(s)`;
    this.#log(`discovery: pool ${this.pool} (${this.source.describe}): ${problem}; ${kept}`);
  }
}
