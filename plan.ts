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

import { formatHostPort, isLoopbackHost, parseHostPort, UDP_SCHEME } from "./address.ts";
import { type Clock, realClock } from "./clock.ts";
import {
  type Config,
  ConfigError,
  formatPath,
  labConfig,
  readConfigFile,
  validateConfig,
} from "./config.ts";
import { type EdgeSettings, hasEdge } from "./edge.ts";
import { describe } from "./errors.ts";
import { tlsProblem } from "./tls_listener.ts";
import type { LoadBalancerEvent } from "./events.ts";
import { type FlagSpec, givenText, type LoadBalancerFlags, UsageError } from "./flags.ts";
import {
  fromHex,
  moduleProbe,
  type Probe,
  sendExpectProbe,
  tcpProbe,
  udpProbe,
} from "./health_check.ts";
import { loadModule, moduleBase, type ModuleKind, moduleUrl, strategyFor } from "./modules.ts";
import { AccessLog } from "./log.ts";
import { fileURLToPath } from "node:url";
import { Backend, Pool } from "./pool.ts";
import { DEFAULT_UDP, type UdpSettings } from "./udp_proxy.ts";

type Raw = Record<string, unknown>;

/** Where a setting's key is in a raw config, for listener 0 and its pool. */
function pathOf(raw: Raw, spec: FlagSpec): PropertyKey[] {
  switch (spec.scope) {
    case "listener":
      return ["listeners", 0, ...spec.key];
    case "pool":
      return ["pools", String((raw.listeners as Raw[])[0]!.pool), ...spec.key];
    case "root":
      return [...spec.key];
  }
}

// The object under `key`, made if missing. Always an own property: a name
// from the file (`__proto__`) must never lead to an object's prototype.
function child(parent: Raw, key: PropertyKey): Raw {
  const value = Object.hasOwn(parent, key) ? parent[key as string] : undefined;
  if (value !== null && typeof value === "object") return value as Raw;
  const made: Raw = {};
  Object.defineProperty(parent, key, {
    value: made,
    enumerable: true,
    writable: true,
    configurable: true,
  });
  return made;
}

function setAt(raw: Raw, path: readonly PropertyKey[], value: unknown): void {
  let parent = raw;
  for (const key of path.slice(0, -1)) parent = child(parent, key);
  Object.defineProperty(parent, path.at(-1)!, {
    value,
    enumerable: true,
    writable: true,
    configurable: true,
  });
}

// How many keys of `path` (its last left out) lead to objects `raw` already has.
function existingDepth(raw: Raw, path: readonly PropertyKey[]): number {
  let at: unknown = raw;
  let depth = 0;
  for (const key of path.slice(0, -1)) {
    if (at === null || typeof at !== "object" || !Object.hasOwn(at, key)) break;
    at = (at as Raw)[key as string];
    if (at === null || typeof at !== "object") break;
    depth++;
  }
  return depth;
}

const samePath = (a: readonly PropertyKey[], b: readonly PropertyKey[]) =>
  b.length <= a.length && b.every((key, i) => String(key) === String(a[i]));

/**
 * The validated configuration the flags (and `--config`) describe.
 * @throws {ConfigError} for a bad file, {@linkcode UsageError} when a flag's
 * value is what is wrong (naming the flag and the value as given)
 */
export async function resolveConfig(flags: LoadBalancerFlags): Promise<Config> {
  const fromFile = flags.config !== undefined;
  const raw = (fromFile ? await readConfigFile(flags.config!) : labConfig()) as Raw;
  if (flags.settings.length === 0) return validateConfig(raw);
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return validateConfig(raw);
  // A listener's or a pool's key needs to know which: a file with one listener says.
  const scoped = flags.settings.filter((setting) => setting.spec.scope !== "root");
  const listeners = raw.listeners;
  const single = Array.isArray(listeners) && listeners.length === 1 &&
    listeners[0] !== null && typeof listeners[0] === "object";
  if (scoped.length > 0 && !single) {
    throw new ConfigError([
      `${scoped.map((s) => `--${s.spec.name}`).join(", ")} ` +
      `${scoped.length === 1 ? "overrides" : "override"} the file only when it has exactly ` +
      `one listener; set ${scoped.length === 1 ? "it" : "these"} in the file instead`,
    ]);
  }
  const paths = flags.settings.map((setting) => pathOf(raw, setting.spec));
  // How deep each flag's path already was in the file: objects below that
  // depth are the flag's making, and so are problems with them.
  const existing = paths.map((path) => existingDepth(raw, path));
  flags.settings.forEach((setting, i) => setAt(raw, paths[i]!, setting.value));
  try {
    return validateConfig(raw);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    // A problem at a key a flag set is the flag's: say it with the flag and its text.
    let fromFlags = false;
    const problems = error.issues.map((issue) => {
      // At or inside the key a flag set; else about an object the flag made
      // to set it in (`tls` for --tls-cert), never one the file has.
      let index = paths.findIndex((path) => samePath(issue.path, path));
      if (index < 0) {
        index = paths.findIndex((path, i) =>
          issue.path.length > existing[i]! && samePath(path, issue.path)
        );
      }
      if (index < 0) {
        return `${flags.config ?? "command line"}: ${formatPath(issue.path)}: ${issue.message}`;
      }
      fromFlags = true;
      const setting = flags.settings[index]!;
      const item = setting.spec.multiple ? Number(issue.path[paths[index]!.length] ?? 0) : 0;
      return `--${setting.spec.name} ${setting.texts[item] ?? setting.texts[0]}: ${issue.message}`;
    });
    if (fromFlags) throw new UsageError(problems.join("\n"));
    throw error;
  }
}

