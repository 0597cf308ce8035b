/**
 * Command-line flags of `load_balancer.ts`.
 *
 * Every flag that sets something sets a key of the config file: the table
 * {@linkcode SETTINGS} says which. Flags are only read here (text into the
 * raw value for the key); plan.ts puts them into a raw config that goes
 * through the same schema as a file, so a setting has one default, one range
 * and one message wherever it comes from. `--help` is generated from the
 * table, with the defaults read from the schema.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type Config, configDefaults, listenerPool } from "./config.ts";

/** Where a flag's key lives: under the (one) listener, its pool, or the file's top. */
export type Scope = "listener" | "pool" | "root";

/** One flag that sets a config key. */
export interface FlagSpec {
  /** The long name, without `--`. */
  readonly name: string;
  /** What it takes, as `--help` shows it. */
  readonly value: string;
  /** Where its key is, and the key's path there. */
  readonly scope: Scope;
  readonly key: readonly string[];
  /** What it means, for `--help`. */
  readonly help: string;
  /** Text to raw value; the schema then validates it. @default {numbers as numbers, else the text} */
  readonly read?: (text: string) => unknown;
  /** May be given more than once; the values form a list. */
  readonly multiple?: boolean;
  /** Takes no value: given means true. */
  readonly boolean?: boolean;
  /** What `--help` says when the key has no default. */
  readonly unset?: string;
}

/** A bad command line; the message is meant for the user as it is. */
export class UsageError extends Error {
  override name = "UsageError";
}

// A whole number stays a number, so the schema's range check names it;
// anything else goes as text, and the schema says what was expected.
const number = (text: string): unknown => /^-?[0-9]+$/.test(text) ? Number(text) : text;

/** `HOST:PORT[,weight=N][,backup]`: one backend. */
function backendOf(text: string): unknown {
  const [address, ...options] = text.split(",");
  const backend: Record<string, unknown> = { address };
  for (const option of options) {
    const [key, value] = option.split("=", 2) as [string, string | undefined];
    if (Object.hasOwn(backend, key) || (key === "send-proxy" && "send_proxy" in backend)) {
      throw new UsageError(`--backend ${text}: ${key} is given twice`);
    }
    if (key === "backup" && value === undefined) backend.backup = true;
    else if (key === "weight" && value !== undefined) backend.weight = number(value);
    else if (key === "send-proxy" && value !== undefined) backend.send_proxy = value;
    else {
      throw new UsageError(
        `--backend ${text}: unknown option ${JSON.stringify(option)}; expected weight=N, ` +
          `backup or send-proxy=v1|v2|off`,
      );
    }
  }
  return backend;
}

function healthCheckOf(text: string): unknown {
  if (text === "tcp") return "tcp";
  const match = /^send=([^,]*),expect=([^,]*)$/.exec(text);
  if (!match) throw new UsageError(`--health-check ${text}: expected tcp or send=HEX,expect=HEX`);
  return { send: match[1], expect: match[2] };
}

function adminOf(text: string): unknown {
  // A bare port means loopback, the safe place for an admin API (the schema reads it so).
  if (/^[0-9]+$/.test(text) || text.includes(":")) return text;
  throw new UsageError(`--admin ${text}: expected PORT or HOST:PORT (e.g. 9000 or 127.0.0.1:9000)`);
}

