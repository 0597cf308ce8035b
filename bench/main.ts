/**
 * `deno task bench`: this load balancer beside a direct connection, HAProxy
 * and the NGINX stream module, measured in one run on loopback.
 *
 * The proxy under test runs alone on core 0; the load generators (wrk,
 * iperf3, udp_flood.ts), the backends and this script share core 1. Each
 * proxy's own CPU time (utime + stime of its process, from /proc) is divided
 * by the work done: the least noisy figure. Every load is repeated and
 * reported as the median with its spread; the headline is the ratio to
 * HAProxy.
 *
 * The UDP load (`udp`) floods two `backend.ts --udp` echo backends from 64
 * client flows through NGINX stream's UDP proxy and through this balancer
 * (and directly), every reply checked; HAProxy does not balance UDP
 * (haproxy#62), so there its ratio is to NGINX (and to direct).
 *
 * Flags: `--quick` (one short run of each, about a minute), `--runs N`,
 * `--seconds N` (per load), `--only lb,haproxy,nginx,direct` (targets),
 * `--loads requests,connections,throughput,idle,udp`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { readyPort } from "../events.ts";
import { parseIperf3, parseUdpFlood, parseWrk } from "./parse.ts";
import {
  balancerUdpConfig,
  haproxyConfig,
  nginxHttpBackendConfig,
  nginxStreamConfig,
  nginxStreamUdpConfig,
  type UdpFlowSetup,
} from "./peers.ts";
import { cpuSeconds, rssKiB } from "./proc.ts";
import {
  type FigureKey,
  FIGURES,
  type Measurements,
  medianOf,
  ratiosBetween,
  ratiosToHaproxy,
  renderTable,
  type Target,
  TARGETS,
  udpRatios,
} from "./report.ts";

const here = new URL(".", import.meta.url).pathname;
const root = new URL("..", import.meta.url).pathname;
const resultsDir = `${here}results`;
const NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so";
const PROXY_CORE = "0";
/** The loads, by the names `--loads` takes. */
const LOAD_NAMES = ["requests", "connections", "throughput", "idle", "udp"];
const LOAD_CORE = "1";
/** The targets the UDP load runs: HAProxy does not balance UDP (haproxy#62). */
const UDP_TARGETS: readonly Target[] = ["direct", "lb", "lbDeno", "nginx"];
/**
 * The V8 flags of `deno task lb` (deno.json): the balancer is measured as
 * it is run, whichever engine.
 */
const LB_V8_FLAGS = (JSON.parse(Deno.readTextFileSync(`${root}deno.json`)).tasks.lb as string)
  .split(" ").filter((word) => word.startsWith("--v8-flags="));
/**
 * How NGINX and this balancer keep a UDP flow: the same for both, so they do
 * the same work per datagram. Flows last until idle (not `responses: 1`,
 * DNS-style): the generator's 64 sockets are long-lived flows, and NGINX with
 * `proxy_responses 1` ends a session whenever its replies catch up with its
 * requests and opens a new one (to the next backend) for the next datagram.
 */
const UDP_FLOWS: UdpFlowSetup = { responses: 0, idleMs: 30_000 };

interface Settings {
  loads: string[];
  runs: number;
  seconds: number;
  /** Seconds of the same wrk load, unmeasured, before each measured one. */
  warmUpSeconds: number;
  idleConnections: number;
  wrkConnections: number;
  /** Client sockets (flows) of the UDP generator. */
  udpSockets: number;
  /** Datagrams each UDP client socket keeps unanswered at once. */
  udpInFlight: number;
  /** Bytes per UDP datagram sent (the reply adds the backend's tag). */
  udpDatagramBytes: number;
  targets: Target[];
}

// ---------------------------------------------------------------- processes

/** A program we started; its output goes to a log file, its pid is the program itself. */
interface Started {
  readonly name: string;
  readonly pid: number;
  readonly log: string;
  stop(): Promise<void>;
}

let pinning = true;

