/**
 * Helpers shared by the tests: loopback servers on port 0, a balancer that
 * records its events, and small socket utilities. Every server started here
 * is closed by its `close()`, so the tests run with leak checks on.
 *
 * @module
 */

import net from "node:net";
import { Buffer } from "node:buffer";
import { type HostPort } from "./address.ts";
import { answerLines } from "./lab.ts";
import type { Strategy } from "./balancer.ts";
import type { BufferPool } from "./buffers.ts";
import type { Clock } from "./clock.ts";
import { DenoEngine, type Dialer, listenerOf } from "./engine_deno.ts";
import { EpollEngine } from "./engine_epoll.ts";
import { closeQuietly } from "./errors.ts";
import { type LoadBalancerEvent, readyPort } from "./events.ts";
import type { HealthSettings } from "./health.ts";
import type { Probe } from "./health_check.ts";
import { eachLine, writeAll } from "./io.ts";
import { Backend, Pool } from "./pool.ts";
import { LoadBalancer } from "./proxy.ts";
import { V8_FLAGS } from "./supervisor.ts";

export { closeQuietly, writeAll };

/**
 * The engine the in-process tests run on: `LB_TEST_ENGINE=epoll` (Linux,
 * `--allow-ffi`) or `deno` (the default). CI runs the suite once with each.
 */
export const TEST_ENGINE: "deno" | "epoll" = testEngine();

function testEngine(): "deno" | "epoll" {
  if (Deno.env.get("LB_TEST_ENGINE") !== "epoll") return "deno";
  if (Deno.build.os === "linux") return "epoll";
  console.log(
    `LB_TEST_ENGINE=epoll needs Linux (this is ${Deno.build.os}): testing the deno engine`,
  );
  return "deno";
}

/**
 * A clock that moves only when told: timers fire in deadline order as
 * {@linkcode FakeClock.tick} passes them, with pending promise callbacks run
 * after each, so timing logic is tested exactly and without waiting.
 */
export class FakeClock implements Clock {
  #now = 0;
  #nextId = 1;
  readonly #timers = new Map<number, { at: number; callback: () => void }>();

  now(): number {
    return this.#now;
  }

  setTimer(callback: () => void, ms: number): number {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), callback });
    return id;
  }

  clearTimer(id: number | undefined): void {
    if (id !== undefined) this.#timers.delete(id);
  }

  /** Timers set and not yet fired or cleared. */
  get pending(): number {
    return this.#timers.size;
  }

  /** Moves time to the next timer and fires it (and only it). */
  async next(): Promise<void> {
    let next: [number, { at: number; callback: () => void }] | undefined;
    for (const entry of this.#timers) {
      if (next === undefined || entry[1].at < next[1].at) next = entry;
    }
    if (next === undefined) throw new Error("FakeClock.next(): no timer is set");
    this.#timers.delete(next[0]);
    this.#now = Math.max(this.#now, next[1].at);
    next[1].callback();
    await settle();
  }

  /** Moves time on to `time` (absolute), firing every timer due on the way. */
  advanceTo(time: number): Promise<void> {
    return this.tick(time - this.#now);
  }

  /** Moves time on by `ms`, firing every timer due on the way, in order. */
  async tick(ms: number): Promise<void> {
    const end = this.#now + ms;
    while (true) {
      let next: [number, { at: number; callback: () => void }] | undefined;
      for (const entry of this.#timers) {
        if (entry[1].at <= end && (next === undefined || entry[1].at < next[1].at)) next = entry;
      }
      if (next === undefined) break;
      this.#timers.delete(next[0]);
      this.#now = next[1].at;
      next[1].callback();
      await settle();
    }
    this.#now = end;
    await settle();
  }
}

/** Lets promise callbacks (and the I/O they wait for, briefly) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * Waits, one turn of the event loop at a time, until `check()` holds: a wait
 * on a state, bounded by a count of turns, not by a time. A check that asks
 * another process (the soak's) may be async, and pause `pauseMs` between
 * turns. @throws naming `what`
 */