/** Every flag that sets a config key, in the order `--help` lists them. */
export const SETTINGS: readonly FlagSpec[] = [
  {
    name: "listen",
    value: "HOST:PORT",
    scope: "listener",
    key: ["listen"],
    read: String,
    help: "where clients connect; 0.0.0.0:PORT or [::]:PORT for all interfaces, " +
      "port 0 for any free port (printed at start); udp://HOST:PORT for UDP datagrams",
  },
  {
    name: "backend",
    value: "HOST:PORT[,weight=N][,backup][,send-proxy=V]",
    scope: "pool",
    key: ["backends"],
    read: backendOf,
    multiple: true,
    help: "a backend; repeat for more (replaces the default pool). IPv6 as [::1]:5001; host " +
      "names are resolved at each connect. weight=N (1-256): its share; backup: used only " +
      "when no other backend is left to try; send-proxy=v1|v2|off: overrides --send-proxy",
  },
  {
    name: "balance",
    value: "NAME",
    scope: "pool",
    key: ["balance"],
    read: String,
    help: "round-robin (smooth weighted when weights differ), least-connections, random-two, " +
      "source-hash (Maglev on the client's IP), first",
  },
  {
    name: "connect-timeout",
    value: "MS",
    scope: "pool",
    key: ["timeouts", "connect_ms"],
    help: "time allowed for each backend connect",
  },
  {
    name: "idle-timeout",
    value: "MS",
    scope: "pool",
    key: ["timeouts", "idle_ms"],
    help: "close a connection after this long with no byte either way",
  },
  {
    name: "half-closed-timeout",
    value: "MS",
    scope: "pool",
    key: ["timeouts", "half_closed_ms"],
    help: "close a connection one side has finished after this long with no byte",
  },
  {
    name: "maxconn",
    value: "N",
    scope: "listener",
    key: ["maxconn"],
    help: "most client connections at once; at the limit the balancer stops accepting and " +
      "the kernel's backlog holds the rest",
  },
  {
    name: "accept-proxy",
    value: "",
    scope: "listener",
    key: ["accept_proxy"],
    boolean: true,
    help: "every connection starts with a PROXY v1 or v2 header naming the real client; " +
      "one missing, malformed or slower than --peek-timeout closes it",
  },
  {
    name: "allow",
    value: "CIDR",
    scope: "listener",
    key: ["allow"],
    read: String,
    multiple: true,
    help: "only clients from this source range (e.g. 10.0.0.0/8); repeat for more",
  },
  {
    name: "deny",
    value: "CIDR",
    scope: "listener",
    key: ["deny"],
    read: String,
    multiple: true,
    help: "never clients from this source range; wins over --allow; repeat for more",
  },
  {
    name: "per-source-maxconn",
    value: "N",
    scope: "listener",
    key: ["per_source", "maxconn"],
    unset: "off",
    help: "most connections at once from one source address (IPv6: one /64)",
  },
  {
    name: "per-source-rate",
    value: "N",
    scope: "listener",
    key: ["per_source", "rate_per_s"],
    unset: "off",
    help: "most new connections per second from one source address (a token bucket)",
  },
  {
    name: "peek-timeout",
    value: "MS",
    scope: "listener",
    key: ["peek_timeout_ms"],
    help: "how long a PROXY header, or the first bytes routes look at, may take to arrive",
  },
  {
    name: "tls-cert",
    value: "FILE",
    scope: "listener",
    key: ["tls", "cert"],
    read: String,
    unset: "off",
    help: "terminate TLS with this certificate chain (PEM) and --tls-key; backends get plain " +
      "bytes (runs on the deno engine; a reload with new files applies to new clients)",
  },
  {
    name: "tls-key",
    value: "FILE",
    scope: "listener",
    key: ["tls", "key"],
    read: String,
    unset: "off",
    help: "the private key (PEM) for --tls-cert",
  },
  {
    name: "send-proxy",
    value: "v1|v2|off",
    scope: "pool",
    key: ["send_proxy"],
    read: String,
    help: "send each backend a PROXY protocol header naming the client (v1 text, v2 binary)",
  },
  {
    name: "maxconn-per-backend",
    value: "N",
    scope: "pool",
    key: ["maxconn_per_backend"],
    help: "most connections per backend (0: no limit); when every usable backend is full, " +
      "clients wait in the queue",
  },
  {
    name: "queue-max",
    value: "N",
    scope: "pool",
    key: ["queue", "max"],
    help: "most clients waiting in the queue; one more is closed at once (queue-full)",
  },
  {
    name: "queue-timeout",
    value: "MS",
    scope: "pool",
    key: ["queue", "timeout_ms"],
    help: "longest a client waits in the queue (then closed as queue-timeout)",
  },
  {
    name: "health-check",
    value: "tcp|send=HEX,expect=HEX",
    scope: "pool",
    key: ["health", "check"],
    read: healthCheckOf,
    unset: "off",
    help: "active checks: healthy when a connect succeeds, or when the reply to the sent " +
      "bytes starts with the expected ones",
  },
  {
    name: "health-interval",
    value: "MS",
    scope: "pool",
    key: ["health", "interval_ms"],
    help: "time between checks",
  },
  {
    name: "health-timeout",
    value: "MS",
    scope: "pool",
    key: ["health", "timeout_ms"],
    help: "time allowed for one check",
  },
  {
    name: "rise",
    value: "N",
    scope: "pool",
    key: ["health", "rise"],
    help: "good checks in a row that bring a backend up",
  },
  {
    name: "fall",
    value: "N",
    scope: "pool",
    key: ["health", "fall"],
    help: "failed checks, or failed connects, in a row that take it down",
  },
  {
    name: "backoff-base",
    value: "MS",
    scope: "pool",
    key: ["health", "backoff_base_ms"],
    help: "first wait before retrying a down backend; doubles while it keeps failing",
  },
  {
    name: "backoff-max",
    value: "MS",
    scope: "pool",
    key: ["health", "backoff_max_ms"],
    help: "longest wait before retrying a down backend",
  },
  {
    name: "slow-start",
    value: "MS",
    scope: "pool",
    key: ["health", "slow_start_ms"],
    help: "a backend that comes up ramps from a twentieth of its weight to all of it over " +
      "this time (0: off)",
  },
  {
    name: "drain-timeout",
    value: "MS",
    scope: "root",
    key: ["drain_timeout_ms"],
    help: "on SIGINT/SIGTERM, time connections may take to finish before they are cut",
  },
  {
    name: "workers",
    value: "N",
    scope: "root",
    key: ["workers"],
    help: "N processes share the port (SO_REUSEPORT, Linux); needs --allow-run",
  },
  {
    name: "threads",
    value: "N",
    scope: "root",
    key: ["threads"],
    help: "data-plane threads in this process, each blocking in its own epoll_wait on its " +
      "own SO_REUSEPORT socket (epoll engine)",
  },
  {
    name: "engine",
    value: "auto|epoll|deno",
    scope: "root",
    key: ["engine"],
    read: String,
    help: "what moves the bytes: epoll (Linux system calls through FFI; needs --allow-ffi and " +
      "--allow-read of this folder) or deno (Deno.listen/Deno.connect, anywhere); auto picks " +
      "epoll where it can",
  },
  {
    name: "access-log",
    value: "FILE",
    scope: "root",
    key: ["access_log"],
    read: String,
    unset: "stdout",
    help: "append access lines to FILE, reopened on SIGUSR2 or POST /api/logs/reopen after " +
      "rotation; needs --allow-write",
  },
  {
    name: "log-format",
    value: "text|json",
    scope: "root",
    key: ["log_format"],
    read: String,
    unset: "text on a terminal, json otherwise",
    help: "access lines as key=value text or JSON objects",
  },
  {
    name: "admin",
    value: "[HOST:]PORT",
    scope: "root",
    key: ["admin", "listen"],
    read: adminOf,
    unset: "off",
    help: "serve the admin API (metrics, backends, changes) there; a bare port means 127.0.0.1; " +
      "an address off loopback needs a token",
  },
  {
    name: "admin-token-file",
    value: "FILE",
    scope: "root",
    key: ["admin", "token_file"],
    read: String,
    unset: "LB_ADMIN_TOKEN, else changes are refused",
    help: "the bearer token changes through the admin API need",
  },
];

