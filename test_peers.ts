/**
 * Real servers for the discovery tests, started on loopback ports: Debian's
 * `dnsmasq` (A and AAAA records from a hosts file it re-reads on SIGHUP; SRV
 * records from its command line, so changing them means a restart) and
 * `etcd` (etcd-server). A test that needs one skips, saying what to install,
 * where it is missing; `.ci/run` installs both.
 *
 * @module
 */

import { until } from "./test_util.ts";

/** Whether `program` is on the PATH; if not, says which package to install. */
export async function have(program: string, debianPackage: string): Promise<boolean> {
  const found = await new Deno.Command("bash", { args: ["-c", `command -v ${program}`] })
    .output();
  if (found.code === 0) return true;
  console.error(`${program} not found (apt-get install ${debianPackage}): its tests are skipped`);
  return false;
}

/** A port no TCP socket is bound to now (dnsmasq takes it for UDP and TCP). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** An SRV record: `--srv-host=NAME,TARGET,PORT,PRIORITY,WEIGHT`. */
export interface SrvRecord {
  name: string;
  target: string;
  port: number;
  priority: number;
  weight: number;
}

/** A dnsmasq answering for `*.service.test` only. */
export class Dnsmasq {
  readonly port = freePort();
  readonly #hosts: string;
  #srv: SrvRecord[] = [];
  #child: Deno.ChildProcess | undefined;

  constructor(readonly directory: string) {
    this.#hosts = `${directory}/hosts`;
  }

  /** `127.0.0.1:PORT`, for `resolver:`. */
  get resolver(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Writes the hosts file (`ADDRESS NAME` lines); call {@linkcode reread} to apply it. */
  async writeHosts(lines: string[]): Promise<void> {
    await Deno.writeTextFile(this.#hosts, lines.join("\n") + "\n");
  }

  /** Starts it (again) with these SRV records. */
  async start(srv: SrvRecord[] = this.#srv): Promise<void> {
    this.#srv = srv;
    await this.stop();
    this.#child = new Deno.Command("dnsmasq", {
      args: [
        "--no-daemon",
        `--port=${this.port}`,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--local=/service.test/",
        `--addn-hosts=${this.#hosts}`,
        ...srv.map((r) => `--srv-host=${r.name},${r.target},${r.port},${r.priority},${r.weight}`),
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    // Up once it answers (a name it does not know is NXDOMAIN, an answer too).
    await until(
      async () => {
        try {
          await Deno.resolveDns("ready.service.test", "A", {
            nameServer: { ipAddr: "127.0.0.1", port: this.port },
            signal: AbortSignal.timeout(500),
          });
          return true;
        } catch (error) {
          return error instanceof Deno.errors.NotFound;
        }
      },
      "dnsmasq answers",
      200,
      25,
    );
  }

  /** SIGHUP: it reads the hosts file again. */
  reread(): void {
    this.#child?.kill("SIGHUP");
  }

  async stop(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (child === undefined) return;
    child.kill("SIGKILL");
    await child.status;
  }
}

/** One etcd member on loopback, its data in `directory`. */
export class Etcd {
  readonly clientPort = freePort();
  readonly #peerPort = freePort();
  #child: Deno.ChildProcess | undefined;

  constructor(readonly directory: string) {}

  /** `http://127.0.0.1:PORT` */
  get endpoint(): string {
    return `http://127.0.0.1:${this.clientPort}`;
  }

  async start(): Promise<void> {
    const client = this.endpoint;
    const peer = `http://127.0.0.1:${this.#peerPort}`;
    this.#child = new Deno.Command("etcd", {
      args: [
        "--data-dir",
        `${this.directory}/etcd`,
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        `default=${peer}`,
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    await until(
      async () => {
        try {
          const response = await fetch(`${client}/health`, { signal: AbortSignal.timeout(500) });
          const body = await response.json() as { health?: string };
          return body.health === "true";
        } catch {
          return false;
        }
      },
      "etcd is healthy",
      400,
      50,
    );
  }

  async stop(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (child === undefined) return;
    child.kill("SIGTERM");
    await child.status;
  }

  /** Puts `value` (JSON-encoded unless a string) at `key`. */
  put(key: string, value: unknown): Promise<void> {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return this.#call("/v3/kv/put", { key: encode(key), value: encode(text) });
  }

  delete(key: string): Promise<void> {
    return this.#call("/v3/kv/deleterange", { key: encode(key) });
  }

  async #call(path: string, body: unknown): Promise<void> {
    const response = await fetch(`${this.endpoint}${path}`, {
      method: "POST",
      body: JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`etcd ${path}: ${response.status} ${text}`);
  }
}

function encode(text: string): string {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}
