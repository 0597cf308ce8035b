/**
 * Measures three ways to bridge two sockets in Deno, to choose `bridge.ts`'s
 * design by numbers rather than taste:
 *
 * - `loop`: our `bridge()`, a `read()`/`write()` loop per direction;
 * - `pipe-conn`: `conn.readable.pipeTo(other.writable)` each way (loses
 *   half-close, denoland/deno#22258; measured for its cost only);
 * - `pipe-own`: `pipeTo` over streams built on `read()`/`write()`/`closeWrite()`.
 *
 * Each design runs as its own proxy process in front of an echo backend;
 * the figure is that process's own CPU time (utime + stime from
 * `/proc/PID/stat`) per small request on kept-alive connections, and per new
 * connection. Prints medians of several rounds. Linux only.
 *
 * `deno run -A bench/bridge_designs.ts [--rounds N]`
 *
 * @module
 */

import { bridge } from "../bridge.ts";
import { eachChunk, writeAll } from "../io.ts";
import { cpuSeconds } from "./proc.ts";
import { median } from "./stats.ts";

type Design = "loop" | "pipe-conn" | "pipe-own";
const DESIGNS: Design[] = ["loop", "pipe-own", "pipe-conn"];

// One buffer per direction, reused: safe because pipeTo waits for each write
// to finish before it pulls the next chunk (the writable's queue holds one).
function ownReadable(conn: Deno.Conn): ReadableStream<Uint8Array> {
  const buffer = new Uint8Array(32768);
  return new ReadableStream({
    async pull(controller) {
      const read = await conn.read(buffer);
      if (read === null) controller.close();
      else controller.enqueue(buffer.subarray(0, read));
    },
  }, { highWaterMark: 0 });
}

function ownWritable(conn: Deno.Conn): WritableStream<Uint8Array> {
  return new WritableStream({
    async write(chunk) {
      let written = 0;
      while (written < chunk.length) written += await conn.write(chunk.subarray(written));
    },
    close: () => conn.closeWrite(),
  });
}

async function proxyConnection(design: Design, client: Deno.TcpConn, backendPort: number) {
  const server = await Deno.connect({ hostname: "127.0.0.1", port: backendPort });
  client.setNoDelay(true);
  server.setNoDelay(true);
  const closeBoth = () => {
    for (const conn of [client, server]) {
      try {
        conn.close();
      } catch { /* closed */ }
    }
  };
  if (design === "loop") {
    await bridge(client, server);
  } else if (design === "pipe-conn") {
    await Promise.allSettled([
      client.readable.pipeTo(server.writable),
      server.readable.pipeTo(client.writable),
    ]);
    closeBoth();
  } else {
    await Promise.allSettled([
      ownReadable(client).pipeTo(ownWritable(server)),
      ownReadable(server).pipeTo(ownWritable(client)),
    ]);
    closeBoth();
  }
}

/** Child mode: a proxy using `design`, printing its port on stdout. */
async function runProxy(design: Design, backendPort: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log(listener.addr.port);
  for await (const client of listener) {
    proxyConnection(design, client, backendPort).catch(() => {});
  }
}

function startEcho(): Deno.TcpListener {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) {
      conn.setNoDelay(true);
      (async () => {
        try {
          await eachChunk(conn, new Uint8Array(65536), (chunk) => writeAll(conn, chunk));
        } catch { /* reset */ }
        conn.close();
      })();
    }
  })().catch(() => {});
  return listener;
}

async function readExactly(conn: Deno.Conn, buffer: Uint8Array): Promise<void> {
  let got = 0;
  while (got < buffer.length) {
    const read = await conn.read(buffer.subarray(got));
    if (read === null) throw new Error("closed early");
    got += read;
  }
}

/** `connections` kept-alive clients each doing `requests` 64-byte round trips. */
async function keptAlive(port: number, connections: number, requests: number) {
  const request = new Uint8Array(64).fill(0x61);
  await Promise.all(Array.from({ length: connections }, async () => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    const answer = new Uint8Array(64);
    for (let i = 0; i < requests; i++) {
      await conn.write(request);
      await readExactly(conn, answer);
    }
    conn.close();
  }));
}

/** `total` new connections, `parallel` at a time, each one round trip then close. */
async function newConnections(port: number, total: number, parallel: number) {
  let left = total;
  const request = new Uint8Array(64).fill(0x62);
  await Promise.all(Array.from({ length: parallel }, async () => {
    const answer = new Uint8Array(64);
    while (left-- > 0) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.setNoDelay(true);
      await conn.write(request);
      await readExactly(conn, answer);
      conn.close();
    }
  }));
}

async function measure(design: Design, echoPort: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", new URL(import.meta.url).pathname, "proxy", design, `${echoPort}`],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const port = Number((await reader.read()).value?.trim());
  const requests = 50 * 400;
  let before = cpuSeconds(child.pid);
  await keptAlive(port, 50, 400);
  const perRequest = (cpuSeconds(child.pid) - before) / requests * 1e6;
  const connections = 4000;
  before = cpuSeconds(child.pid);
  await newConnections(port, connections, 20);
  const perConnection = (cpuSeconds(child.pid) - before) / connections * 1e6;
  child.kill("SIGKILL");
  await child.status;
  await reader.cancel();
  return { perRequest, perConnection };
}

if (import.meta.main) {
  if (Deno.args[0] === "proxy") {
    await runProxy(Deno.args[1] as Design, Number(Deno.args[2]));
  } else {
    const roundsIndex = Deno.args.indexOf("--rounds");
    const rounds = roundsIndex >= 0 ? Number(Deno.args[roundsIndex + 1]) : 5;
    const echo = startEcho();
    const results = new Map<Design, { perRequest: number[]; perConnection: number[] }>();
    for (let round = 0; round < rounds; round++) {
      for (const design of DESIGNS) {
        const { perRequest, perConnection } = await measure(design, echo.addr.port);
        const entry = results.get(design) ?? { perRequest: [], perConnection: [] };
        entry.perRequest.push(perRequest);
        entry.perConnection.push(perConnection);
        results.set(design, entry);
      }
    }
    const base = results.get("loop")!;
    console.log(`proxy CPU, median of ${rounds} rounds (Deno ${Deno.version.deno})`);
    console.log("design      µs/request  ×loop   µs/connection  ×loop");
    for (const [design, { perRequest, perConnection }] of results) {
      const request = median(perRequest);
      const connection = median(perConnection);
      console.log(
        `${design.padEnd(10)}  ${request.toFixed(1).padStart(10)}  ${
          (request / median(base.perRequest)).toFixed(2).padStart(5)
        }  ${connection.toFixed(1).padStart(13)}  ${
          (connection / median(base.perConnection)).toFixed(2).padStart(5)
        }`,
      );
    }
    Deno.exit(0);
  }
}