/** One setting given on the command line: its flag and the raw value(s) for its key. */
export interface GivenSetting {
  readonly spec: FlagSpec;
  /** The texts as given, in order (one unless the flag is `multiple`). */
  readonly texts: readonly string[];
  /** The raw value for the key (a list for a `multiple` flag). */
  readonly value: unknown;
}

/** Everything the command line says. */
export interface LoadBalancerFlags {
  /** The settings given, in the table's order. */
  settings: GivenSetting[];
  /** `--config FILE`: settings from a file; the settings given override it. */
  config: string | undefined;
  /** `--check`: validate the configuration and exit. */
  check: boolean;
  /** `--watch`: reload when the config file changes (as on SIGHUP). */
  watch: boolean;
  /** Started by a supervisor: listen with `reusePort` (internal). */
  asWorker: boolean;
  /** `--as-worker=PID`: the supervisor's pid, watched so a worker outlives it by a second at most. */
  supervisorPid: number | undefined;
  /** `--help`, `--version`. */
  help: boolean;
  version: boolean;
}

const MODES = {
  config: { type: "string" },
  check: { type: "boolean" },
  watch: { type: "boolean" },
  "as-worker": { type: "string" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean" },
} as const;

function supervisorPid(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const pid = Number(text);
  if (!/^[1-9][0-9]*$/.test(text) || !Number.isSafeInteger(pid)) {
    throw new UsageError(
      `--as-worker: ${JSON.stringify(text)} is not a process id (internal flag)`,
    );
  }
  return pid;
}

/** Parses the load balancer's command line. @throws {UsageError} */
export function parseFlags(args: readonly string[]): LoadBalancerFlags {
  let values: Record<string, string | string[] | boolean | undefined>;
  let tokens: { kind: string; name?: string; rawName?: string }[] = [];
  try {
    ({ values, tokens = [] } = parseArgs({
      args: joinNegativeValues(args),
      options: {
        ...Object.fromEntries(
          SETTINGS.map((spec) => [
            spec.name,
            spec.boolean
              ? { type: "boolean" as const }
              : { type: "string" as const, multiple: spec.multiple ?? false },
          ]),
        ),
        ...MODES,
      },
      strict: true,
      allowPositionals: false,
      tokens: true,
    }));
  } catch (error) {
    throw new UsageError(describeParseArgsError(error, args));
  }
  // A setting that takes one value, given twice: the first would be dropped
  // without a word (one listener per command line; a file holds more).
  const seen = new Set<string>();
  for (const token of tokens) {
    if (token.kind !== "option" || token.name === undefined) continue;
    const spec = SETTINGS.find((s) => s.name === token.name);
    if (spec === undefined || spec.multiple) continue;
    if (seen.has(token.name)) {
      throw new UsageError(
        `--${token.name}: given more than once; it takes one value` +
          (spec.scope === "listener" ? " (for more listeners, use --config FILE)" : ""),
      );
    }
    seen.add(token.name);
  }
  const settings: GivenSetting[] = [];
  for (const spec of SETTINGS) {
    const given = values[spec.name];
    if (given === undefined) continue;
    const texts = Array.isArray(given) ? given : [String(given)];
    const read = spec.boolean ? () => true : spec.read ?? number;
    const raws = texts.map((text) => read(text));
    settings.push({ spec, texts, value: spec.multiple ? raws : raws[0] });
  }
  const flags: LoadBalancerFlags = {
    settings,
    config: values.config as string | undefined,
    check: values.check === true,
    watch: values.watch === true,
    asWorker: values["as-worker"] !== undefined,
    supervisorPid: supervisorPid(values["as-worker"] as string | undefined),
    help: values.help === true,
    version: values.version === true,
  };
  // One without the other is no TLS at all: say so in the flags' own names.
  if ((values["tls-cert"] === undefined) !== (values["tls-key"] === undefined)) {
    throw new UsageError(
      values["tls-cert"] === undefined
        ? "--tls-key: needs --tls-cert FILE too (the certificate chain it belongs to)"
        : "--tls-cert: needs --tls-key FILE too (its private key)",
    );
  }
  if (flags.watch && flags.config === undefined) {
    throw new UsageError("--watch: needs --config FILE to watch");
  }
  if (
    values["admin-token-file"] !== undefined && values.admin === undefined &&
    flags.config === undefined
  ) {
    throw new UsageError(
      "--admin-token-file: needs --admin [HOST:]PORT too (the admin API is off without it)",
    );
  }
  return flags;
}

/** The value of setting `name` on the command line, if given. */
export function givenText(flags: LoadBalancerFlags, name: string): string | undefined {
  return flags.settings.find((setting) => setting.spec.name === name)?.texts[0];
}

// `--connect-timeout -5` would read to parseArgs as a flag with no value;
// joined as `--connect-timeout=-5`, it reaches the range check and its message.
function joinNegativeValues(args: readonly string[]): string[] {
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const next = args[i + 1];
    // After `--` every entry is an argument as given, never a flag.
    if (arg === "--") return [...joined, ...args.slice(i)];
    if (/^--[a-z-]+$/.test(arg) && next !== undefined && /^-[0-9.]/.test(next)) {
      joined.push(`${arg}=${next}`);
      i++;
    } else {
      joined.push(arg);
    }
  }
  return joined;
}

