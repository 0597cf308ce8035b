/**
 * Command-line flags of `load_balancer.ts`, parsed into a typed object.
 *
 * Pure: takes the argument list, returns options or throws a
 * {@linkcode UsageError} whose message names the flag, the value and what
 * was expected. The caller prints it and exits 2.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type HostPort, parseHostPort } from "./address.ts";
import { STRATEGY_NAMES, type StrategyName } from "./balancer.ts";
import type { HealthSettings } from "./health.ts";
import type { LogFormat } from "./log.ts";
import { fromHex } from "./health_check.ts";

/** `--health-check`: a TCP connect, or bytes to send and the reply's expected start. */
export type HealthCheckSpec = { kind: "tcp" } | {
  kind: "send-expect";
  send: Uint8Array;
  expect: Uint8Array;
};

/** One `--backend`: where, and its options. */
export interface BackendSpec {
  address: HostPort;
  /** Relative share of connections, 1-256. @default {1} */
  weight: number;
  /** Takes traffic only when no other backend is left to try. @default {false} */
  backup: boolean;
}

/** Everything the command line can set. */
export interface LoadBalancerFlags {
  /** Where clients connect. @default {127.0.0.1:5000} */
  listen: HostPort;
  /** The pool, in order. @default {[127.0.0.1:5001, 127.0.0.1:5002]} */
  backends: BackendSpec[];
  /** How backends are chosen. @default {"round-robin"} */
  balance: StrategyName;
  /** Time allowed for each backend connect attempt. @default {5000} */
  connectTimeoutMs: number;
  /** Time connections may take to finish after SIGINT/SIGTERM. @default {30000} */
  drainTimeoutMs: number;
  /** Close a connection after this long with no byte either way. @default {3600000} */
  idleTimeoutMs: number;
  /** Close a half-closed connection after this long with no byte. @default {60000} */
  halfClosedTimeoutMs: number;
  /** Most client connections at once. @default {10000} */
  maxConnections: number;
  /** Most connections per backend; 0 is no limit. @default {0} */
  maxConnectionsPerBackend: number;
  /** Clients that may wait for a backend with room. @default {1000} */
  queueMax: number;
  /** Longest a client waits for a backend with room. @default {5000} */
  queueTimeoutMs: number;
  /** Active checks; off when undefined. */
  healthCheck: HealthCheckSpec | undefined;
  /** Time between active checks. @default {2000} */
  healthIntervalMs: number;
  /** Time allowed for one active check. @default {1000} */
  healthTimeoutMs: number;
  /** Rise, fall, backoff and slow start. */
  health: HealthSettings;
  /** Processes sharing the listening port (Linux). @default {1} */
  workers: number;
  /** Started by a supervisor: listen with `reusePort` (internal). */
  asWorker: boolean;
  /** `--config FILE`: settings from a file; the flags given override it. */
  config: string | undefined;
  /** `--check`: validate the configuration and exit. */
  check: boolean;
  /** `--watch`: reload when the config file changes (as on SIGHUP). */
  watch: boolean;
  /** The flags given on the command line (long names, without `--`). */
  given: Set<string>;
  /** Access log format; default text on a terminal, json otherwise. */
  logFormat: LogFormat | undefined;
  /** Access log file (reopened on SIGUSR2); default stdout. */
  accessLog: string | undefined;
  /** `--admin`: where the admin API listens; off when undefined. */
  admin: HostPort | undefined;
  /** `--admin-token-file`: the bearer token's file. */
  adminTokenFile: string | undefined;
  /** `--help` was given. */
  help: boolean;
  /** `--version` was given. */
  version: boolean;
}