export async function until(
  check: () => boolean | Promise<boolean>,
  what: string,
  turns = 10_000,
  pauseMs = 0,
): Promise<void> {
  for (let i = 0; i < turns; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, pauseMs));
  }
  throw new Error(`never happened: ${what}`);
}

/** The `N` of a lab backend's answer `[Server N] …`, or the answer itself. */
export function serverOf(answer: string): string {
  return /^\[Server ([^\]]+)\]/.exec(answer)?.[1] ?? answer;
}

/** A server started for a test. */
export interface TestServer {
  readonly address: HostPort;
  readonly port: number;
  /** Stops accepting and waits until every connection it served has closed. */
  close(): Promise<void>;
}

/** Listens on 127.0.0.1 (or another loopback address) on a free port (or the one given). */
export function listenLoopback(
  options: { tcpBacklog?: number; hostname?: string; port?: number } = {},
): Deno.TcpListener {
  return Deno.listen({ hostname: "127.0.0.1", port: 0, ...options });
}

/** Accepts connections and runs `handle` on each, until closed. */
export function startServer(
  handle: (conn: Deno.TcpConn) => Promise<void>,
  where: { hostname?: string; port?: number } = {},
): TestServer {
  const listener = listenLoopback(where);
  const connections = new Set<Promise<void>>();
  const accepting = (async () => {
    while (true) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (error instanceof Deno.errors.NotConnected) continue;
        return;
      }
      const done = handle(conn).catch(() => {}).finally(() => {
        closeQuietly(conn);
      });
      connections.add(done);
      done.finally(() => connections.delete(done));
    }
  })();
  const { hostname, port } = listener.addr;
  return {
    address: { hostname, port },
    port,
    async close() {
      listener.close();
      await accepting;
      await Promise.all(connections);
    },
  };
}

/** A backend that sends back every byte it receives, and ends its stream when the client does. */
export function startEchoServer(): TestServer {
  return startServer(async (conn) => {
    const buffer = new Uint8Array(65536);
    while (true) {
      const read = await conn.read(buffer);
      if (read === null) break;
      await writeAll(conn, buffer.subarray(0, read));
    }
    await conn.closeWrite();
  });
}

/** A lab backend answering `[Server ID] <line>`. */
export function startTaggedServer(id: string): TestServer {
  return startServer((conn) => answerLines(conn, id));
}

/** A UDP socket of Deno's on a loopback address (127.0.0.1 unless told), port 0. */
export function udpLoopback(hostname = "127.0.0.1"): Deno.DatagramConn {
  return Deno.listenDatagram({ hostname, port: 0, transport: "udp" });
}

/** A UDP server on loopback: what it received (bytes and from where) and its socket. */
export interface UdpTestServer {
  readonly address: HostPort;
  readonly port: number;
  /** Every datagram it received, in order, with its sender. */
  readonly received: { bytes: Uint8Array; from: Deno.NetAddr }[];
  close(): Promise<void>;
}

/**
 * A UDP backend: answers each datagram with `answer(bytes)` (one datagram
 * each, none for an empty list), by default `[Server ID] ` and the bytes.
 */
export function startUdpServer(
  id: string,
  answer: (bytes: Uint8Array) => Uint8Array[] = (bytes) => [tagged(id, bytes)],
  where: { hostname?: string; port?: number } = {},
): UdpTestServer {
  const conn = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, ...where, transport: "udp" });
  const received: { bytes: Uint8Array; from: Deno.NetAddr }[] = [];
  let closed = false;
  const serving = (async () => {
    while (!closed) {
      let datagram: [Uint8Array, Deno.Addr];
      try {
        datagram = await conn.receive();
      } catch {
        if (closed) return;
        continue;
      }
      const from = datagram[1] as Deno.NetAddr;
      received.push({ bytes: datagram[0], from });
      for (const reply of answer(datagram[0])) await conn.send(reply, from).catch(() => {});
    }
  })();
  const { hostname, port } = conn.addr as Deno.NetAddr;
  return {
    address: { hostname, port },
    port,
    received,
    async close() {
      closed = true;
      conn.close();
      await serving;
    },
  };
}

