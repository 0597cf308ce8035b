/**
 * From the command line (and a config file) to what the balancer runs.
 *
 * Every setting has one home: a key of the config file. Without `--config`
 * the flags fill a one-listener config; with it, the flags given override the
 * file's keys, for a file with one listener. Either way the result is
 * validated once, by config.ts, so a setting means the same wherever it came
 * from.
 *
 * @module
 */

import { formatHostPort, parseHostPort } from "./address.ts";
import { createStrategy } from "./balancer.ts";
import { type Config, ConfigError, readConfigFile, validateConfig } from "./config.ts";
import type { LoadBalancerFlags } from "./flags.ts";
import { fromHex, hex, type Probe, sendExpectProbe, tcpProbe } from "./health_check.ts";
import { type Backend, backendOf, type LoadBalancerOptions } from "./load_balancer.ts";

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

/** The balancer options for listener `index` of `config` (all but its listener). */
export function balancerOptions(
  config: Config,
  index: number,
  existing: ReadonlyMap<string, Backend> = new Map(),
): Omit<LoadBalancerOptions, "listener"> & { backends: Backend[] } {
  const listenerConfig = config.listeners[index]!;
  const pool = config.pools[listenerConfig.pool]!;
  const check = pool.health.check;
  let probe: Probe | undefined;
  if (check === "tcp") probe = tcpProbe(pool.health.timeout_ms);
  else if (check !== undefined) {
    probe = sendExpectProbe(fromHex(check.send), fromHex(check.expect), pool.health.timeout_ms);
  }
  return {
    backends: pool.backends.map((spec) => {
      const settings = {
        weight: spec.weight,
        backup: spec.backup,
        maxConnections: pool.maxconn_per_backend || Infinity,
      };
      const address = parseHostPort(spec.address);
      const kept = existing.get(formatHostPort(address));
      if (kept === undefined) return backendOf(address, settings);
      kept.configuredWeight = settings.weight;
      kept.backup = settings.backup;
      kept.maxConnections = settings.maxConnections;
      kept.adminState = "enabled"; // admin API changes last until the next reload
      return kept;
    }),
    pool: listenerConfig.pool,
    strategy: createStrategy(pool.balance),
    connectTimeoutMs: pool.timeouts.connect_ms,
    idleTimeoutMs: pool.timeouts.idle_ms,
    halfClosedTimeoutMs: pool.timeouts.half_closed_ms,
    maxConnections: listenerConfig.maxconn,
    queue: { max: pool.queue.max, timeoutMs: pool.queue.timeout_ms },
    health: {
      rise: pool.health.rise,
      fall: pool.health.fall,
      backoffBaseMs: pool.health.backoff_base_ms,
      backoffMaxMs: pool.health.backoff_max_ms,
      slowStartMs: pool.health.slow_start_ms,
    },
    healthCheck: probe && { probe, intervalMs: pool.health.interval_ms },
  };
}