/** Starts `command` pinned to `core` (when taskset exists), output to a log file. */
function start(name: string, core: string, command: string[]): Started {
  const log = `${resultsDir}/logs/${name}.log`;
  // Empty it now, not in the child: a readiness check may read it before the child starts.
  Deno.writeTextFileSync(log, "");
  const pinned = pinning ? ["taskset", "-c", core, ...command] : command;
  // `exec` all the way down, so the pid we hold is the program's own.
  const child = new Deno.Command("bash", {
    args: ["-c", `exec "$@" >>"${log}" 2>&1`, "bash", ...pinned],
    stdin: "null",
  }).spawn();
  return {
    name,
    pid: child.pid,
    log,
    async stop() {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
      await child.status;
    },
  };
}

/** Runs a command to its end pinned to the load core; returns its stdout. */
async function run(command: string[]): Promise<string> {
  const pinned = pinning ? ["taskset", "-c", LOAD_CORE, ...command] : command;
  const { code, stdout, stderr } = await new Deno.Command(pinned[0]!, {
    args: pinned.slice(1),
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(stdout);
  if (code !== 0) {
    throw new Error(`${command[0]} exited ${code}: ${new TextDecoder().decode(stderr)}${text}`);
  }
  return text;
}

async function installed(program: string): Promise<boolean> {
  const { code } = await new Deno.Command("bash", { args: ["-c", `command -v ${program}`] })
    .output();
  return code === 0;
}

/** Waits until something listens on 127.0.0.1:port (TCP, or UDP), without connecting to it. */
async function listening(
  port: number,
  started: Started,
  timeoutMs = 10_000,
  transport: "tcp" | "udp" = "tcp",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const which = transport === "tcp" ? "-Hltn" : "-Hlun";
  while (Date.now() < deadline) {
    const out = await new Deno.Command("ss", { args: [which, `sport = :${port}`] }).output();
    if (new TextDecoder().decode(out.stdout).trim() !== "") return;
    await sleep(50);
  }
  let log = "";
  try {
    log = await Deno.readTextFile(started.log);
  } catch {
    // No log yet.
  }
  throw new Error(`${started.name} is not listening on ${port} after ${timeoutMs} ms\n${log}`);
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

function freeUdpPort(): number {
  const socket = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  const port = (socket.addr as Deno.NetAddr).port;
  socket.close();
  return port;
}

/** The port a program we started names in its readiness line (events.ts), once it does. */
async function readyPortOf(started: Started, timeoutMs = 10_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    let log = "";
    try {
      log = await Deno.readTextFile(started.log);
    } catch {
      // Not written yet.
    }
    for (const line of log.split("\n")) {
      const port = readyPort(line);
      if (port !== undefined) return port;
    }
    await sleep(50);
  }
  throw new Error(`${started.name}: no readiness line in ${timeoutMs} ms`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------- proxies

/** A running proxy: where to connect, and its processes' CPU and memory. */
interface Proxy {
  port: number;
  /** CPU seconds used so far by all its processes. */
  cpuSeconds(): Promise<number>;
  /** Resident memory of all its processes, KiB. */
  rssKiB(): Promise<number>;
  stop(): Promise<void>;
}

/** The pids of `pid` and its children (a supervisor's workers). */
async function family(pid: number): Promise<number[]> {
  const { stdout } = await new Deno.Command("pgrep", { args: ["-P", String(pid)] }).output();
  const children = new TextDecoder().decode(stdout).split("\n").filter(Boolean).map(Number);
  return [pid, ...children];
}

/**
 * Starts `target` in front of `backendPorts`. The Deno floor runs as a
 * minimal copying proxy (`copy`) or as one that only holds idle sockets
 * (`hold`); see `deno_floor.ts`.
 */
async function startProxy(
  target: Exclude<Target, "direct">,
  backendPorts: number[],
  tag: string,
  floorMode: FloorMode = "copy",
): Promise<Proxy> {
  const port = freePort();
  const setup = { listenPort: port, backendPorts };
  let process: Started;
  if (
    target === "lb" || target === "lbDeno" || target === "lbThreads" || target === "lbWorkers" ||
    target === "lbProxyV2"
  ) {
    const workers = target === "lbWorkers"
      ? ["--workers", "2"]
      : target === "lbThreads"
      ? ["--threads", "2"]
      : [];
    // As `deno task lb` runs it (FFI granted: auto picks epoll), or on the deno engine.
    const engine = target === "lbDeno" ? ["--engine", "deno"] : [];
    // The same balancer telling its backends who the client is.
    const proxyProtocol = target === "lbProxyV2" ? ["--send-proxy", "v2"] : [];
    process = start(`${target}-${tag}`, PROXY_CORE, [
      Deno.execPath(),
      "run",
      ...LB_V8_FLAGS,
      "--allow-net",
      "--allow-run",
      "--unstable-net",
      "--allow-ffi",
      "--allow-read",
      `${root}load_balancer.ts`,
      ...engine,
      "--listen",
      `127.0.0.1:${port}`,
      ...backendPorts.flatMap((p) => ["--backend", `127.0.0.1:${p}`]),
      ...workers,
      ...proxyProtocol,
    ]);
  } else if (target === "floor") {
    // With the balancer's V8 flags: the floor is what Deno costs us, heap sizing aside.
    process = start(`floor-${tag}`, PROXY_CORE, [
      Deno.execPath(),
      "run",
      ...LB_V8_FLAGS,
      "--allow-net",
      `${here}deno_floor.ts`,
      floorMode,
      String(port),
      ...backendPorts.map(String),
    ]);
  } else if (target === "haproxy") {
    const config = `${resultsDir}/haproxy-${tag}.cfg`;
    await Deno.writeTextFile(config, haproxyConfig(setup));
    process = start(`haproxy-${tag}`, PROXY_CORE, ["haproxy", "-db", "-f", config]);
  } else {
    const dir = await Deno.makeTempDir({ prefix: "bench-nginx-" });
    const config = `${dir}/nginx.conf`;
    await Deno.writeTextFile(config, nginxStreamConfig(setup, dir, NGINX_STREAM_MODULE));
    process = start(`nginx-${tag}`, PROXY_CORE, ["nginx", "-e", `${dir}/error.log`, "-c", config]);
  }
  if (target === "lbWorkers") {
    // The supervisor listens for a moment itself to check the port; ready
    // means every worker said so.
    await logged(process, /listening on .* with 2 workers/);
  } else {
    await listening(port, process);
  }
  const pids = () => target === "lbWorkers" ? family(process.pid) : Promise.resolve([process.pid]);
  return {
    port,
    cpuSeconds: async () => (await pids()).reduce((sum, pid) => sum + cpuSeconds(pid), 0),
    rssKiB: async () => (await pids()).reduce((sum, pid) => sum + rssKiB(pid), 0),
    stop: async () => {
      if (target === "lbWorkers") {
        for (const pid of (await family(process.pid)).slice(1)) Deno.kill(pid, "SIGKILL");
      }
      await process.stop();
    },
  };
}

async function logged(started: Started, pattern: RegExp, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if (pattern.test(await Deno.readTextFile(started.log))) return;
    } catch {
      // Not written yet.
    }
    await sleep(50);
  }
  throw new Error(`${started.name}: no line matching ${pattern} in ${timeoutMs} ms`);
}

/**
 * Starts `target` as a UDP proxy in front of `backendPorts`: NGINX stream's
 * UDP proxy, or this balancer with a config file (a UDP listener has no flag).
 */
async function startUdpProxy(
  target: "lb" | "lbDeno" | "nginx",
  backendPorts: number[],
  tag: string,
): Promise<Proxy> {
  const port = freeUdpPort();
  const setup = { listenPort: port, backendPorts };
  let process: Started;
  if (target === "nginx") {
    const dir = await Deno.makeTempDir({ prefix: "bench-nginx-udp-" });
    const config = `${dir}/nginx.conf`;
    await Deno.writeTextFile(
      config,
      nginxStreamUdpConfig(setup, UDP_FLOWS, dir, NGINX_STREAM_MODULE),
    );
    process = start(`nginx-${tag}`, PROXY_CORE, ["nginx", "-e", `${dir}/error.log`, "-c", config]);
  } else {
    const config = `${resultsDir}/${target}-${tag}.yaml`;
    await Deno.writeTextFile(config, balancerUdpConfig(setup, UDP_FLOWS));
    // As the TCP loads run it, with what reading a config file needs.
    process = start(`${target}-${tag}`, PROXY_CORE, [
      Deno.execPath(),
      "run",
      ...LB_V8_FLAGS,
      "--allow-net",
      "--allow-run",
      "--unstable-net",
      "--allow-ffi",
      "--allow-read",
      "--allow-env=LOG_TOKENS,LOG_STREAM",
      `${root}load_balancer.ts`,
      ...(target === "lbDeno" ? ["--engine", "deno"] : []),
      "--config",
      config,
    ]);
  }
  await listening(port, process, 10_000, "udp");
  return {
    port,
    cpuSeconds: () => Promise.resolve(cpuSeconds(process.pid)),
    rssKiB: () => Promise.resolve(rssKiB(process.pid)),
    stop: () => process.stop(),
  };
}

// ---------------------------------------------------------------- loads

interface Backends {
  httpPorts: number[];
  /** The same HTTP backends, reading a PROXY header first (for lbProxyV2). */
  proxyHttpPorts: number[];
  iperfPort: number;
  /** Two `backend.ts --udp` echo backends (empty without the UDP load). */
  udpPorts: number[];
}

type FloorMode = "copy" | "hold";

type Measure = (target: Target, backends: Backends, tag: string) => Promise<
  Partial<Record<FigureKey, number>>
>;

/** Runs `load` against `target`: directly, or through a freshly started proxy. */
async function throughTarget(
  target: Target,
  backendPorts: number[],
  tag: string,
  load: (port: number, proxy: Proxy | undefined) => Promise<Partial<Record<FigureKey, number>>>,
  floorMode: FloorMode = "copy",
) {
  if (target === "direct") return await load(backendPorts[0]!, undefined);
  const proxy = await startProxy(target, backendPorts, tag, floorMode);
  try {
    return await load(proxy.port, proxy);
  } finally {
    await proxy.stop();
  }
}

function wrkLoad(settings: Settings, close: boolean): Measure {
  return async (target, backends, tag) => {
    // Its backends read the PROXY header first.
    const ports = target === "lbProxyV2" ? backends.proxyHttpPorts : backends.httpPorts;
    return await throughTarget(target, ports, tag, async (port, proxy) => {
      const wrk = (seconds: number) => [
        "wrk",
        "-t1",
        `-c${settings.wrkConnections}`,
        `-d${seconds}s`,
        "--latency",
        ...(close ? ["-H", "Connection: close"] : []),
        `http://127.0.0.1:${port}/`,
      ];
      // The same load, unmeasured, first: a JIT compiles the hot paths in
      // its first seconds, and a balancer runs for days. Every target gets it.
      await run(wrk(settings.warmUpSeconds));
      const before = proxy === undefined ? 0 : await proxy.cpuSeconds();
      const output = await run(wrk(settings.seconds));
      const result = parseWrk(output);
      if (result.requests === 0) throw new Error(`wrk completed no request:\n${output}`);
      const cpuUs = proxy === undefined ? undefined : (await proxy.cpuSeconds() - before) * 1e6;
      if (close) {
        return {
          newConnectionsPerSecond: result.requestsPerSecond,
          ...(cpuUs === undefined ? {} : { cpuUsPerConnection: cpuUs / result.requests }),
        };
      }
      return {
        keptAliveRequestsPerSecond: result.requestsPerSecond,
        keptAliveP50Ms: result.p50Ms,
        keptAliveP99Ms: result.p99Ms,
        ...(cpuUs === undefined ? {} : { cpuUsPerRequest: cpuUs / result.requests }),
      };
    });
  };
}

function iperfLoad(settings: Settings, streams: number): Measure {
  // One backend only: iperf3's control and data connections must reach the same server.
  return async (target, backends, tag) => {
    // Its 1 KiB buffers would say nothing about Deno's bulk speed; iperf3
    // reads no PROXY header.
    if (target === "floor" || target === "lbProxyV2") return {};
    return await throughTarget(target, [backends.iperfPort], tag, async (port) => {
      const output = await run([
        "iperf3",
        "-c",
        "127.0.0.1",
        "-p",
        String(port),
        "-t",
        String(settings.seconds),
        "-P",
        String(streams),
        "-J",
      ]);
      const gbps = parseIperf3(output);
      return streams === 1
        ? { throughputOneStreamGbps: gbps }
        : { throughputFourStreamsGbps: gbps };
    });
  };
}

/**
 * A backend that holds connections, counting those that have sent their
 * first byte, and reading (and dropping) whatever comes until the client goes.
 */
function startHoldServer() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held = new Set<Deno.Conn>();
  const hold = async (conn: Deno.Conn) => {
    const buffer = new Uint8Array(64);
    try {
      if (await conn.read(buffer) === null) return;
      held.add(conn);
      while (await conn.read(buffer) !== null);
    } catch {
      // Reset: gone all the same.
    } finally {
      held.delete(conn);
      try {
        conn.close();
      } catch {
        // Closed.
      }
    }
  };
  (async () => {
    for await (const conn of listener) hold(conn);
  })().catch(() => {});
  return { port: listener.addr.port, held, close: () => listener.close() };
}

function idleLoad(settings: Settings): Measure {
  return async (target, _backends, tag) => {
    // The idle figure is the plain balancer's; the header would change nothing.
    if (target === "direct" || target === "lbProxyV2") return {};
    const hold = startHoldServer();
    try {
      return await throughTarget(target, [hold.port], tag, async (port, proxy) => {
        // An idle connection that has been used: one byte, then quiet. (HAProxy
        // opens the server side only once the client has sent something.)
        const open = async () => {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port });
          await conn.write(new Uint8Array([0x2e]));
          return conn;
        };
        // Warm up, so one-time allocations are not charged to the connections.
        const warm = await Promise.all(Array.from({ length: 50 }, open));
        warm.forEach((conn) => conn.close());
        while (hold.held.size > 0) await sleep(20);
        await sleep(300);
        const before = await proxy!.rssKiB();
        const clients: Deno.Conn[] = [];
        for (let i = 0; i < settings.idleConnections; i += 100) {
          const batch = Math.min(100, settings.idleConnections - i);
          clients.push(...await Promise.all(Array.from({ length: batch }, open)));
        }
        const deadline = Date.now() + 30_000;
        while (hold.held.size < settings.idleConnections && Date.now() < deadline) await sleep(20);
        if (hold.held.size < settings.idleConnections) {
          throw new Error(
            `only ${hold.held.size} of ${settings.idleConnections} reached the backend`,
          );
        }
        await sleep(500);
        const after = await proxy!.rssKiB();
        clients.forEach((conn) => conn.close());
        while (hold.held.size > 0 && Date.now() < deadline + 10_000) await sleep(20);
        return { idleKiBPerConnection: (after - before) / settings.idleConnections };
      }, "hold");
    } finally {
      hold.close();
    }
  };
}