/** `[Server ID] ` followed by `bytes`: what a lab UDP backend answers. */
export function tagged(id: string, bytes: Uint8Array): Uint8Array {
  const tag = new TextEncoder().encode(`[Server ${id}] `);
  const out = new Uint8Array(tag.length + bytes.length);
  out.set(tag);
  out.set(bytes, tag.length);
  return out;
}

/**
 * A UDP client on loopback that sends to `port` and collects what comes back
 * from there (and from nowhere else).
 */
export class UdpTestClient {
  readonly #conn: Deno.DatagramConn;
  readonly #to: Deno.NetAddr;
  readonly #waiting: PromiseWithResolvers<[Uint8Array, Deno.NetAddr]>[] = [];
  readonly #queued: [Uint8Array, Deno.NetAddr][] = [];
  #closed = false;
  readonly #receiving: Promise<void>;

  constructor(port: number, options: { hostname?: string; to?: string } = {}) {
    this.#conn = Deno.listenDatagram({
      hostname: options.hostname ?? "127.0.0.1",
      port: 0,
      transport: "udp",
    });
    this.#to = { transport: "udp", hostname: options.to ?? "127.0.0.1", port };
    this.#receiving = this.#receiveAll();
  }

  async #receiveAll(): Promise<void> {
    while (!this.#closed) {
      let datagram: [Uint8Array, Deno.Addr];
      try {
        datagram = await this.#conn.receive();
      } catch {
        if (this.#closed) return;
        continue;
      }
      const item: [Uint8Array, Deno.NetAddr] = [datagram[0], datagram[1] as Deno.NetAddr];
      // Only what the address it sends to sends back: a datagram late for an
      // earlier socket on this port (test files run side by side) is not ours.
      if (item[1].port !== this.#to.port) continue;
      const waiter = this.#waiting.shift();
      if (waiter) waiter.resolve(item);
      else this.#queued.push(item);
    }
  }

  /** This client's own address. */
  get address(): Deno.NetAddr {
    return this.#conn.addr as Deno.NetAddr;
  }

  async send(bytes: Uint8Array | string): Promise<void> {
    const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
    await this.#conn.send(data, this.#to);
  }

  /**
   * The next datagram that arrives, and who sent it. Rejects if none comes
   * within `ms`: a guard against a hang (UDP says nothing of a datagram
   * lost), not a bound on speed.
   */
  receive(ms = 30_000): Promise<[Uint8Array, Deno.NetAddr]> {
    const queued = this.#queued.shift();
    if (queued) return Promise.resolve(queued);
    const waiter = Promise.withResolvers<[Uint8Array, Deno.NetAddr]>();
    this.#waiting.push(waiter);
    const timer = setTimeout(() => {
      const at = this.#waiting.indexOf(waiter);
      if (at >= 0) this.#waiting.splice(at, 1);
      waiter.reject(new Error(`no datagram came back within ${ms} ms`));
    }, ms);
    return waiter.promise.finally(() => clearTimeout(timer));
  }

  /** Sends `text` and returns the answer as text. */
  async ask(text: string): Promise<string> {
    await this.send(text);
    return new TextDecoder().decode((await this.receive())[0]);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#conn.close();
    await this.#receiving;
    for (const waiter of this.#waiting.splice(0)) waiter.reject(new Error("closed"));
  }
}

/** Whether `promtool` (Debian's prometheus package) is installed; tests that need it skip without. */
export const HAVE_PROMTOOL =
  (await new Deno.Command("bash", { args: ["-c", "command -v promtool"] }).output()).code === 0;

/** What `promtool check metrics` says of `text`: its exit code and output. */
export async function promtoolCheck(text: string): Promise<{ code: number; said: string }> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  return { code, said: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
}

/** A port on 127.0.0.1 where nothing listens: connects to it are refused. */
export function refusingAddress(): HostPort {
  const listener = listenLoopback();
  const port = listener.addr.port;
  listener.close();
  return { hostname: "127.0.0.1", port };
}

/**
 * An address that never answers a connect: a listener with no room in its
 * accept queue, already filled by one connection nobody accepts. The kernel
 * drops further handshakes, so a connect waits until its own timeout.
 */
export async function silentAddress(): Promise<TestServer> {
  const listener = listenLoopback({ tcpBacklog: 0 });
  const port = listener.addr.port;
  const filler = await Deno.connect({ hostname: "127.0.0.1", port });
  return {
    address: { hostname: "127.0.0.1", port },
    port,
    close() {
      filler.close();
      listener.close();
      return Promise.resolve();
    },
  };
}

export interface TestBalancer {
  readonly balancer: LoadBalancer;
  readonly pool: Pool;
  readonly port: number;
  readonly events: LoadBalancerEvent[];
  readonly backends: Backend[];
  /** Shuts down (cutting anything left at once) and waits for the accept loop. */
  close(): Promise<void>;
}

/** What a test may set on the balancer it starts (the listener's and the pool's settings). */
export interface TestBalancerOptions {
  strategy?: Strategy<Backend>;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  halfClosedTimeoutMs?: number;
  maxConnections?: number;
  queue?: { max?: number; timeoutMs?: number };
  health?: HealthSettings;
  healthCheck?: { probe: Probe; intervalMs: number };
  dial?: Dialer;
  reset?: (conn: Deno.Conn) => boolean;
  pools?: { small: BufferPool; large: BufferPool };
  listener?: Deno.TcpListener;
  clock?: Clock;
}

/** Starts a {@linkcode LoadBalancer} over the given backend addresses, on the `deno` engine. */
export function startBalancer(
  addresses: HostPort[],
  options: TestBalancerOptions = {},
): TestBalancer {
  const events: LoadBalancerEvent[] = [];
  const onEvent = (event: LoadBalancerEvent) => events.push(event);
  const backends = addresses.map((address) => new Backend(address));
  const clock = options.clock;
  const pool = new Pool({
    backends,
    ...(options.strategy ? { strategy: options.strategy } : {}),
    settings: {
      ...(options.connectTimeoutMs ? { connectTimeoutMs: options.connectTimeoutMs } : {}),
      ...(options.idleTimeoutMs ? { idleTimeoutMs: options.idleTimeoutMs } : {}),
      ...(options.halfClosedTimeoutMs ? { halfClosedTimeoutMs: options.halfClosedTimeoutMs } : {}),
    },
    ...(options.queue ? { queue: options.queue } : {}),
    ...(options.health ? { health: options.health } : {}),
    ...(options.healthCheck ? { healthCheck: options.healthCheck } : {}),
    ...(clock ? { clock } : {}),
    onEvent,
  });
  // A test that hands in Deno's own sockets (a dialer, a listener, buffer
  // pools) is about the deno engine; the rest run on the engine under test.
  const denoOnly = options.dial !== undefined || options.listener !== undefined ||
    options.pools !== undefined;
  const epoll = TEST_ENGINE === "epoll" && !denoOnly
    ? new EpollEngine(clock ? { clock } : {})
    : undefined;
  const engine = epoll ?? new DenoEngine({
    ...(options.dial ? { dial: options.dial } : {}),
    ...(options.reset ? { reset: options.reset } : {}),
    ...(options.pools ? { pools: options.pools } : {}),
    ...(clock ? { clock } : {}),
  });
  const balancer = new LoadBalancer({
    listener: epoll
      ? epoll.listen({ hostname: "127.0.0.1", port: 0 })
      : listenerOf(options.listener ?? listenLoopback()),
    engine,
    pool,
    ...(options.maxConnections ? { maxConnections: options.maxConnections } : {}),
    ...(clock ? { clock } : {}),
    onEvent,
  });
  pool.start();
  const serving = balancer.serve();
  return {
    balancer,
    pool,
    port: balancer.address.port,
    events,
    backends,
    async close() {
      const shutdown = balancer.shutdown(0);
      // On a fake clock, the drain timeout passes only when told to.
      if (clock instanceof FakeClock) await clock.tick(0);
      await shutdown;
      await serving;
      await pool.stop();
      await epoll?.dispose();
    },
  };
}

/** The access records among a balancer's events, in the order they finished. */
export function accessRecords(events: LoadBalancerEvent[]) {
  return events.flatMap((event) => event.type === "connection" ? [event.record] : []);
}

/** Connects to 127.0.0.1:port with Nagle off. */
export async function connectLoopback(port: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  return conn;
}

/** Sends `text` and checks the same text comes back (from an echo backend). */
export async function roundTrip(conn: Deno.Conn, text: string): Promise<void> {
  await writeAll(conn, new TextEncoder().encode(text));
  const buffer = new Uint8Array(new TextEncoder().encode(text).length);
  let got = 0;
  while (got < buffer.length) {
    const read = await conn.read(buffer.subarray(got));
    if (read === null) throw new Error(`closed after ${got} bytes of a round trip`);
    got += read;
  }
  if (new TextDecoder().decode(buffer) !== text) {
    throw new Error(`round trip of ${JSON.stringify(text)} came back different`);
  }
}

/** Reads until the peer ends its stream; a reset rejects. */
export async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const buffer = new Uint8Array(65536);
  while (true) {
    const read = await conn.read(buffer);
    if (read === null) break;
    chunks.push(buffer.slice(0, read));
    total += read;
  }
  const all = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  return all;
}

