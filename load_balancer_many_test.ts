/**
 * Many connections at once: one balancer process holds 10,000 proxied
 * connections, then serves a new client, and says what each connection cost
 * it in memory. `deno task test` runs it once per engine.
 *
 * Each proxied connection costs the balancer two descriptors (client and
 * backend), so 10,000 of them need a descriptor limit above 20,000. The
 * balancer runs under `ulimit -n` set to what the run needs, as far as the
 * hard limit allows; where the hard limit is lower (and only root could raise
 * it), the test holds as many as fit and prints a line saying so and why.
 *
 * The backends are two lab backends (backend.ts), each its own process, so
 * this process holds only the client sockets; every connection is proven
 * proxied by a line sent through it and answered by a backend.
 *
 * @module
 */

import assert from "node:assert/strict";
import { readyPort } from "./events.ts";
import { eachLine } from "./io.ts";
import {
  type BalancerProcess,
  connectLoopback,
  startBalancerProcess,
  TEST_ENGINE,
  writeAll,
} from "./test_util.ts";

/** Connections the test means to hold at once. */
const WANTED = 10_000;
/**
 * Descriptors the balancer needs besides two per connection: its own (about
 * 25 fresh, a few more with data-plane threads), the admin API's, and the
 * new client's two, with room to spare.
 */
const MARGIN = 128;
/** Connects in flight at once: well inside every listen backlog on the way. */
const BATCH = 200;

/** Runs a command and returns what it printed; it must succeed. */
async function output(program: string, args: string[]): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command(program, { args }).output();
  const decoder = new TextDecoder();
  if (code !== 0) throw new Error(`${program} ${args.join(" ")}: ${decoder.decode(stderr)}`);
  return decoder.decode(stdout);
}

/**
 * The hard limit on open descriptors a child of this process gets
 * (`Infinity` for unlimited). Read through a shell: Deno wants --allow-all
 * to read /proc files itself.
 */
async function hardOpenFileLimit(): Promise<number> {
  const text = (await output("sh", ["-c", "ulimit -Hn"])).trim();
  return text === "unlimited" ? Infinity : Number(text);
}

/** A process's resident memory, in KiB, from `/proc/PID/status`. */
async function rssKiB(pid: number): Promise<number> {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(await output("cat", [`/proc/${pid}/status`]));
  if (match === null) throw new Error(`no VmRSS line in /proc/${pid}/status`);
  return Number(match[1]);
}

/** A lab backend (backend.ts) in its own process, on a free port. */
interface BackendProcess {
  readonly port: number;
  close(): Promise<void>;
}