/**
 * The UDP load: `udp_flood.ts` from many client flows, each keeping a few
 * datagrams in flight, through the proxy to two tagged-echo backends (or to
 * the backends directly, its sockets spread over both). Every reply is
 * checked; one wrong reply fails the measurement.
 */
function udpLoad(settings: Settings): Measure {
  return async (target, backends, tag) => {
    if (!UDP_TARGETS.includes(target) || backends.udpPorts.length === 0) return {};
    const flood = (seconds: number, ports: number[]) =>
      run([
        Deno.execPath(),
        "run",
        "--allow-net",
        "--unstable-net",
        `${here}udp_flood.ts`,
        "--seconds",
        String(seconds),
        "--sockets",
        String(settings.udpSockets),
        "--in-flight",
        String(settings.udpInFlight),
        "--size",
        String(settings.udpDatagramBytes),
        ...ports.flatMap((port) => ["--target", `127.0.0.1:${port}`]),
      ]);
    const proxy = target === "direct" ? undefined : await startUdpProxy(
      target as "lb" | "lbDeno" | "nginx",
      backends.udpPorts,
      tag,
    );
    try {
      const ports = proxy === undefined ? backends.udpPorts : [proxy.port];
      // As for wrk: the same load, unmeasured, first.
      await flood(settings.warmUpSeconds, ports);
      const before = proxy === undefined ? 0 : await proxy.cpuSeconds();
      const output = await flood(settings.seconds, ports);
      const cpuUs = proxy === undefined ? undefined : (await proxy.cpuSeconds() - before) * 1e6;
      const result = parseUdpFlood(output);
      if (result.mismatched > 0) {
        throw new Error(
          `${result.mismatched} replies were not the echo of what was sent: ${output}`,
        );
      }
      if (result.received === 0) throw new Error(`no datagram was answered: ${output}`);
      if (Object.keys(result.servers).length < backends.udpPorts.length) {
        throw new Error(`not every backend answered: ${output}`);
      }
      if (result.lost > 0) {
        // UDP may drop (a slow proxy's socket buffer fills): said, not failed.
        console.log(
          `  ${tag}: ${result.lost} of ${result.sent} datagrams had no reply within a second` +
            (result.late > 0 ? ` (${result.late} came later)` : ""),
        );
      }
      // Every reply the proxy carried, those after the window too.
      const answered = result.received + result.drained;
      return {
        udpDatagramsPerSecond: result.received / result.seconds,
        ...(cpuUs === undefined ? {} : { cpuUsPerDatagram: cpuUs / answered }),
      };
    } finally {
      await proxy?.stop();
    }
  };
}

