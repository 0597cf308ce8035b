/**
 * What a soak runs: its backends as processes it can kill and start again,
 * and the balancer under test, with its config file, admin API and token.
 *
 * @module
 */

import { parseRssKiB } from "../bench/proc.ts";
import { closeQuietly } from "../errors.ts";
import { READY, readyPort } from "../events.ts";
import { eachLine, writeAll } from "../io.ts";
import { type BalancerProcess, startBalancerProcess } from "../test_util.ts";

const here = new URL(".", import.meta.url).pathname;

/**
 * The first port of the kernel's range for outgoing connections
 * (`/proc/sys/net/ipv4/ip_local_port_range`, read with `cat`: Deno reads
 * `/proc` only with every permission).
 */
export async function ephemeralPortStart(): Promise<number> {
  const { stdout, success } = await new Deno.Command("cat", {
    args: ["/proc/sys/net/ipv4/ip_local_port_range"],
  }).output();
  const start = Number(/^\s*(\d+)\s+\d+/.exec(new TextDecoder().decode(stdout))?.[1]);
  if (!success || !(start > 1024)) {
    throw new Error("cannot read the first port of /proc/sys/net/ipv4/ip_local_port_range");
  }
  return start;
}

/**
 * `count` distinct loopback ports that are free now, each below `below` and
 * at least 1024. Pass the start of the ephemeral range: the kernel never
 * gives a port below it to an outgoing connection, so a killed backend's
 * port is still free when it starts again.
 */
export function freePortsBelow(count: number, below: number, random = Math.random): number[] {
  const low = Math.max(1024, below - 16_384);
  const ports: number[] = [];
  for (let tries = 0; ports.length < count; tries++) {
    if (tries === 1000) throw new Error(`no ${count} free ports in ${low}-${below - 1}`);
    const port = low + Math.floor(random() * (below - low));
    if (ports.includes(port)) continue;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      ports.push(port);
    } catch {
      // Taken: try another.
    }
  }
  return ports;
}

/** How long a backend may take to listen before its start counts as failed. */
const BACKEND_READY_MS = 10_000;
/** Starts tried when the port is still in use; then the start fails. */
const START_ATTEMPTS = 5;

/**
 * A soak backend process (soak/backend.ts) on a fixed port, to kill and start
 * again. Its standard input is a pipe from the soak, so it ends when the soak
 * does; its standard output (the DONE lines) is read into
 * {@linkcode BackendProcess.lines} across every restart.
 */
export class BackendProcess {
  /** Every line it printed on stdout, in order, from every start. */
  readonly lines: string[] = [];
  #child: Deno.ChildProcess | undefined;
  #ready = false;
  // Readers of every start's output; each ends when that process does.
  readonly #outputs: Promise<unknown>[] = [];

  constructor(readonly id: string, readonly port: number) {}

  /** `127.0.0.1:PORT`. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Whether it is listening: true from its readiness line to its kill or stop. */
  get running(): boolean {
    return this.#ready;
  }

