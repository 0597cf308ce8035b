/**
 * A soak backend: checks every byte a client sends and answers with bytes
 * the client can check (the protocol is in pattern.ts).
 *
 * `deno run --allow-net soak/backend.ts PORT ID` listens on 127.0.0.1:PORT
 * and prints one readiness line on stderr, then one `DONE <seed> <verdict>`
 * line on stdout per connection it finished cleanly. It runs until its
 * standard input ends (the soak holds a pipe to it, so a soak that dies takes
 * its backends with it) or until killed: the soak kills it with SIGKILL on
 * purpose and starts it again.
 *
 * @module
 */

import { closeQuietly } from "../errors.ts";
import { READY } from "../events.ts";
import { writeAll } from "../io.ts";
import {
  checkPattern,
  fillPattern,
  formatDone,
  formatVerdict,
  parseHeader,
  replySeed,
  type StreamHeader,
  type Verdict,
} from "./pattern.ts";

const CHUNK = 64 * 1024;
const MAX_HEADER = 128;
const encoder = new TextEncoder();

/**
 * Serves one soak connection; every error ends this connection only. Calls
 * `done` with the connection's DONE line once it finished cleanly, and never
 * for a connection cut short.
 */
export async function serveSoakConnection(
  conn: Deno.Conn,
  id: string,
  done: (line: string) => void = () => {},
): Promise<void> {
  const acceptedAt = Date.now();
  try {
    const buffer = new Uint8Array(CHUNK);
    const { header, rest } = await readHeader(conn, buffer);
    if (header === undefined) {
      await writeAll(conn, encoder.encode("BAD header\n"));
      return;
    }
    await writeAll(conn, encoder.encode(`HELLO ${id} ${acceptedAt}\n`));
    let verdict: Verdict;
    if (header.backendFirst) {
      // Our stream ends first; the client's goes on past it.
      [verdict] = await Promise.all([
        receive(conn, header, rest, buffer),
        send(conn, header).then(() => conn.closeWrite()),
      ]);
    } else {
      [verdict] = await Promise.all([receive(conn, header, rest, buffer), send(conn, header)]);
      await writeAll(conn, encoder.encode(`${formatVerdict(verdict)}\n`));
      await conn.closeWrite();
    }
    done(formatDone(header.seed, verdict));
  } catch {
    // A client that resets, or the balancer cutting it: this connection only.
  } finally {
    closeQuietly(conn);
  }
}

async function readHeader(
  conn: Deno.Conn,
  buffer: Uint8Array,
): Promise<{ header: StreamHeader | undefined; rest: Uint8Array }> {
  let filled = 0;
  while (filled < MAX_HEADER) {
    const n = await conn.read(buffer.subarray(filled, MAX_HEADER));
    if (n === null) break;
    filled += n;
    const newline = buffer.subarray(0, filled).indexOf(10);
    if (newline >= 0) {
      const line = new TextDecoder().decode(buffer.subarray(0, newline));
      return { header: parseHeader(line), rest: buffer.slice(newline + 1, filled) };
    }
  }
  return { header: undefined, rest: new Uint8Array() };
}

// Reads the client's stream to its end, checking each byte: OK when it held
// exactly the `up` bytes of the pattern, else the first offset that was wrong
// (a byte that differs, one too many, or the end come too soon).
async function receive(
  conn: Deno.Conn,
  header: StreamHeader,
  rest: Uint8Array,
  buffer: Uint8Array,
): Promise<Verdict> {
  let count = 0;
  let badAt = -1;
  const take = (bytes: Uint8Array) => {
    if (badAt < 0) {
      const wanted = bytes.subarray(0, Math.max(0, header.up - count));
      badAt = checkPattern(header.seed, count, wanted);
      // More than was announced is wrong too.
      if (badAt < 0 && wanted.length < bytes.length) badAt = count + wanted.length;
    }
    count += bytes.length;
  };
  take(rest);
  while (true) {
    const n = await conn.read(buffer);
    if (n === null) break;
    take(buffer.subarray(0, n));
  }
  if (badAt >= 0) return { ok: false, at: badAt };
  if (count !== header.up) return { ok: false, at: Math.min(count, header.up) };
  return { ok: true, count };
}

async function send(conn: Deno.Conn, header: StreamHeader): Promise<void> {
  const seed = replySeed(header.seed);
  const chunk = new Uint8Array(CHUNK);
  for (let sent = 0; sent < header.down; sent += CHUNK) {
    const piece = chunk.subarray(0, Math.min(CHUNK, header.down - sent));
    fillPattern(seed, sent, piece);
    await writeAll(conn, piece);
  }
}

if (import.meta.main) {
  const [port, id] = Deno.args;
  if (port === undefined || id === undefined || !/^\d+$/.test(port)) {
    console.error("usage: deno run --allow-net soak/backend.ts PORT ID");
    Deno.exit(2);
  }
  const listener = Deno.listen({ hostname: "127.0.0.1", port: Number(port) });
  console.error(`soak backend ${id} ${READY}127.0.0.1:${listener.addr.port}`);
  // Standard input ended: whoever started us is gone or done with us.
  (async () => {
    for await (const _ of Deno.stdin.readable) {
      // Nothing is ever sent; this only waits for the end.
    }
    Deno.exit(0);
  })();
  for await (const conn of listener) serveSoakConnection(conn, id, (line) => console.log(line));
}