// ---------------------------------------------------------------- the run

async function machine() {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const version = async (command: string[]) => {
    try {
      const { stdout, stderr } = await new Deno.Command(command[0]!, { args: command.slice(1) })
        .output();
      const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
      return text.split("\n")[0]!.trim();
    } catch {
      return "not installed";
    }
  };
  return {
    date: new Date().toISOString(),
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    haproxy: await version(["haproxy", "-v"]),
    nginx: await version(["nginx", "-v"]),
    wrk: await version(["wrk", "--version"]),
    iperf3: await version(["iperf3", "--version"]),
  };
}

function parseSettings(args: string[]): Settings {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean" },
      runs: { type: "string" },
      seconds: { type: "string" },
      only: { type: "string" },
      loads: { type: "string" },
    },
    strict: true,
  });
  const quick = values.quick ?? false;
  const integer = (flag: string, text: string | undefined, fallback: number) => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isInteger(value) || value < 1) {
      throw new Error(`--${flag} ${text}: expected a whole number, 1 or more`);
    }
    return value;
  };
  const targets = (values.only?.split(",") ?? Object.keys(TARGETS)) as Target[];
  for (const target of targets) {
    if (!(target in TARGETS)) {
      throw new Error(
        `--only ${values.only}: unknown target ${JSON.stringify(target)}; ` +
          `expected some of ${Object.keys(TARGETS).join(", ")}`,
      );
    }
  }
  const loads = values.loads?.split(",") ?? LOAD_NAMES;
  for (const load of loads) {
    if (!LOAD_NAMES.includes(load)) {
      throw new Error(
        `--loads ${values.loads}: unknown load ${JSON.stringify(load)}; ` +
          `expected some of ${LOAD_NAMES.join(", ")}`,
      );
    }
  }
  return {
    loads,
    runs: integer("runs", values.runs, quick ? 1 : 3),
    seconds: integer("seconds", values.seconds, quick ? 2 : 5),
    warmUpSeconds: quick ? 1 : 2,
    idleConnections: quick ? 500 : 2000,
    wrkConnections: 50,
    udpSockets: 64,
    udpInFlight: 4,
    udpDatagramBytes: 64,
    targets,
  };
}