// node:util's messages are long and mention positionals; say it our way.
function describeParseArgsError(error: unknown, args: readonly string[]): string {
  const message = (error as Error).message;
  const code = (error as { code?: string }).code;
  // node quotes the flag or argument as given, quotes inside it included:
  // take everything from the first quote to the last.
  const quoted = /'([^]*)'/.exec(message)?.[1];
  switch (code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION": {
      // A short flag from a group (`-h=3` reads as -h -= -3): name the group too.
      const group = quoted !== undefined && /^-[^-]$/.test(quoted) && !args.includes(quoted)
        ? args.find((arg) => /^-[^-]/.test(arg) && arg.includes(quoted.slice(1)))
        : undefined;
      return `unknown flag ${quoted ?? message}${group ? ` in ${group}` : ""} (see --help)`;
    }
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `unexpected argument ${quoted ?? message}: every setting is a flag (see --help)`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE": {
      // "Option '-h, --help' does not take an argument": name the long flag.
      const option = quoted === undefined ? "a flag" : /--[^\s']+/.exec(quoted)?.[0] ?? quoted;
      return message.includes("does not take an argument")
        ? `${option} takes no value (see --help)`
        : `${option} needs a value (see --help)`;
    }
    default:
      return message;
  }
}

/** The value at a setting's key in a validated config's listener 0, its pool, or the top. */
export function settingValue(config: Config, spec: FlagSpec): unknown {
  const listener = config.listeners[0]!;
  let value: unknown = spec.scope === "listener"
    ? listener
    : spec.scope === "pool"
    ? config.pools[listenerPool(listener)]
    : config;
  for (const key of spec.key) value = (value as Record<string, unknown> | undefined)?.[key];
  return value;
}