async function startBackendProcess(id: string): Promise<BackendProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "backend.ts", "0", id],
    cwd: new URL(".", import.meta.url).pathname,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const ready = Promise.withResolvers<number>();
  const said: string[] = [];
  const reading = eachLine(child.stderr, (line) => {
    said.push(line);
    const port = readyPort(line);
    if (port !== undefined) ready.resolve(port);
  }).then(() => ready.reject(new Error(`backend ${id} ended: ${said.join("\n")}`)));
  const close = async () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
    await reading;
  };
  try {
    return { port: await ready.promise, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/** Sends `line` and reads the one-line answer; rejects if the connection ends first. */
async function ask(conn: Deno.Conn, line: string): Promise<string> {
  await writeAll(conn, new TextEncoder().encode(`${line}\n`));
  const buffer = new Uint8Array(64);
  let answer = "";
  while (!answer.endsWith("\n")) {
    const read = await conn.read(buffer);
    if (read === null) throw new Error(`closed before answering ${line}; got ${answer}`);
    answer += new TextDecoder().decode(buffer.subarray(0, read));
  }
  return answer;
}

/** The balancer's connections in progress to each backend, from its admin API. */
async function activeByBackend(base: string): Promise<number[]> {
  const backends: { active: number }[] = await (await fetch(`${base}/api/backends`)).json();
  return backends.map((backend) => backend.active);
}

Deno.test({
  name:
    `one balancer holds 10,000 proxied connections (or as many as the descriptor limit allows) and serves a new client (${TEST_ENGINE} engine)`,
  ignore: Deno.build.os !== "linux", // /proc for the memory
  async fn() {
    const hard = await hardOpenFileLimit();
    // Raised (or lowered) to what the run needs, and never past the hard limit.
    const maxOpenFiles = Math.min(hard, 2 * WANTED + MARGIN);
    const count = Math.min(WANTED, Math.floor((hard - MARGIN) / 2));
    console.log(
      `many connections (${TEST_ENGINE}): the balancer runs under ulimit -n ${maxOpenFiles}` +
        (count < WANTED
          ? `; holding ${count}, not ${WANTED}: the hard limit is ${hard} descriptors per ` +
            `process (raising it needs CAP_SYS_RESOURCE), and the balancer needs 2 per proxied ` +
            `connection plus ${MARGIN} of its own`
          : ""),
    );
    const backends = [await startBackendProcess("1"), await startBackendProcess("2")];
    const held: Deno.TcpConn[] = [];
    let lb: BalancerProcess | undefined;
    try {
      lb = await startBalancerProcess([
        ...backends.flatMap((b) => ["--backend", `127.0.0.1:${b.port}`]),
        "--maxconn",
        String(count + MARGIN),
        "--admin",
        "127.0.0.1:0",
      ], { maxOpenFiles, permissions: ["--allow-net", "--allow-env=LB_ADMIN_TOKEN"] });
      const base = /(http:\/\/\S+) /.exec(await lb.waitForLine("stderr", /admin API on /))![1]!;
      // One connection first, so what is measured is the connections, not the first use.
      const warm = await connectLoopback(lb.port);
      try {
        assert.match(await ask(warm, "warm"), /^\[Server [12]\] warm\n$/);
      } finally {
        warm.close();
      }
      const before = await rssKiB(lb.pid);

      for (let start = 0; start < count; start += BATCH) {
        const batch = Array.from({ length: Math.min(BATCH, count - start) }, async (_, i) => {
          const conn = await connectLoopback(lb!.port);
          held.push(conn);
          const answer = await ask(conn, `c${start + i}`);
          assert.match(answer, new RegExp(`^\\[Server [12]\\] c${start + i}\\n$`));
        });
        // Every one settled before the next batch (or before cleaning up after a failure).
        const failed = (await Promise.allSettled(batch)).find((r) => r.status === "rejected");
        if (failed !== undefined) throw failed.reason;
      }
      assert.equal(held.length, count);

      // The balancer says so too: every one of them in progress, shared by the
      // two backends (data-plane threads report in batches: ask until it shows).
      let active = await activeByBackend(base);
      for (let i = 0; i < 200 && active.reduce((a, b) => a + b, 0) !== count; i++) {
        await new Promise((resolve) => setTimeout(resolve, 25));
        active = await activeByBackend(base);
      }
      assert.equal(active.reduce((a, b) => a + b, 0), count, `active per backend: ${active}`);
      assert.ok(Math.abs(active[0]! - active[1]!) <= 1, `round robin: ${active}`);

      const after = await rssKiB(lb.pid);
      console.log(
        `memory per connection (${TEST_ENGINE} engine): ${((after - before) / count).toFixed(1)} ` +
          `KiB, over ${count} held proxied connections (balancer RSS ${before} KiB -> ${after} KiB)`,
      );

      // A new client is served while all of them are held, and the oldest and
      // newest held ones still carry bytes.
      const fresh = await connectLoopback(lb.port);
      try {
        assert.match(await ask(fresh, "new"), /^\[Server [12]\] new\n$/);
      } finally {
        fresh.close();
      }
      assert.match(await ask(held[0]!, "first"), /^\[Server [12]\] first\n$/);
      assert.match(await ask(held.at(-1)!, "last"), /^\[Server [12]\] last\n$/);
    } finally {
      for (const conn of held) conn.close();
      await lb?.close();
      for (const backend of backends) await backend.close();
    }
  },
});
