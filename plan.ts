/**
 * From the command line (and a config file) to a plan: what the balancer
 * will run, with every check a start makes short of binding.
 *
 * Every setting has one home: a key of the config file. Without `--config`
 * the flags fill a one-listener config; with it, the flags given override the
 * file's keys, for a file with one listener. Either way the result is
 * validated once, by config.ts, so a setting means the same wherever it came
 * from. `--check` and a start (and a reload) then run the same
 * {@linkcode prepare}, so `--check` finds what a start would.
 *
 * @module
 */

import { formatHostPort, parseHostPort } from "./address.ts";
import { createStrategy } from "./balancer.ts";
import type { Clock } from "./clock.ts";
import { type Config, ConfigError, readConfigFile, validateConfig } from "./config.ts";
import { describe } from "./errors.ts";
import type { LoadBalancerEvent } from "./events.ts";
import type { LoadBalancerFlags } from "./flags.ts";
import { fromHex, hex, type Probe, sendExpectProbe, tcpProbe } from "./health_check.ts";
import { AccessLog } from "./log.ts";
import { Backend, Pool } from "./pool.ts";

type Raw = Record<string, unknown>;

/** Each flag, and how it sets the raw config of listener 0 and its pool. */
const FLAG_KEYS: Record<string, (raw: Raw, flags: LoadBalancerFlags) => void> = {
  "listen": (raw, flags) => listener(raw).listen = formatHostPort(flags.listen),
  "maxconn": (raw, flags) => listener(raw).maxconn = flags.maxConnections,
  "backend": (raw, flags) =>
    pool(raw).backends = flags.backends.map((spec) => ({
      address: formatHostPort(spec.address),
      weight: spec.weight,
      backup: spec.backup,
    })),
  "balance": (raw, flags) => pool(raw).balance = flags.balance,
  "connect-timeout": (raw, flags) =>
    part(pool(raw), "timeouts").connect_ms = flags.connectTimeoutMs,
  "idle-timeout": (raw, flags) => part(pool(raw), "timeouts").idle_ms = flags.idleTimeoutMs,
  "half-closed-timeout": (raw, flags) =>
    part(pool(raw), "timeouts").half_closed_ms = flags.halfClosedTimeoutMs,
  "maxconn-per-backend": (raw, flags) =>
    pool(raw).maxconn_per_backend = flags.maxConnectionsPerBackend,
  "queue-max": (raw, flags) => part(pool(raw), "queue").max = flags.queueMax,
  "queue-timeout": (raw, flags) => part(pool(raw), "queue").timeout_ms = flags.queueTimeoutMs,
  "health-check": (raw, flags) => {
    const check = flags.healthCheck;
    if (check === undefined) return;
    part(pool(raw), "health").check = check.kind === "tcp"
      ? "tcp"
      : { send: hex(check.send), expect: hex(check.expect) };
  },
  "health-interval": (raw, flags) => part(pool(raw), "health").interval_ms = flags.healthIntervalMs,
  "health-timeout": (raw, flags) => part(pool(raw), "health").timeout_ms = flags.healthTimeoutMs,
  "rise": (raw, flags) => part(pool(raw), "health").rise = flags.health.rise,
  "fall": (raw, flags) => part(pool(raw), "health").fall = flags.health.fall,
  "backoff-base": (raw, flags) =>
    part(pool(raw), "health").backoff_base_ms = flags.health.backoffBaseMs,
  "backoff-max": (raw, flags) =>
    part(pool(raw), "health").backoff_max_ms = flags.health.backoffMaxMs,
  "slow-start": (raw, flags) => part(pool(raw), "health").slow_start_ms = flags.health.slowStartMs,
  "drain-timeout": (raw, flags) => raw.drain_timeout_ms = flags.drainTimeoutMs,
  "workers": (raw, flags) => raw.workers = flags.workers,
  "admin": (raw, flags) => {
    if (flags.admin !== undefined) part(raw, "admin").listen = formatHostPort(flags.admin);
  },
  "admin-token-file": (raw, flags) => {
    if (flags.adminTokenFile !== undefined) part(raw, "admin").token_file = flags.adminTokenFile;
  },
};

function listener(raw: Raw): Raw {
  return (raw.listeners as Raw[])[0]!;
}