  /**
   * Starts it; resolves once it listens. A port still in use is tried again
   * a few times, 200 ms apart. @throws when it does not listen
   */
  async start(): Promise<void> {
    if (this.#child !== undefined) throw new Error(`backend ${this.id} is already running`);
    for (let attempt = 1;; attempt++) {
      const stderr = await this.#spawn();
      if (this.#ready) return;
      const inUse = /AddrInUse|address already in use/i.test(stderr);
      if (!inUse || attempt === START_ATTEMPTS) {
        throw new Error(
          `backend ${this.id} did not listen on ${this.address} ` +
            `(attempt ${attempt}): ${stderr.slice(0, 300) || "no output"}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  // One start: spawns, waits (bounded) for the readiness line; on failure
  // leaves nothing running. Returns its stderr so far.
  async #spawn(): Promise<string> {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net", `${here}backend.ts`, String(this.port), this.id],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    const stderr: string[] = [];
    const ready = Promise.withResolvers<boolean>();
    this.#outputs.push(
      eachLine(child.stdout, (line) => this.lines.push(line)).catch(() => {}),
      eachLine(child.stderr, (line) => {
        stderr.push(line);
        if (line.includes(READY)) ready.resolve(readyPort(line) === this.port);
      }).catch(() => {}).finally(() => ready.resolve(false)),
    );
    const timer = setTimeout(() => ready.resolve(false), BACKEND_READY_MS);
    this.#ready = await ready.promise;
    clearTimeout(timer);
    if (!this.#ready) await this.kill();
    return stderr.join("\n");
  }

  /** `kill -9`, and waits for it and its output to be gone. */
  async kill(): Promise<void> {
    await this.#end(() => this.#child?.kill("SIGKILL"));
  }

  /**
   * Ends it the gentle way: its standard input closes and it exits; if it has
   * not within 5 s, `kill -9`. Resolves once its output is read to the end.
   */
  async stop(): Promise<void> {
    const child = this.#child;
    const timer = setTimeout(() => {
      try {
        child?.kill("SIGKILL");
      } catch {
        // Gone meanwhile.
      }
    }, 5_000);
    try {
      await this.#end(() => {});
    } finally {
      clearTimeout(timer);
    }
  }

  async #end(signal: () => void): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    this.#ready = false;
    if (child !== undefined) {
      try {
        signal();
      } catch {
        // Already gone.
      }
      await child.stdin.close().catch(() => {});
      await child.status;
    }
    await Promise.all(this.#outputs);
  }
}

/** The balancer's config as the soak writes it: one listener, one pool, the admin API. */
export interface SoakConfig {
  listenPort: number;
  adminPort: number;
  tokenFile: string;
  /** The pool's backends and their weights. */
  backends: { address: string; weight: number }[];
}

/** How long the balancer drains at SIGTERM before it cuts what is left (`drain_timeout_ms`). */
export const DRAIN_TIMEOUT_MS = 10_000;

/** The config file's text (JSON, which the balancer reads as YAML too). */
export function configText(config: SoakConfig): string {
  return JSON.stringify(
    {
      listeners: [{ name: "soak", listen: `127.0.0.1:${config.listenPort}`, pool: "web" }],
      pools: {
        web: {
          balance: "round-robin",
          backends: config.backends,
          health: { check: "tcp", interval_ms: 500, timeout_ms: 500, rise: 1, fall: 1 },
          timeouts: { connect_ms: 2000 },
        },
      },
      admin: { listen: `127.0.0.1:${config.adminPort}`, token_file: config.tokenFile },
      drain_timeout_ms: DRAIN_TIMEOUT_MS,
    },
    null,
    2,
  );
}

// Starts the balancer on `configFile` with the engine asked for, under a descriptor limit.
function startSoakBalancer(
  configFile: string,
  engine: "epoll" | "deno",
  maxOpenFiles: number,
): Promise<BalancerProcess> {
  return startBalancerProcess(["--config", configFile, "--engine", engine], {
    listen: false,
    maxOpenFiles,
    permissions: [
      "--allow-net",
      "--allow-read",
      "--allow-env=LB_ADMIN_TOKEN,LOG_TOKENS,LOG_STREAM",
      "--allow-ffi",
    ],
  });
}

/** Everything a soak runs, started: four backends and the balancer in front of three. */
export interface Cluster {
  /** The balancer's listener. */
  listenPort: number;
  balancer: BalancerProcess;
  admin: Admin;
  /** Every backend: b1–b4. */
  backends: readonly BackendProcess[];
  /** b1–b3, in the pool from the start. */
  steady: readonly BackendProcess[];
  /** b4, running but out of the pool at the start. */
  extra: BackendProcess;
  /** Writes the config file with these backends and weights (a SIGHUP applies it). */
  writeConfig(backends: { address: string; weight: number }[]): Promise<void>;
  /** Takes everything down, whatever state it is in; never throws. */
  stop(): Promise<void>;
}

/**
 * Starts four backends and the balancer (its config file and token file in
 * `dir`) on ports below the ephemeral range: no outgoing connection takes a
 * killed backend's port before it starts again. On a failure it stops what
 * it started, then throws.
 */
export async function startCluster(
  options: { dir: string; engine: "epoll" | "deno"; token: string; maxOpenFiles: number },
): Promise<Cluster> {
  const { dir, engine, token, maxOpenFiles } = options;
  const [listenPort, adminPort, ...ports] = freePortsBelow(6, await ephemeralPortStart()) as [
    number,
    number,
    ...number[],
  ];
  const backends = ["b1", "b2", "b3", "b4"].map((id, i) => new BackendProcess(id, ports[i]!));
  const [b1, b2, b3, b4] = backends as [
    BackendProcess,
    BackendProcess,
    BackendProcess,
    BackendProcess,
  ];
  let balancer: BalancerProcess | undefined;
  const stop = async () => {
    await Promise.allSettled([balancer?.close(), ...backends.map((b) => b.stop())]);
  };
  try {
    const started = await Promise.allSettled(backends.map((b) => b.start()));
    const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) throw failed.reason;
    const tokenFile = `${dir}/token`;
    await Deno.writeTextFile(tokenFile, token);
    const configFile = `${dir}/lb.json`;
    const writeConfig = (backends: { address: string; weight: number }[]) =>
      Deno.writeTextFile(configFile, configText({ listenPort, adminPort, tokenFile, backends }));
    await writeConfig([b1, b2, b3].map((b) => ({ address: b.address, weight: 1 })));
    balancer = await startSoakBalancer(configFile, engine, maxOpenFiles);
    const admin = new Admin(adminPort, token);
    return {
      listenPort,
      balancer,
      admin,
      backends,
      steady: [b1, b2, b3],
      extra: b4,
      writeConfig,
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * The admin API of a running balancer. Each call is one connection, closed
 * once answered (`Connection: close`, read to its end), so the balancer
 * holds no admin connection between calls and its descriptor count at rest
 * does not depend on when we last asked.
 */
export class Admin {
  /**
   * @param timeoutMs longest a call may take, connect included @default 2000
   */
  constructor(readonly port: number, readonly token: string, readonly timeoutMs = 2000) {}

  /** Sums every series of `metric` in /metrics; undefined when the API does not answer. */
  async metric(metric: string): Promise<number | undefined> {
    let body: string;
    try {
      const response = await this.request("GET", "/metrics");
      if (response.status !== 200) return undefined;
      body = response.body;
    } catch {
      return undefined;
    }
    let sum = 0;
    for (const line of body.split("\n")) {
      if (line.startsWith(`${metric}{`) || line.startsWith(`${metric} `)) {
        sum += Number(line.slice(line.lastIndexOf(" ") + 1));
      }
    }
    return sum;
  }

  /** `POST /api/backends/web/ADDRESS/ACTION`; throws unless 200. */
  async change(address: string, action: "drain" | "enable"): Promise<void> {
    const path = `/api/backends/web/${encodeURIComponent(address)}/${action}`;
    const { status, body } = await this.request("POST", path);
    if (status !== 200) throw new Error(`${action} ${address}: ${status} ${body}`);
  }

  /** One request on its own connection, with the token. @throws on no answer in time */
  async request(method: string, path: string): Promise<{ status: number; body: string }> {
    const deadline = new AbortController();
    const timer = setTimeout(
      () => deadline.abort(new Error(`${method} ${path}: no answer in ${this.timeoutMs} ms`)),
      this.timeoutMs,
    );
    let conn: Deno.TcpConn | undefined;
    const closeOnDeadline = () => closeQuietly(conn);
    deadline.signal.addEventListener("abort", closeOnDeadline);
    try {
      conn = await Deno.connect({
        hostname: "127.0.0.1",
        port: this.port,
        signal: deadline.signal,
      });
      const head = `${method} ${path} HTTP/1.1\r\nhost: 127.0.0.1:${this.port}\r\n` +
        `authorization: Bearer ${this.token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`;
      await writeAll(conn, new TextEncoder().encode(head));
      let text = "";
      const decoder = new TextDecoder();
      const buffer = new Uint8Array(16 * 1024);
      try {
        for (let n; (n = await conn.read(buffer)) !== null;) {
          text += decoder.decode(buffer.subarray(0, n), { stream: true });
        }
      } catch (error) {
        throw deadline.signal.reason ?? error;
      }
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1]);
      if (!(status > 0)) throw new Error(`${method} ${path}: not an HTTP answer`);
      return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4) };
    } finally {
      clearTimeout(timer);
      deadline.signal.removeEventListener("abort", closeOnDeadline);
      closeQuietly(conn);
    }
  }
}

/**
 * Open descriptors and resident memory (KiB) of process `pid`. Deno reads
 * `/proc/PID/…` only with every permission; a shell needs only --allow-run.
 */
export async function processUsage(pid: number): Promise<{ fds: number; rssKiB: number }> {
  const { stdout, success } = await new Deno.Command("sh", {
    args: ["-c", `ls /proc/${pid}/fd | wc -l && cat /proc/${pid}/status`],
  }).output();
  if (!success) throw new Error(`process ${pid} is gone`);
  const text = new TextDecoder().decode(stdout);
  return { fds: parseInt(text, 10), rssKiB: parseRssKiB(text) };
}
