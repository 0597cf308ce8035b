/**
 * A soak backend: checks every byte a client sends and answers with bytes
 * the client can check (the protocol is in pattern.ts).
 *
 * `deno run --allow-net soak/backend.ts PORT ID` listens on 127.0.0.1:PORT
 * and prints one readiness line on stderr. It runs until killed; the soak
 * kills it with SIGKILL on purpose and starts it again.
 *
 * @module
 */

import { READY } from "../events.ts";
import { writeAll } from "../io.ts";
import { checkPattern, fillPattern, parseHeader, replySeed, type StreamHeader } from "./pattern.ts";

const CHUNK = 64 * 1024;
const MAX_HEADER = 128;
const encoder = new TextEncoder();

/** Serves one soak connection; every error ends this connection only. */
export async function serveSoakConnection(conn: Deno.Conn, id: string): Promise<void> {
  const acceptedAt = Date.now();
  try {
    const buffer = new Uint8Array(CHUNK);
    const { header, rest } = await readHeader(conn, buffer);
    if (header === undefined) {
      await writeAll(conn, encoder.encode("BAD header\n"));
      return;
    }
    await writeAll(conn, encoder.encode(`HELLO ${id} ${acceptedAt}\n`));
    const [received] = await Promise.all([receive(conn, header, rest, buffer), send(conn, header)]);
    const verdict = received.badAt >= 0
      ? `BAD ${received.badAt}\n`
      : received.count !== header.up
      ? `BAD ${Math.min(received.count, header.up)}\n`
      : `OK ${received.count}\n`;
    await writeAll(conn, encoder.encode(verdict));
    await conn.closeWrite();
  } catch {
    // A client that resets, or the balancer cutting it: this connection only.
  } finally {
    try {
      conn.close();
    } catch {
      // Already closed.
    }
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

// Reads the client's stream to its end, checking each byte.
async function receive(
  conn: Deno.Conn,
  header: StreamHeader,
  rest: Uint8Array,
  buffer: Uint8Array,
): Promise<{ count: number; badAt: number }> {
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
    if (n === null) return { count, badAt };
    take(buffer.subarray(0, n));
  }
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
  for await (const conn of listener) serveSoakConnection(conn, id);
}