/** A default as `--help` and the docs write it. */
export function formatDefault(value: unknown): string {
  if (Array.isArray(value)) {
    if (value.length === 0) return "none";
    return value.map((item) => (item as { address?: string }).address ?? String(item)).join(", ");
  }
  return String(value);
}

/** The `--help` text, generated from {@linkcode SETTINGS} and the schema's defaults. */
export function usage(): string {
  const defaults = configDefaults();
  const rows = SETTINGS.map((spec) => {
    const value = settingValue(defaults, spec);
    const shown = value === undefined ? spec.unset : formatDefault(value);
    const flag = spec.value === "" ? `--${spec.name}` : `--${spec.name} ${spec.value}`;
    return [flag, `${spec.help} (default ${shown})`] as const;
  });
  const modes: [string, string][] = [
    [
      "--config FILE",
      "settings from a YAML or JSON file (see lb.example.yaml); settings given " +
      "as flags as well override it, for a file with one listener. Needs --allow-read and " +
      "--allow-env=LOG_TOKENS,LOG_STREAM",
    ],
    [
      "--check",
      "validate the configuration (file and flags) as a start would, print the " +
      "result and exit 0 (valid), 1 (a bad setting) or 2 (a bad flag); binds nothing",
    ],
    ["--watch", "with --config: reload when the file changes, as on SIGHUP"],
    ["--version", "print the version and exit"],
    ["-h, --help", "show this text"],
  ];
  const table = (entries: readonly (readonly [string, string])[]) =>
    entries.map(([left, right]) => wrap(left, right)).join("\n");
  return `Usage: deno run --allow-net load_balancer.ts [flags]

Accepts TCP connections and hands each one, round robin, to a backend,
copying bytes both ways until both sides are done; with --listen
udp://HOST:PORT, UDP datagrams, each client's flow kept on one backend (its
udp: settings are set in a config file).

Settings (each is also a key of the config file, with the same default):
${table(rows)}

Modes:
${table(modes)}

Signals: SIGHUP reloads the config file, SIGUSR2 reopens the access log,
SIGINT/SIGTERM drain and stop. Never send SIGUSR1: Deno opens a debugger on
it; the balancer ignores it when it may (--allow-ffi, as deno task lb grants).
`;
}

// `  --flag VALUE   text…`, the text wrapped at 100 columns under itself.
function wrap(left: string, right: string): string {
  const indent = 34;
  const width = 100 - indent;
  const lines: string[] = [];
  let line = "";
  for (const word of right.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  lines.push(line);
  const head = `  ${left}`;
  const first = head.length < indent
    ? head.padEnd(indent) + lines[0]
    : `${head}\n${" ".repeat(indent)}${lines[0]}`;
  return [first, ...lines.slice(1).map((text) => " ".repeat(indent) + text)].join("\n");
}