async function main(args: string[]): Promise<number> {
  let settings: Settings;
  try {
    settings = parseSettings(args);
  } catch (error) {
    console.error(`bench: ${(error as Error).message}`);
    return 2;
  }
  await Deno.mkdir(`${resultsDir}/logs`, { recursive: true });

  if (!(await installed("ss"))) {
    console.error("bench: needs ss to see when servers listen: apt-get install iproute2");
    return 1;
  }
  const haveWrk = await installed("wrk");
  const haveNginx = await installed("nginx");
  const haveIperf = await installed("iperf3");
  if (!haveWrk) {
    console.error("bench: skipping request loads: wrk not installed (apt-get install wrk)");
  } else if (!haveNginx) {
    console.error(
      "bench: skipping request loads: nginx, which serves their HTTP backends, is not installed " +
        "(apt-get install nginx)",
    );
  }
  if (!haveIperf) {
    console.error("bench: skipping throughput: iperf3 not installed (apt-get install iperf3)");
  }
  if (!(await installed("taskset"))) {
    pinning = false;
    console.error("bench: taskset not found (util-linux); running without pinning to cores");
  }
  if (settings.targets.includes("haproxy") && !(await installed("haproxy"))) {
    console.error("bench: skipping HAProxy: not installed (apt-get install haproxy)");
    settings.targets = settings.targets.filter((t) => t !== "haproxy");
  }
  let streamModule = true;
  try {
    await Deno.stat(NGINX_STREAM_MODULE);
  } catch {
    streamModule = false;
  }
  if (settings.targets.includes("nginx") && !(haveNginx && streamModule)) {
    console.error(
      "bench: skipping NGINX stream: module not found (apt-get install libnginx-mod-stream)",
    );
    settings.targets = settings.targets.filter((t) => t !== "nginx");
  }

  // This script, the backends and the load generators share the load core.
  if (pinning) await run(["taskset", "-pc", LOAD_CORE, String(Deno.pid)]);
  console.log(
    `Proxy under test pinned to core ${PROXY_CORE}; load generators, backends and this script ` +
      `to core ${LOAD_CORE}${pinning ? "" : " (not pinned: no taskset)"}.`,
  );
  console.log(
    `${settings.runs} run(s) of each load, ${settings.seconds} s each; ` +
      `targets: ${settings.targets.map((t) => TARGETS[t]).join(", ")}.`,
  );

  const requestLoads = haveWrk && haveNginx;
  const httpPorts = [freePort(), freePort()];
  const proxyHttpPorts = [freePort(), freePort()];
  const iperfPort = freePort();
  const servers: Started[] = [];
  if (requestLoads) {
    const backendDir = await Deno.makeTempDir({ prefix: "bench-backend-" });
    const httpConfig = `${backendDir}/nginx.conf`;
    await Deno.writeTextFile(
      httpConfig,
      nginxHttpBackendConfig(httpPorts, backendDir, proxyHttpPorts),
    );
    const httpBackend = start("http-backend", LOAD_CORE, [
      "nginx",
      "-e",
      `${backendDir}/error.log`,
      "-c",
      httpConfig,
    ]);
    servers.push(httpBackend);
    for (const port of [...httpPorts, ...proxyHttpPorts]) await listening(port, httpBackend);
  }
  if (haveIperf) {
    const iperfServer = start("iperf3-server", LOAD_CORE, [
      "iperf3",
      "-s",
      "-p",
      String(iperfPort),
    ]);
    servers.push(iperfServer);
    await listening(iperfPort, iperfServer);
  }
  const wanted = (name: string) => settings.loads.includes(name);
  const udpPorts: number[] = [];
  if (wanted("udp")) {
    // The lab's own backend, answering each datagram with its tag and the bytes.
    for (const id of ["1", "2"]) {
      const backend = start(`udp-backend-${id}`, LOAD_CORE, [
        Deno.execPath(),
        "run",
        "--allow-net",
        "--unstable-net",
        `${root}backend.ts`,
        "0",
        id,
        "--udp",
      ]);
      servers.push(backend);
      udpPorts.push(await readyPortOf(backend));
    }
    if (settings.targets.includes("haproxy")) {
      console.log("HAProxy does not balance UDP (haproxy#62): the UDP load has no HAProxy row.");
    }
  }
  const backends = { httpPorts, proxyHttpPorts, iperfPort, udpPorts };

  const loads: [string, Measure][] = [];
  if (requestLoads && wanted("requests")) {
    loads.push(["kept-alive requests", wrkLoad(settings, false)]);
  }
  if (requestLoads && wanted("connections")) {
    loads.push(["new connections", wrkLoad(settings, true)]);
  }
  if (haveIperf && wanted("throughput")) {
    loads.push(["one-stream throughput", iperfLoad(settings, 1)]);
    loads.push(["four-stream throughput", iperfLoad(settings, 4)]);
  }
  if (wanted("idle")) loads.push(["idle connections", idleLoad(settings)]);
  if (wanted("udp")) loads.push(["udp datagrams", udpLoad(settings)]);
  const measurements: Measurements = {};
  const errors: string[] = [];
  try {
    for (let runIndex = 0; runIndex < settings.runs; runIndex++) {
      // Rotate the order each run, so no target always goes first.
      const order = settings.targets.map((_, i) =>
        settings.targets[(i + runIndex) % settings.targets.length]!
      );
      for (const [loadName, measure] of loads) {
        for (const target of order) {
          const tag = `${target}-${loadName.replaceAll(" ", "-")}-${runIndex + 1}`;
          const started = performance.now();
          try {
            const figures = await measure(target, backends, tag);
            for (const [key, value] of Object.entries(figures) as [FigureKey, number][]) {
              ((measurements[target] ??= {})[key] ??= []).push(value);
            }
            const shown = Object.entries(figures).map(([key, value]) =>
              `${key}=${value.toFixed(FIGURES[key as FigureKey].digits)}`
            ).join(" ");
            if (shown) {
              console.log(
                `  run ${runIndex + 1} ${loadName}, ${TARGETS[target]}: ${shown} ` +
                  `(${((performance.now() - started) / 1000).toFixed(1)} s)`,
              );
            }
          } catch (error) {
            const message = `run ${runIndex + 1} ${loadName}, ${TARGETS[target]}: ${
              (error as Error).message
            }`;
            errors.push(message);
            console.error(`  failed: ${message}`);
          }
        }
      }
    }
  } finally {
    for (const server of servers) await server.stop();
  }

  // UDP is compared with NGINX: HAProxy does not do it.
  const references: Target[] = wanted("udp") ? ["haproxy", "nginx"] : ["haproxy"];
  const table = renderTable(measurements, settings.targets, references);
  console.log(`\n${table}\n`);
  const ratios = ratiosToHaproxy(measurements);
  // The floor says how much of the distance is Deno's own: no proxy built on
  // Deno.listen/Deno.connect costs less than it.
  const floorRatios = ratiosBetween(measurements, "floor", "haproxy");
  const aboveFloor = ratiosBetween(measurements, "lb", "floor");
  const udpToNginx = udpRatios(measurements, "nginx");
  const udpToDirect = udpRatios(measurements, "direct");
  const headlines: [string, Partial<Record<FigureKey, number>>][] = [
    ["Headline, this LB ÷ HAProxy from this run (medians):", ratios],
    ["Deno's floor (a minimal Deno proxy) ÷ HAProxy:", floorRatios],
    ["This LB ÷ Deno's floor:", aboveFloor],
    ["UDP, this LB ÷ NGINX stream (HAProxy does not balance UDP):", udpToNginx],
    ["UDP, this LB ÷ direct:", udpToDirect],
  ];
  for (const [title, values] of headlines) {
    if (Object.keys(values).length === 0) continue;
    console.log(title);
    for (const [key, value] of Object.entries(values) as [FigureKey, number][]) {
      const figure = FIGURES[key];
      console.log(
        `  ${figure.label}: ${value.toFixed(2)}× (${
          figure.lowerIsBetter ? "lower" : "higher"
        } is better)`,
      );
    }
  }
  const lbIdle = medianOf(measurements, "lb", "idleKiBPerConnection");
  const floorIdle = medianOf(measurements, "floor", "idleKiBPerConnection");
  const aboveFloorKiB = lbIdle !== undefined && floorIdle !== undefined
    ? lbIdle - floorIdle
    : undefined;
  if (aboveFloorKiB !== undefined) {
    console.log(`  memory per idle connection above Deno's floor: ${aboveFloorKiB.toFixed(1)} KiB`);
  }
  const report = {
    machine: await machine(),
    settings: { ...settings, pinned: pinning, proxyCore: PROXY_CORE, loadCore: LOAD_CORE },
    measurements,
    ratiosToHaproxy: ratios,
    denoFloorRatiosToHaproxy: floorRatios,
    ratiosToDenoFloor: aboveFloor,
    idleKiBAboveDenoFloor: aboveFloorKiB,
    udpRatiosToNginx: udpToNginx,
    udpRatiosToDirect: udpToDirect,
    errors,
  };
  const stamp = report.machine.date.replaceAll(":", "-");
  await Deno.writeTextFile(`${resultsDir}/bench-${stamp}.json`, JSON.stringify(report, null, 2));
  await Deno.writeTextFile(`${resultsDir}/latest.json`, JSON.stringify(report, null, 2));
  await Deno.writeTextFile(
    `${resultsDir}/latest.md`,
    `Measured ${report.machine.date} on ${report.machine.cpu}, ${report.machine.cores} cores, ` +
      `Linux ${report.machine.kernel}, Deno ${report.machine.deno}; ${report.machine.haproxy}; ` +
      `${report.machine.nginx}. Medians of ${settings.runs} run(s) (min–max).\n\n${table}\n` +
      (wanted("udp")
        ? "\nHAProxy does not balance UDP (haproxy#62): the UDP rows have no HAProxy figures, " +
          "and their ratio is to NGINX stream.\n"
        : ""),
  );
  console.log(`\nWrote ${resultsDir}/latest.json and latest.md.`);
  if (errors.length > 0) console.error(`bench: ${errors.length} measurement(s) failed; see above.`);
  return errors.length > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