/** Sends `text`, half-closes, and returns everything answered until the server's end. */
export async function exchange(port: number, text: string): Promise<string> {
  const conn = await connectLoopback(port);
  try {
    await writeAll(conn, new TextEncoder().encode(text));
    await conn.closeWrite();
    return new TextDecoder().decode(await readAll(conn));
  } finally {
    conn.close();
  }
}

/**
 * Like {@linkcode exchange}, from a chosen loopback source address
 * (127.0.0.x), which Deno.connect cannot pick; node:net can.
 */
export function exchangeFrom(localAddress: string, port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", reject);
    socket.on("end", () => socket.destroy());
    socket.on("close", () => resolve(Buffer.concat(chunks).toString()));
    socket.once("connect", () => socket.end(text));
  });
}

/** A seeded generator of numbers in [0, 1) (mulberry32): the same seed, the same sequence. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` bytes from {@linkcode seededRandom}, the same for the same seed. */
export function seededBytes(count: number, seed: number): Uint8Array {
  const next = seededRandom(seed);
  const bytes = new Uint8Array(count);
  for (let i = 0; i < count; i++) bytes[i] = (next() * 256) | 0;
  return bytes;
}

/** Runs a Deno script of this project in a child process and collects its output. */
export async function runScript(
  script: string,
  args: string[],
  options: { stdin?: string; permissions?: string[]; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", ...(options.permissions ?? ["--allow-net"]), script, ...args],
    cwd: new URL(".", import.meta.url).pathname,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...options.env },
  });
  const child = command.spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
  const decoder = new TextDecoder();
  return { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr) };
}

