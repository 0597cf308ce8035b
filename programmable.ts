/**
 * The contracts for code you write and the balancer runs: a balancing
 * policy, a health check, a route matcher. A module names itself in the
 * config file (`balance: { module: ./my_policy.ts }`, `health: { check: {
 * module: … } }`, `routes: [{ match: { module: … }, pool: … }]`), imports
 * its types from here, and is type-checked by `--check` and reloaded, new
 * code and all, on `SIGHUP`. docs/programmable.md has an example of each.
 *
 * Modules run inside the balancer, with its permissions: a module can do
 * whatever the `deno run` line allows. Load only code you trust.
 *
 * @example A policy: the backend with the fewest connections per weight
 * (its module imports the type `PickContext` from this one).
 * ```ts
 * export function pick(ctx: PickContext) {
 *   return ctx.backends.reduce((best, b) =>
 *     b.active / b.weight < best.active / best.weight ? b : best
 *   );
 * }
 * ```
 *
 * @module
 */

/** What a policy sees of one backend: a read-only view. */
export interface BackendView {
  /** `HOST:PORT`, as the logs write it. */
  readonly address: string;
  /** Its weight now (1-256; lower during slow start). */
  readonly weight: number;
  readonly backup: boolean;
  /** Connections in progress, attempts included. */
  readonly active: number;
  /** `up`, or why it is not offered (never offered here when not `up`). */
  readonly state: "up" | "down" | "draining" | "disabled";
  /** Recent time to connect, in milliseconds (a moving average); undefined before the first. */
  readonly connectMs: number | undefined;
}

/** What a policy's `pick` is told about one connection attempt. */
export interface PickContext {
  /** The pool, by name. */
  readonly pool: string;
  /** The listener the client came in on. */
  readonly listener: string;
  /** The client's IP address, without its port (the one its PROXY header named, if any). */
  readonly client: { readonly address: string };
  /** The TLS server name, when a route read the ClientHello. */
  readonly sni: string | undefined;
  /**
   * The backends this attempt may go to: usable, not yet tried by this
   * client, the backups only when no other is left. Never empty; frozen
   * (copy it to sort it).
   */
  readonly backends: readonly BackendView[];
  /** The module's own, per pool; it survives reloads (see {@linkcode PolicyModule.init}). */
  readonly state: Record<string, unknown>;
  /** `balance.options` from the config, if any. */
  readonly options: Readonly<Record<string, unknown>>;
}

/**
 * A balancing policy: `export function pick(ctx)`, returning one of
 * `ctx.backends` (or its address). Called once per connection attempt, in
 * the thread that moves the bytes: keep it quick, and never await in it.
 * Anything else it returns, or a throw, counts in
 * `lb_policy_errors_total{pool}` and that attempt goes round robin.
 */
export interface PolicyModule {
  pick(ctx: PickContext): BackendView | string | undefined;
  /** Called with the pool's state object when this module (or a new version) first serves the pool. */
  init?(state: Record<string, unknown>): void;
}

/** A connected socket to the backend, for a health check. */
export interface CheckConn {
  /** Writes all of `data` (text is sent as UTF-8). */
  write(data: Uint8Array | string): Promise<void>;
  /** The next bytes the backend sends; null once it has closed its side. */
  read(): Promise<Uint8Array | null>;
  /**
   * Reads until `marker` has arrived (or, without one, until the backend
   * closes), at most `limit` bytes (64 KiB): the text so far.
   */
  readText(marker?: string, limit?: number): Promise<string>;
}

/** What a health check is told. */
export interface CheckContext {
  /** The backend, `HOST:PORT`. */
  readonly backend: string;
  /** Aborted when the check's time (`health.timeout_ms`) is up. */
  readonly signal: AbortSignal;
  /** `health.check.options` from the config, if any. */
  readonly options: Readonly<Record<string, unknown>>;
}

/**
 * A health check: `export async function check(conn, ctx)`, with a socket
 * already connected to the backend. `true` or `"up"` passes; `false` or
 * `"down"` fails, and so does a throw or running out of time (the reason is
 * logged). The socket is closed after it returns.
 */
export interface CheckModule {
  check(conn: CheckConn, ctx: CheckContext): Promise<boolean | "up" | "down">;
}

/** What a matcher is told. */
export interface MatchContext {
  readonly listener: string;
  /** The client's IP address, without its port (after any PROXY header). */
  readonly client: { readonly address: string };
}

/**
 * A route matcher: `export function match(firstBytes, ctx)`, with the bytes
 * the client has sent so far. Return `"need-more"` to wait for more (up to
 * the listener's `peek_timeout_ms`; then it is asked no more, and does not
 * match). The bytes reach the backend unchanged whichever route is taken.
 */
export interface MatchModule {
  match(firstBytes: Uint8Array, ctx: MatchContext): boolean | "need-more";
}