/** A listener's settings as the config file gives them. */
type ListenerConfig = Config["listeners"][number];

/** A UDP listener's flow settings (udp_proxy.ts), or undefined for a TCP listener. */
export function udpSettingsOf(listener: ListenerConfig): UdpSettings | undefined {
  if (!listener.listen.startsWith(UDP_SCHEME)) return undefined;
  return {
    sessionIdleMs: listener.udp?.session_idle_ms ?? DEFAULT_UDP.sessionIdleMs,
    responses: listener.udp?.responses ?? DEFAULT_UDP.responses,
    maxSessions: listener.udp?.max_sessions ?? DEFAULT_UDP.maxSessions,
  };
}

/** A listener's front door (edge.ts) as plain data, or undefined when it has none. */
export function edgeSettingsOf(listener: ListenerConfig): EdgeSettings | undefined {
  const perSource = listener.per_source;
  const settings: EdgeSettings = {
    acceptProxy: listener.accept_proxy,
    acceptProxyFrom: listener.accept_proxy_from ?? [],
    allow: listener.allow,
    deny: listener.deny,
    ...(perSource && (perSource.maxconn !== undefined || perSource.rate_per_s !== undefined)
      ? {
        perSource: {
          ...(perSource.maxconn !== undefined ? { maxconn: perSource.maxconn } : {}),
          ...(perSource.rate_per_s !== undefined ? { ratePerS: perSource.rate_per_s } : {}),
          ...(perSource.burst !== undefined ? { burst: perSource.burst } : {}),
          ipv6Prefix: perSource.ipv6_prefix,
          tableSize: perSource.table_size,
        },
      }
      : {}),
    peekTimeoutMs: listener.peek_timeout_ms,
    routes: listener.routes.map((route) => ({ match: route.match, pool: route.pool })),
    fallback: listener.pool !== undefined,
    name: listener.name,
  };
  return hasEdge(settings) ? settings : undefined;
}

/** Where a `discover:` block learns backends, in a few words: `dns NAME`, `etcd PREFIX`. */
export function discoverySource(
  discover: NonNullable<Config["pools"][string]["discover"]>,
): string {
  return discover.etcd !== undefined ? `etcd ${discover.prefix}` : `dns ${discover.dns}`;
}