/** `load_balancer.ts` running as its own process, with its output collected line by line. */
export interface BalancerProcess {
  readonly port: number;
  readonly pid: number;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly status: Promise<Deno.CommandStatus>;
  /** Resolves with the first line (past or future) matching `pattern`. */
  waitForLine(stream: "stdout" | "stderr", pattern: RegExp, timeoutMs?: number): Promise<string>;
  kill(signal: Deno.Signal): void;
  /** Kills it if still running and waits for it and its output to end. */
  close(): Promise<void>;
}

/**
 * Starts `deno run --allow-net load_balancer.ts --listen 127.0.0.1:0 ARGS`
 * (with `deno task lb`'s V8 flags)
 * and waits until it listens (with `--workers`, until every worker does).
 * With `maxOpenFiles`, it runs under that descriptor limit (`ulimit -n`).
 */
export async function startBalancerProcess(
  args: string[],
  options: { maxOpenFiles?: number; permissions?: string[]; listen?: boolean } = {},
): Promise<BalancerProcess> {
  const supervised = args.includes("--workers");
  // The engine under test, unless the test names one.
  const engine = args.includes("--engine") || TEST_ENGINE === "deno" ? [] : ["--engine", "epoll"];
  const permissions = [
    ...(options.permissions ??
      (supervised ? ["--allow-net", "--allow-run", "--unstable-net"] : ["--allow-net"])),
    // The data-plane threads load their code from this folder (a bare
    // --allow-read covers it; a scoped one would narrow it).
    ...(engine.length > 0 ? ["--allow-ffi"] : []),
    ...(engine.length > 0 && !(options.permissions ?? []).includes("--allow-read")
      ? [`--allow-read=${new URL(".", import.meta.url).pathname}`]
      : []),
  ];
  // With the V8 flags `deno task lb` runs it with (the soak measures its memory).
  const deno = [Deno.execPath(), "run", V8_FLAGS, ...permissions, "load_balancer.ts"];
  const listen = options.listen === false ? [] : ["--listen", "127.0.0.1:0"];
  // The tests read access lines as text; piped, the default would be JSON.
  const format = args.includes("--log-format") ? [] : ["--log-format", "text"];
  const command = [...deno, ...listen, ...format, ...engine, ...args];
  // `exec` keeps the pid: the process we signal and measure is the balancer itself.
  const [program, ...programArgs] = options.maxOpenFiles === undefined
    ? command
    : ["bash", "-c", `ulimit -n ${options.maxOpenFiles} && exec "$@"`, "bash", ...command];
  const child = new Deno.Command(program!, {
    args: programArgs,
    cwd: new URL(".", import.meta.url).pathname,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const lines = { stdout: [] as string[], stderr: [] as string[] };
  const waiters: { stream: "stdout" | "stderr"; pattern: RegExp; found(line: string): void }[] = [];
  const collect = (stream: "stdout" | "stderr", readable: ReadableStream<Uint8Array>) =>
    eachLine(readable, (line) => {
      lines[stream].push(line);
      for (const waiter of waiters.filter((w) => w.stream === stream)) {
        if (waiter.pattern.test(line)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.found(line);
        }
      }
    });
  const reading = Promise.all([
    collect("stdout", child.stdout),
    collect("stderr", child.stderr),
  ]);
  const waitForLine = (stream: "stdout" | "stderr", pattern: RegExp, timeoutMs = 10_000) => {
    const seen = lines[stream].find((line) => pattern.test(line));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        reject(
          new Error(
            `no ${stream} line matching ${pattern} in ${timeoutMs} ms; stderr so far:\n${
              lines.stderr.join("\n")
            }`,
          ),
        );
      }, timeoutMs);
      const waiter = {
        stream,
        pattern,
        found(line: string) {
          clearTimeout(timer);
          resolve(line);
        },
      };
      waiters.push(waiter);
    });
  };
  let exited = false;
  const status = child.status.finally(() => exited = true);
  const kill = (signal: Deno.Signal) => {
    if (!exited) child.kill(signal);
  };
  const close = async () => {
    // A supervisor's workers share its stdout: they go first, or the output
    // would stay open behind them. (`workers:` may come from a config file,
    // so this looks whatever the flags say.)
    if (!exited) {
      const { stdout } = await new Deno.Command("pgrep", { args: ["-P", String(child.pid)] })
        .output();
      for (const pid of new TextDecoder().decode(stdout).split("\n").filter(Boolean)) {
        try {
          Deno.kill(Number(pid), "SIGKILL");
        } catch {
          // Already gone.
        }
      }
    }
    kill("SIGKILL");
    await status;
    await reading;
  };
  try {
    const listening = await waitForLine(
      "stderr",
      supervised ? /^\S+ load_balancer: listening on .* with \d+ workers$/ : /listening on /,
    );
    const port = readyPort(listening)!;
    return { port, pid: child.pid, ...lines, status, waitForLine, kill, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/**
 * A balancer process on a config file written into `dir`, with its admin API
 * on a free loopback port (`admin:` is appended) and the token to call it.
 */
export async function startBalancerWithAdmin(
  dir: string,
  config: string,
  options: { token: string; permissions: string[]; adminPort?: number },
) {
  await Deno.writeTextFile(`${dir}/token`, options.token);
  const file = `${dir}/lb-${crypto.randomUUID()}.yaml`;
  await Deno.writeTextFile(
    file,
    config +
      `admin: { listen: "127.0.0.1:${options.adminPort ?? 0}", token_file: ${dir}/token }\n`,
  );
  const lb = await startBalancerProcess(["--config", file], {
    permissions: options.permissions,
    listen: false,
  });
  const base = /(http:\/\/\S+) /.exec(await lb.waitForLine("stderr", /admin API on /))![1]!;
  /** Calls the admin API with the token; the body as JSON (as text for /metrics). */
  const call = async (method: string, path: string, body?: unknown) => {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${options.token}` },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    return { status: response.status, body: path === "/metrics" ? text : JSON.parse(text) };
  };
  /** `GET /api/backends` of one pool. */
  const backends = async (pool: string) =>
    ((await call("GET", "/api/backends")).body as {
      pool: string;
      address: string;
      source: string;
      state: string;
      active: number;
      weight: number;
    }[]).filter((b) => b.pool === pool);
  return { lb, base, call, backends };
}

/**
 * `load_balancer.ts --config FILE --check` with `--allow-read --allow-env` and
 * any `more` permissions: its exit code, and what it printed (stdout and
 * stderr together).
 */
export async function checkConfigFile(
  file: string,
  more: string[] = [],
): Promise<{ code: number; said: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-env",
      ...more,
      "load_balancer.ts",
      "--config",
      file,
      "--check",
    ],
    cwd: new URL(".", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return { code, said: decoder.decode(stdout) + decoder.decode(stderr) };
}

// --- Property tests (fuzzing) ---------------------------------------------

/** Runs per property when `LB_FUZZ_RUNS` is not set: each property stays well under a second. */
export const DEFAULT_FUZZ_RUNS = 200;

/** The fast-check parameters {@linkcode fuzzParameters} gives. */
export interface FuzzParameters {
  readonly seed: number;
  readonly numRuns: number;
}

/**
 * Parameters for one fast-check property, printed so a failure can be
 * replayed: the seed is `LB_FUZZ_SEED` when set, else a fresh one; the runs
 * are `LB_FUZZ_RUNS` when set, else `runs` (a socket test asks for fewer).
 * fast-check's own failure message adds the seed and the path of the
 * shrunk counterexample.
 *
 * @throws {RangeError} when either variable is not a whole number
 */
export function fuzzParameters(name: string, runs = DEFAULT_FUZZ_RUNS): FuzzParameters {
  const seed = fuzzEnv("LB_FUZZ_SEED", -(2 ** 31), 2 ** 31 - 1) ??
    Math.floor(Math.random() * 2 ** 31);
  const numRuns = fuzzEnv("LB_FUZZ_RUNS", 1, 1_000_000) ?? runs;
  console.log(
    `fuzz ${name}: seed ${seed}, ${numRuns} runs ` +
      `(replay: LB_FUZZ_SEED=${seed} deno task test)`,
  );
  return { seed, numRuns };
}

function fuzzEnv(variable: string, min: number, max: number): number | undefined {
  // Without --allow-env the defaults apply, rather than a failed test.
  if (Deno.permissions.querySync({ name: "env", variable }).state !== "granted") return undefined;
  const text = Deno.env.get(variable);
  if (text === undefined || text === "") return undefined;
  const value = Number(text);
  if (!/^-?[0-9]+$/.test(text) || value < min || value > max) {
    throw new RangeError(`${variable} must be a whole number ${min}-${max}: got ${text}`);
  }
  return value;
}