function pool(raw: Raw): Raw {
  const pools = (raw.pools ??= {}) as Record<string, Raw>;
  const name = String(listener(raw).pool);
  return (pools[name] ??= {});
}

function part(parent: Raw, key: string): Raw {
  const value = parent[key];
  if (value !== null && typeof value === "object") return value as Raw;
  return (parent[key] = {}) as Raw;
}

/** Where the settings came from, for messages: the file, or the command line. */
export function sourceOf(flags: LoadBalancerFlags): string {
  return flags.config ?? "command line";
}

/** The validated configuration the flags (and `--config`) describe. @throws {ConfigError} */
export async function resolveConfig(flags: LoadBalancerFlags): Promise<Config> {
  const fromFile = flags.config !== undefined;
  const raw: Raw = fromFile ? (await readConfigFile(flags.config!)) as Raw : {
    listeners: [{ name: "default", listen: "127.0.0.1:5000", pool: "default" }],
    pools: { default: {} },
  };
  const overriding = Object.keys(FLAG_KEYS).filter((flag) => !fromFile || flags.given.has(flag));
  if (fromFile && overriding.length > 0) {
    const listeners = raw?.listeners;
    if (!Array.isArray(listeners) || listeners.length !== 1 || typeof listeners[0] !== "object") {
      throw new ConfigError([
        `${overriding.map((flag) => `--${flag}`).join(", ")} override the file only when it ` +
        `has exactly one listener; set these in the file instead`,
      ]);
    }
  }
  for (const flag of overriding) FLAG_KEYS[flag]!(raw, flags);
  return validateConfig(raw);
}

/** A one-line summary of a valid configuration, for `--check`. */
export function summarize(config: Config): string {
  const listeners = config.listeners.map((l) => `${l.name} on ${l.listen} → ${l.pool}`);
  const pools = Object.entries(config.pools).map(([name, pool]) =>
    `${name}: ${pool.backends.length} backend(s), ${pool.balance}`
  );
  return `${listeners.join("; ")}; pools ${pools.join("; ")}`;
}

/**
 * The pools `config` describes, as objects: one per pool, shared by every
 * listener on it. Backends of `previous` pools that stay (same pool name,
 * same address) keep their object, health and counters; they take the new
 * settings, and admin changes end.
 */
export function buildPools(
  config: Config,
  options: {
    clock?: Clock;
    onEvent?: (event: LoadBalancerEvent) => void;
    previous?: ReadonlyMap<string, Pool>;
  } = {},
): Map<string, Pool> {
  const pools = new Map<string, Pool>();
  for (const [name, pool] of Object.entries(config.pools)) {
    const kept = new Map((options.previous?.get(name)?.backends ?? []).map((b) => [b.name, b]));
    const backends = pool.backends.map((spec) => {
      const address = parseHostPort(spec.address);
      const settings = {
        weight: spec.weight,
        backup: spec.backup,
        maxConnections: pool.maxconn_per_backend || Infinity,
      };
      const backend = kept.get(formatHostPort(address));
      if (backend === undefined) return new Backend(address, settings);
      backend.configure(settings);
      return backend;
    });
    pools.set(
      name,
      new Pool({
        name,
        backends,
        strategy: createStrategy(pool.balance),
        settings: {
          connectTimeoutMs: pool.timeouts.connect_ms,
          idleTimeoutMs: pool.timeouts.idle_ms,
          halfClosedTimeoutMs: pool.timeouts.half_closed_ms,
        },
        queue: { max: pool.queue.max, timeoutMs: pool.queue.timeout_ms },
        health: {
          rise: pool.health.rise,
          fall: pool.health.fall,
          backoffBaseMs: pool.health.backoff_base_ms,
          backoffMaxMs: pool.health.backoff_max_ms,
          slowStartMs: pool.health.slow_start_ms,
        },
        healthCheck: healthCheckOf(pool.health),
        ...(options.clock ? { clock: options.clock } : {}),
        ...(options.onEvent ? { onEvent: options.onEvent } : {}),
      }),
    );
  }
  return pools;
}