/** A one-line summary of a valid configuration, for `--check`. */
export function summarize(config: Config): string {
  const listeners = config.listeners.map((l) =>
    `${l.name} on ${l.listen} → ${
      [...new Set([...l.routes.map((r) => r.pool), ...(l.pool ? [l.pool] : [])])].join(" | ")
    }`
  );
  // Each backend by address, so a reload's line shows what changed.
  const pools = Object.entries(config.pools).map(([name, pool]) => {
    const source = pool.discover === undefined ? [] : [discoverySource(pool.discover)];
    const members = [...pool.backends.map((b) => b.address), ...source];
    // A loaded module shows as its file's name, not its versioned URL.
    const balance = typeof pool.balance === "string"
      ? pool.balance
      : `policy ${pool.balance.module.replace(/^file:.*\//, "").replace(/\?v=\w+$/, "")}`;
    return `${name}: ${balance} over ${members.join(", ") || "nothing yet"}`;
  });
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
    /** Backends that stay keep their admin state and weight (see {@linkcode Backend.configure}). */
    keepAdmin?: boolean;
  } = {},
): Map<string, Pool> {
  const pools = new Map<string, Pool>();
  // A pool a UDP listener sends to is checked over UDP (config.ts allows no mix).
  const udpPools = new Set(
    config.listeners.filter((l) => l.listen.startsWith(UDP_SCHEME)).map((l) => l.pool),
  );
  for (const [name, pool] of Object.entries(config.pools)) {
    const kept = new Map((options.previous?.get(name)?.backends ?? []).map((b) => [b.name, b]));
    const backends = pool.backends.map((spec) => {
      const address = parseHostPort(spec.address);
      const settings = {
        weight: spec.weight,
        backup: spec.backup,
        maxConnections: pool.maxconn_per_backend || Infinity,
        sendProxy: spec.send_proxy ?? pool.send_proxy,
      };
      const backend = kept.get(formatHostPort(address));
      if (backend === undefined) {
        const added = new Backend(address, settings);
        // One that joins a running pool (a reload, discovery, the admin API)
        // starts its slow start now; at start every backend is up already.
        if (options.previous !== undefined) {
          added.health = { ...added.health, upSince: (options.clock ?? realClock).now() };
        }
        return added;
      }
      backend.configure(settings, { keepAdmin: options.keepAdmin ?? false });
      return backend;
    });
    pools.set(
      name,
      new Pool({
        name,
        backends,
        strategy: strategyFor<Backend>(
          pool.balance,
          name,
          (problem, say) => options.onEvent?.({ type: "policy-error", pool: name, problem, say }),
          () => (options.clock ?? realClock).now(),
        ),
        settings: {
          connectTimeoutMs: pool.timeouts.connect_ms,
          idleTimeoutMs: pool.timeouts.idle_ms,
          halfClosedTimeoutMs: pool.timeouts.half_closed_ms,
          onRemove: pool.on_remove,
          onDown: pool.health.on_down,
        },
        queue: { max: pool.queue.max, timeoutMs: pool.queue.timeout_ms },
        health: {
          rise: pool.health.rise,
          fall: pool.health.fall,
          backoffBaseMs: pool.health.backoff_base_ms,
          backoffMaxMs: pool.health.backoff_max_ms,
          slowStartMs: pool.health.slow_start_ms,
        },
        healthCheck: healthCheckOf(pool.health, udpPools.has(name) ? "udp" : "tcp"),
        ...(options.clock ? { clock: options.clock } : {}),
        ...(options.onEvent ? { onEvent: options.onEvent } : {}),
      }),
    );
  }
  return pools;
}

function healthCheckOf(
  health: Config["pools"][string]["health"],
  transport: "tcp" | "udp",
): { probe: Probe; intervalMs: number } | undefined {
  const check = health.check;
  if (check === undefined) return undefined;
  if (transport === "udp" && typeof check === "object" && "send" in check) {
    const probe = udpProbe(fromHex(check.send), fromHex(check.expect), health.timeout_ms);
    return { probe, intervalMs: health.interval_ms };
  }
  const probe = check === "tcp"
    ? tcpProbe(health.timeout_ms)
    : "module" in check
    ? moduleProbe(check.module, health.timeout_ms, check.options)
    : sendExpectProbe(fromHex(check.send), fromHex(check.expect), health.timeout_ms);
  return { probe, intervalMs: health.interval_ms };
}