/** A bad command line; the message is meant for the user as it is. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** The `--help` text. */
export const USAGE = `Usage: deno run --allow-net load_balancer.ts [flags]

Accepts TCP connections and hands each one, round robin, to a backend,
copying bytes both ways until both sides are done.

Flags:
  --listen HOST:PORT       where clients connect (default 127.0.0.1:5000);
                           use 0.0.0.0:PORT or [::]:PORT for all interfaces,
                           port 0 for any free port (printed at start)
  --backend HOST:PORT[,weight=N][,backup]
                           a backend; repeat for more. Given once or more, it
                           replaces the default pool 127.0.0.1:5001, 127.0.0.1:5002.
                           IPv6 as [::1]:5001; host names are resolved at each connect.
                           weight=N (1-256, default 1): its share of connections;
                           backup: used only when no other backend is left to try
  --balance NAME           round-robin (default; smooth weighted when weights
                           differ), least-connections, random-two, source-hash
                           (Maglev on the client's IP), first
  --connect-timeout MS     time allowed for each backend connect (default 5000)
  --drain-timeout MS       on SIGINT/SIGTERM, time connections may take to
                           finish before they are closed (default 30000)
  --health-check tcp       active checks: healthy when a connect succeeds
  --health-check send=HEX,expect=HEX
                           active checks: send these bytes; healthy when the
                           reply starts with the expected ones (off by default)
  --health-interval MS     time between checks (default 2000)
  --health-timeout MS      time allowed for one check (default 1000)
  --rise N                 good checks in a row that bring a backend up (default 2)
  --fall N                 failed checks, or failed connects, in a row that
                           take it down (default 3)
  --backoff-base MS        first wait before retrying a down backend (default 1000);
                           doubles while it keeps failing...
  --backoff-max MS         ...up to this (default 30000). Without active checks,
                           one client connection is let through to try it
  --slow-start MS          a backend that comes up ramps from a twentieth of its
                           weight to all of it over this time (default 0: off)
  --workers N              N processes share the port (SO_REUSEPORT, Linux only;
                           default 1). Needs --allow-run and --unstable-net:
                           deno run --allow-net --allow-run --unstable-net load_balancer.ts
  --idle-timeout MS        close a connection after this long with no byte
                           either way (default 3600000: an hour, so quiet
                           database connections are not cut)
  --half-closed-timeout MS close a connection one side has finished after this
                           long with no byte (default 60000)
  --maxconn N              most client connections at once; at the limit the
                           balancer stops accepting and the kernel's backlog
                           holds the rest (default 10000)
  --maxconn-per-backend N  most connections per backend (default 0: no limit);
                           when every usable backend is full, clients wait...
  --queue-max N            ...in a queue of at most N (default 1000; beyond it,
                           closed at once as queue-full)...
  --queue-timeout MS       ...for at most this long (default 5000; then closed
                           as queue-timeout)
  --config FILE            settings from a YAML or JSON file (see
                           lb.example.yaml); flags given as well override it,
                           for a file with one listener. Needs --allow-read
                           and --allow-env=LOG_TOKENS,LOG_STREAM
  --check                  validate the configuration (file and flags), print
                           the result and exit 0 or 1; binds nothing
  --watch                  reload when the config file changes, as on SIGHUP
  --log-format text|json   access lines as key=value text or JSON objects
                           (default text on a terminal, json otherwise)
  --access-log FILE        append access lines to FILE, reopened on SIGUSR2
                           (or POST /api/logs/reopen) after log rotation
                           (default stdout). Needs --allow-write
  --admin [HOST:]PORT      serve the admin API (metrics, backends) there;
                           127.0.0.1 unless a host is given (off by default)
  --admin-token-file FILE  the bearer token that changes through the admin
                           API need (else LB_ADMIN_TOKEN; with neither,
                           changes are refused)
  --version                print the version and exit
  -h, --help               show this text

Signals: SIGHUP reloads the config file, SIGUSR2 reopens the access log,
SIGINT/SIGTERM drain and stop. Never send SIGUSR1: Deno opens a debugger on
it; the balancer ignores it when it may (--allow-ffi, as deno task lb grants).
`;

const DEFAULT_BACKENDS = ["127.0.0.1:5001", "127.0.0.1:5002"];

