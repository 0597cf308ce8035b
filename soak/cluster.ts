/**
 * What a soak runs: its backends as processes it can kill and start again,
 * and the balancer under test, with its config file, admin API and token.
 *
 * @module
 */

import { parseRssKiB } from "../bench/proc.ts";
import { READY, readyPort } from "../events.ts";
import { type BalancerProcess, startBalancerProcess } from "../test_util.ts";

const here = new URL(".", import.meta.url).pathname;

/** A free loopback port, as the kernel hands one out. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/** A soak backend process (soak/backend.ts) on a fixed port, to kill and start again. */
export class BackendProcess {
  #child: Deno.ChildProcess | undefined;
  #ended: Promise<unknown> = Promise.resolve();

  constructor(readonly id: string, readonly port: number) {}

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  /** Starts it; resolves once it listens. */
  async start(): Promise<void> {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net", `${here}backend.ts`, String(this.port), this.id],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes(READY)) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`backend ${this.id} ended before listening: ${text}`);
      text += value;
    }
    if (readyPort(text.trim()) !== this.port) throw new Error(`backend ${this.id}: ${text}`);
    // Keep draining its stderr so it never blocks on a full pipe.
    this.#ended = (async () => {
      while (!(await lines.read()).done);
    })().catch(() => {});
  }

  /** `kill -9`, and waits for it to be gone. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (child === undefined) return;
    this.#child = undefined;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
    await this.#ended;
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
      drain_timeout_ms: 10_000,
    },
    null,
    2,
  );
}

/** Starts the balancer on `configFile` with the engine asked for, under a descriptor limit. */
export function startSoakBalancer(
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

/** The admin API of a running balancer. */
export class Admin {
  constructor(readonly port: number, readonly token: string) {}

  /** Sums every series of `metric` in /metrics; undefined when the API does not answer. */
  async metric(metric: string): Promise<number | undefined> {
    try {
      const response = await fetch(`http://127.0.0.1:${this.port}/metrics`, {
        signal: AbortSignal.timeout(2000),
      });
      const text = await response.text();
      let sum = 0;
      for (const line of text.split("\n")) {
        if (line.startsWith(`${metric}{`) || line.startsWith(`${metric} `)) {
          sum += Number(line.slice(line.lastIndexOf(" ") + 1));
        }
      }
      return sum;
    } catch {
      return undefined;
    }
  }

  /** `POST /api/backends/web/ADDRESS/ACTION`; throws unless 200. */
  async change(address: string, action: "drain" | "enable"): Promise<void> {
    const url = `http://127.0.0.1:${this.port}/api/backends/web/${
      encodeURIComponent(address)
    }/${action}`;
    const response = await fetch(url, {
      method: "POST",
      headers: { authorization: `Bearer ${this.token}` },
      signal: AbortSignal.timeout(5000),
    });
    const body = await response.text();
    if (response.status !== 200) {
      throw new Error(`${action} ${address}: ${response.status} ${body}`);
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