/** Settings a reload cannot apply to a running process, as `key (old -> new)`. */
export function needsRestart(previous: Config, next: Config): string[] {
  const changed: string[] = [];
  const before = previous.admin?.listen ?? "off";
  const after = next.admin?.listen ?? "off";
  if (before !== after) changed.push(`admin.listen (${before} -> ${after})`);
  for (const key of ["workers", "threads", "engine", "access_log", "log_format"] as const) {
    const [was, now] = [previous[key] ?? "unset", next[key] ?? "unset"];
    if (was !== now) changed.push(`${key} (${was} -> ${now})`);
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
  given: Config,
  runningLog?: AccessLog,
): Promise<Plan> {
  const problems: string[] = [];
  // Modules named by path are loaded by URL, each checked for its export.
  const config = await loadModules(given, moduleBase(flags.config), problems, flags.check);
  let token: string | undefined;
  try {
    token = config.admin === undefined ? undefined : await readToken(config.admin.token_file);
    const exposed = config.admin && adminExposure(config.admin.listen, token);
    if (exposed) {
      const field = givenText(flags, "admin") === undefined ? "admin.listen" : "--admin";
      problems.push(`${field} ${config.admin!.listen}: ${exposed}`);
    }
  } catch (error) {
    problems.push((error as Error).message);
  }
  // A listener's certificate and key must parse, and belong together.
  config.listeners.forEach((listener, i) => {
    if (listener.tls === undefined) return;
    const flagsGiven = givenText(flags, "tls-cert") !== undefined;
    const given = flagsGiven ? "--tls-cert/--tls-key" : `listeners[${i}].tls`;
    const read = (which: "cert" | "key") => {
      const path = listener.tls![which];
      try {
        return Deno.readTextFileSync(path);
      } catch (error) {
        const field = flagsGiven ? `--tls-${which}` : `listeners[${i}].tls.${which}`;
        problems.push(`${field} ${path}: cannot read it: ${describe(error)}`);
        return undefined;
      }
    };
    const cert = read("cert");
    const key = read("key");
    if (cert === undefined || key === undefined) return;
    const problem = tlsProblem(cert, key);
    if (problem) problems.push(`${given} (${listener.tls.cert}, ${listener.tls.key}): ${problem}`);
  });
  let log = runningLog;
  if (log === undefined) {
    try {
      log = new AccessLog({
        ...(config.access_log === undefined ? {} : { path: config.access_log }),
        ...(config.log_format === undefined ? {} : { format: config.log_format }),
      });
      if (flags.check) log.close();
    } catch (error) {
      const given = givenText(flags, "access-log") === undefined ? "access_log" : "--access-log";
      problems.push(`${given} ${config.access_log}: ${describe(error)}`);
    }
  }
  const unavailable = epollUnavailable();
  if (config.threads > 1 && config.engine === "auto" && unavailable !== undefined) {
    problems.push(
      `threads ${config.threads}: needs the epoll engine, which cannot run here: ${unavailable} ` +
        `(deno task lb grants what it needs)`,
    );
  }
  if (config.engine === "epoll" && unavailable !== undefined) {
    problems.push(
      `engine epoll: needs Linux on x86_64 or aarch64, --allow-ffi and --allow-read of ` +
        `${projectDir()}; here: ${unavailable} (deno task lb grants what it needs)`,
    );
  }
  // At start only: a reload never starts workers (a change of `workers` waits for a restart).
  if (
    runningLog === undefined && config.workers > 1 && !flags.asWorker &&
    Deno.permissions.querySync({ name: "run" }).state !== "granted"
  ) {
    problems.push(
      `workers ${config.workers}: starting the worker processes needs --allow-run ` +
        `(deno task lb grants it)`,
    );
  }
  // Built afresh and thrown away, so a reload that fails later has touched
  // no running backend: what a start would build, built once.
  try {
    if (problems.length === 0) buildPools(config);
  } catch (error) {
    problems.push(`pools: ${describe(error)}`);
  }
  if (problems.length > 0) {
    if (log !== runningLog) log?.close();
    throw new ConfigError(problems);
  }
  return { config, token, accessLog: log! };
}

/**
 * Why the admin API may not run on `listen` with `token`, or undefined when
 * it may. Loopback needs no token; any other address, a wildcard too, lets
 * other hosts reach it, so one without a token is refused: exposing the admin
 * port is then a choice made with a token in hand, never a slip of `--admin`.
 */
export function adminExposure(listen: string, token: string | undefined): string | undefined {
  if (token !== undefined) return undefined;
  const { hostname, port } = parseHostPort(listen, { allowPortZero: true });
  if (isLoopbackHost(hostname)) return undefined;
  return "not a loopback address, so other hosts could reach the admin API, and no admin " +
    "token is set: give one (--admin-token-file FILE, admin.token_file or LB_ADMIN_TOKEN), " +
    `or listen on loopback (127.0.0.1:${port})`;
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
  if (token !== undefined && /\s/.test(token)) {
    throw new Error("LB_ADMIN_TOKEN: expected one token (no spaces), got more than one word");
  }
  return token === "" ? undefined : token;
}

/** Whether the epoll engine can run here: Linux on x86_64 or aarch64, and --allow-ffi. */
export function epollPossible(): boolean {
  return epollUnavailable() === undefined;
}

/** The module each data-plane thread runs (a Worker must be allowed to read it). */
const DATAPLANE = new URL("./dataplane.ts", import.meta.url);

/** Why the epoll engine cannot run here, or undefined when it can. */
export function epollUnavailable(): string | undefined {
  if (Deno.build.os !== "linux") return `${Deno.build.os}, not Linux`;
  if (Deno.build.arch !== "x86_64" && Deno.build.arch !== "aarch64") {
    return `${Deno.build.arch}, not x86_64 or aarch64`;
  }
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return "no --allow-ffi";
  if (
    DATAPLANE.protocol === "file:" &&
    Deno.permissions.querySync({ name: "read", path: DATAPLANE }).state !== "granted"
  ) {
    return `no --allow-read for the data-plane threads' code (${projectDir()})`;
  }
  return undefined;
}

/** The folder the balancer's modules are in (a data-plane thread reads them). */
export function projectDir(): string {
  return new URL(".", import.meta.url).pathname;
}

/** The permissions a worker needs for the features this command line uses. */
export function workerPermissions(flags: LoadBalancerFlags, config: Config): string[] {
  const permissions: string[] = [];
  // Workers read the same file (and re-read it on SIGHUP).
  if (flags.config !== undefined) {
    permissions.push("--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM");
  } else if (config.admin?.token_file !== undefined) {
    permissions.push(`--allow-read=${config.admin.token_file}`);
  }
  if (config.access_log !== undefined) permissions.push(`--allow-write=${config.access_log}`);
  if (Deno.permissions.querySync({ name: "ffi" }).state === "granted") {
    permissions.push("--allow-ffi");
  }
  // The epoll engine's threads load their code from here.
  if (epollPossible() && flags.config === undefined) {
    permissions.push(`--allow-read=${projectDir()}`);
  }
  return permissions;
}

/**
 * `config` with each module path (policy, check, matcher) replaced by the
 * URL it is loaded by, every module loaded (and, for `--check` with
 * `--allow-run`, type-checked); what went wrong goes to `problems`, naming
 * the key.
 */
async function loadModules(
  config: Config,
  base: string,
  problems: string[],
  typeCheck: boolean,
): Promise<Config> {
  const refs: { path: string; value: string; kind: ModuleKind; set: (url: string) => void }[] = [];
  const copy = structuredClone(config) as Config;
  for (const [name, pool] of Object.entries(copy.pools)) {
    const balance = pool.balance;
    if (typeof balance !== "string") {
      refs.push({
        path: `pools.${name}.balance.module`,
        value: balance.module,
        kind: "policy",
        set: (url) => pool.balance = { ...balance, module: url },
      });
    }
    const check = pool.health.check;
    if (typeof check === "object" && "module" in check) {
      refs.push({
        path: `pools.${name}.health.check.module`,
        value: check.module,
        kind: "check",
        set: (url) => pool.health.check = { ...check, module: url },
      });
    }
  }
  copy.listeners.forEach((listener, i) =>
    listener.routes.forEach((route, r) => {
      if (route.match.module === undefined) return;
      refs.push({
        path: `listeners[${i}].routes[${r}].match.module`,
        value: route.match.module,
        kind: "matcher",
        set: (url) => route.match.module = url,
      });
    })
  );
  if (refs.length === 0) return config;
  await Promise.all(refs.map(async (ref) => {
    const path = ref.value;
    try {
      // One of our versioned URLs already (the config in effect, laid over
      // again): as it is. Anything else, a file: URL too, is read afresh.
      const url = /^file:.*\?v=[0-9a-f]{16}$/.test(path)
        ? path
        : await moduleUrl(path.startsWith("file:") ? fileURLToPath(path) : path, base);
      if (typeCheck) await typeCheckModule(url, ref.kind);
      await loadModule(url, ref.kind);
      ref.set(url);
    } catch (error) {
      problems.push(`${ref.path} ${path}: ${(error as Error).message}`);
    }
  }));
  return copy;
}

// A type check of a module against its contract (programmable.ts), by
// `deno eval --check` of a line that only names its type (nothing of it
// runs), when this process may run deno; otherwise a module is only
// imported, which finds syntax errors, not type errors.
async function typeCheckModule(url: string, kind: ModuleKind): Promise<void> {
  if (Deno.permissions.querySync({ name: "run", command: Deno.execPath() }).state !== "granted") {
    return;
  }
  const file = new URL(url);
  file.search = "";
  const contract = { policy: "PolicyModule", check: "CheckModule", matcher: "MatchModule" }[kind];
  const contracts = new URL("./programmable.ts", import.meta.url).href;
  const code = `import type { ${contract} } from ${JSON.stringify(contracts)};\n` +
    `type Module = typeof import(${JSON.stringify(file.href)});\n` +
    `const fits = (module: Module): ${contract} => module;\nvoid fits;\n`;
  const { code: exit, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--check", code],
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  if (exit === 0) return;
  // The first error, and where it is (unless in the line above, which is ours).
  const lines = new TextDecoder().decode(stderr).split("\n").map((line) => line.trim());
  const at = lines.findIndex((line) => /ERROR/.test(line));
  if (at < 0) throw new Error(`type check failed: deno exited ${exit}`);
  const where = lines.slice(at + 1).find((line) => line.startsWith("at "));
  const said = where === undefined || where.includes("$deno$eval")
    ? lines[at]!
    : `${lines[at]} (${where})`;
  throw new Error(`type check failed: ${said.slice(0, 400)}`);
}