/** Parses the load balancer's command line. @throws {UsageError} */
export function parseFlags(args: readonly string[]): LoadBalancerFlags {
  let values;
  try {
    ({ values } = parseArgs({
      args: joinNegativeValues(args),
      options: {
        listen: { type: "string" },
        backend: { type: "string", multiple: true },
        balance: { type: "string" },
        "connect-timeout": { type: "string" },
        "drain-timeout": { type: "string" },
        "idle-timeout": { type: "string" },
        "half-closed-timeout": { type: "string" },
        maxconn: { type: "string" },
        "maxconn-per-backend": { type: "string" },
        "queue-max": { type: "string" },
        "queue-timeout": { type: "string" },
        workers: { type: "string" },
        "health-check": { type: "string" },
        "health-interval": { type: "string" },
        "health-timeout": { type: "string" },
        rise: { type: "string" },
        fall: { type: "string" },
        "backoff-base": { type: "string" },
        "backoff-max": { type: "string" },
        "slow-start": { type: "string" },
        "as-worker": { type: "boolean" },
        config: { type: "string" },
        check: { type: "boolean" },
        watch: { type: "boolean" },
        "log-format": { type: "string" },
        "access-log": { type: "string" },
        admin: { type: "string" },
        "admin-token-file": { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UsageError(describeParseArgsError(error));
  }
  const flags: LoadBalancerFlags = {
    listen: hostPortFlag("--listen", values.listen ?? "127.0.0.1:5000", true),
    backends: (values.backend ?? DEFAULT_BACKENDS).map(backendFlag),
    balance: balanceFlag(values.balance),
    connectTimeoutMs: millisecondsFlag("--connect-timeout", values["connect-timeout"], 5000),
    drainTimeoutMs: millisecondsFlag("--drain-timeout", values["drain-timeout"], 30000),
    idleTimeoutMs: millisecondsFlag("--idle-timeout", values["idle-timeout"], 3_600_000),
    halfClosedTimeoutMs: millisecondsFlag(
      "--half-closed-timeout",
      values["half-closed-timeout"],
      60_000,
    ),
    maxConnections: integerFlag("--maxconn", values.maxconn, 10000, 1, 1_000_000),
    maxConnectionsPerBackend: integerFlag(
      "--maxconn-per-backend",
      values["maxconn-per-backend"],
      0,
      0,
      1_000_000,
    ),
    queueMax: integerFlag("--queue-max", values["queue-max"], 1000, 0, 1_000_000),
    queueTimeoutMs: millisecondsFlag("--queue-timeout", values["queue-timeout"], 5000),
    healthCheck: healthCheckFlag(values["health-check"]),
    healthIntervalMs: millisecondsFlag("--health-interval", values["health-interval"], 2000),
    healthTimeoutMs: millisecondsFlag("--health-timeout", values["health-timeout"], 1000),
    health: healthSettings(values),
    workers: integerFlag("--workers", values.workers, 1, 1, 64),
    asWorker: values["as-worker"] ?? false,
    config: values.config,
    check: values.check ?? false,
    watch: values.watch ?? false,
    logFormat: logFormatFlag(values["log-format"]),
    accessLog: values["access-log"],
    admin: values.admin === undefined ? undefined : adminFlag(values.admin),
    adminTokenFile: values["admin-token-file"],
    given: new Set(Object.keys(values)),
    help: values.help ?? false,
    version: values.version ?? false,
  };
  if (flags.watch && flags.config === undefined) {
    throw new UsageError("--watch: needs --config FILE to watch");
  }
  return flags;
}

// `--connect-timeout -5` would read to parseArgs as a flag with no value;
// joined as `--connect-timeout=-5`, it reaches the range check and its message.
function joinNegativeValues(args: readonly string[]): string[] {
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const next = args[i + 1];
    if (/^--[a-z-]+$/.test(arg) && next !== undefined && /^-[0-9.]/.test(next)) {
      joined.push(`${arg}=${next}`);
      i++;
    } else {
      joined.push(arg);
    }
  }
  return joined;
}

function adminFlag(text: string): HostPort {
  // A bare port means loopback, the safe place for an admin API.
  if (/^[0-9]+$/.test(text)) return hostPortFlag("--admin", `127.0.0.1:${text}`, true);
  if (!text.includes(":")) {
    throw new UsageError(
      `--admin ${text}: expected PORT or HOST:PORT (e.g. 9000 or 127.0.0.1:9000)`,
    );
  }
  return hostPortFlag("--admin", text, true);
}

function hostPortFlag(flag: string, text: string, isListen: boolean): HostPort {
  try {
    return parseHostPort(text, { allowPortZero: isListen });
  } catch (error) {
    throw new UsageError(`${flag} ${text}: ${(error as Error).message}`);
  }
}

function backendFlag(text: string): BackendSpec {
  const [where, ...options] = text.split(",");
  const spec: BackendSpec = {
    address: hostPortFlag("--backend", where!, false),
    weight: 1,
    backup: false,
  };
  for (const option of options) {
    const [key, value] = option.split("=", 2) as [string, string | undefined];
    if (key === "backup" && value === undefined) {
      spec.backup = true;
    } else if (key === "weight" && value !== undefined) {
      spec.weight = /^[0-9]{1,3}$/.test(value) ? Number(value) : NaN;
      if (!(spec.weight >= 1 && spec.weight <= 256)) {
        throw new UsageError(
          `--backend ${text}: weight must be 1-256, got ${JSON.stringify(value)}`,
        );
      }
    } else {
      throw new UsageError(
        `--backend ${text}: unknown option ${JSON.stringify(option)}; expected weight=N or backup`,
      );
    }
  }
  return spec;
}

function healthCheckFlag(text: string | undefined): HealthCheckSpec | undefined {
  if (text === undefined) return undefined;
  if (text === "tcp") return { kind: "tcp" };
  const match = /^send=([^,]*),expect=([^,]*)$/.exec(text);
  if (!match) {
    throw new UsageError(`--health-check ${text}: expected tcp or send=HEX,expect=HEX`);
  }
  try {
    return { kind: "send-expect", send: fromHex(match[1]!), expect: fromHex(match[2]!) };
  } catch (error) {
    throw new UsageError(`--health-check ${text}: ${(error as Error).message}`);
  }
}

function healthSettings(values: Record<string, unknown>): HealthSettings {
  const text = (key: string) => values[key] as string | undefined;
  const settings: HealthSettings = {
    rise: integerFlag("--rise", text("rise"), 2, 1, 100),
    fall: integerFlag("--fall", text("fall"), 3, 1, 100),
    backoffBaseMs: millisecondsFlag("--backoff-base", text("backoff-base"), 1000),
    backoffMaxMs: millisecondsFlag("--backoff-max", text("backoff-max"), 30000),
    slowStartMs: text("slow-start") === "0"
      ? 0
      : millisecondsFlag("--slow-start", text("slow-start"), 0),
  };
  if (settings.backoffMaxMs < settings.backoffBaseMs) {
    throw new UsageError(
      `--backoff-max ${settings.backoffMaxMs}: must be at least --backoff-base ` +
        `(${settings.backoffBaseMs})`,
    );
  }
  return settings;
}

function logFormatFlag(text: string | undefined): LogFormat | undefined {
  if (text === undefined || text === "text" || text === "json") return text;
  throw new UsageError(`--log-format ${text}: expected text or json`);
}

function balanceFlag(text: string | undefined): StrategyName {
  if (text === undefined) return "round-robin";
  if ((STRATEGY_NAMES as readonly string[]).includes(text)) return text as StrategyName;
  throw new UsageError(`--balance ${text}: expected one of ${STRATEGY_NAMES.join(", ")}`);
}

function millisecondsFlag(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = /^[0-9]{1,10}$/.test(text) ? Number(text) : NaN;
  if (!(value >= 1 && value <= 2_147_483_647)) {
    throw new UsageError(
      `${flag} ${text}: expected a whole number of milliseconds, 1-2147483647`,
    );
  }
  return value;
}

function integerFlag(
  flag: string,
  text: string | undefined,
  fallback: number,
  lowest: number,
  highest: number,
): number {
  if (text === undefined) return fallback;
  const value = /^[0-9]{1,7}$/.test(text) ? Number(text) : NaN;
  if (!(value >= lowest && value <= highest)) {
    throw new UsageError(`${flag} ${text}: expected a whole number, ${lowest}-${highest}`);
  }
  return value;
}

// node:util's messages are long and mention positionals; say it our way.
function describeParseArgsError(error: unknown): string {
  const message = (error as Error).message;
  const code = (error as { code?: string }).code;
  const option = /'(-{1,2}[^' ]+)/.exec(message)?.[1];
  switch (code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown flag ${option ?? message} (see --help)`;
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `unexpected argument ${/'([^']*)'/.exec(message)?.[1] ?? message}: ` +
        `every setting is a flag (see --help)`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      // "Option '--check' does not take an argument" for `--check=yes`.
      return message.includes("does not take an argument")
        ? `${option ?? "a flag"} takes no value (see --help)`
        : `${option ?? "a flag"} needs a value (see --help)`;
    default:
      return message;
  }
}