function healthCheckOf(
  health: Config["pools"][string]["health"],
): { probe: Probe; intervalMs: number } | undefined {
  const check = health.check;
  if (check === undefined) return undefined;
  const probe = check === "tcp"
    ? tcpProbe(health.timeout_ms)
    : sendExpectProbe(fromHex(check.send), fromHex(check.expect), health.timeout_ms);
  return { probe, intervalMs: health.interval_ms };
}

/** Settings a reload cannot apply to a running process, as `key (old -> new)`. */
export function needsRestart(previous: Config, next: Config): string[] {
  const changed: string[] = [];
  const before = previous.admin?.listen ?? "off";
  const after = next.admin?.listen ?? "off";
  if (before !== after) changed.push(`admin.listen (${before} -> ${after})`);
  if (previous.workers !== next.workers) {
    changed.push(`workers (${previous.workers} -> ${next.workers})`);
  }
  return changed;
}

/** Everything a start (or a reload) needs beyond the config, checked before anything binds. */
export interface Plan {
  /** The validated configuration. */
  config: Config;
  /** The admin token, when the admin API is on and one is configured. */
  token: string | undefined;
  /** The access log, opened (a reload keeps the running one). */
  accessLog: AccessLog;
}

/**
 * Reads the token, opens the access log and builds each listener's options:
 * every check start-up makes short of binding, so `--check` finds what start
 * would. @throws {ConfigError}
 */
export async function prepare(
  flags: LoadBalancerFlags,
  config: Config,
  runningLog?: AccessLog,
): Promise<Plan> {
  const problems: string[] = [];
  let token: string | undefined;
  try {
    token = config.admin === undefined ? undefined : await readToken(config.admin.token_file);
  } catch (error) {
    problems.push((error as Error).message);
  }
  let log = runningLog;
  if (log === undefined) {
    try {
      log = new AccessLog({ path: flags.accessLog, format: flags.logFormat });
      if (flags.check) log.close();
    } catch (error) {
      problems.push(`--access-log ${flags.accessLog}: ${describe(error)}`);
    }
  }
  // Built afresh and thrown away, so a reload that fails later has touched
  // no running backend: what a start would build, built once.
  try {
    buildPools(config);
  } catch (error) {
    problems.push(`pools: ${describe(error)}`);
  }
  if (problems.length > 0) {
    if (log !== runningLog) log?.close();
    throw new ConfigError(problems);
  }
  return { config, token, accessLog: log! };
}

/** The admin token: from its file (never empty), else from LB_ADMIN_TOKEN. @throws {Error} */
async function readToken(file: string | undefined): Promise<string | undefined> {
  if (file !== undefined) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (error) {
      throw new Error(`admin.token_file ${file}: ${describe(error)}`);
    }
    const token = text.trim();
    if (token === "" || /\s/.test(token)) {
      throw new Error(
        `admin.token_file ${file}: expected one token (no spaces), got ${
          token === "" ? "an empty file" : "more than one word"
        }`,
      );
    }
    return token;
  }
  const permission = await Deno.permissions.query({ name: "env", variable: "LB_ADMIN_TOKEN" });
  if (permission.state !== "granted") {
    // Whether it is set cannot be known without the permission: never
    // guess, since a token set but ignored would leave changes refused.
    throw new Error(
      "the admin API reads its token from LB_ADMIN_TOKEN when no token file is given, and " +
        "that needs --allow-env=LB_ADMIN_TOKEN (deno task lb grants it); grant it even to run " +
        "read-only with the variable unset, or give admin.token_file / --admin-token-file",
    );
  }
  const token = Deno.env.get("LB_ADMIN_TOKEN")?.trim();
  return token === "" ? undefined : token;
}

/** The permissions a worker needs for the features this command line uses. */
export function workerPermissions(flags: LoadBalancerFlags): string[] {
  const permissions: string[] = [];
  // Workers read the same file (and re-read it on SIGHUP).
  if (flags.config !== undefined) {
    permissions.push("--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM");
  } else if (flags.adminTokenFile !== undefined) {
    permissions.push(`--allow-read=${flags.adminTokenFile}`);
  }
  if (flags.accessLog !== undefined) permissions.push(`--allow-write=${flags.accessLog}`);
  if (Deno.permissions.querySync({ name: "ffi" }).state === "granted") {
    permissions.push("--allow-ffi");
  }
  return permissions;
}
