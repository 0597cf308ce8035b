/**
 * The lab's client: sends each line typed (or piped in) to the load
 * balancer and prints each answer as it arrives.
 *
 * `deno run --allow-net client.ts [HOST:PORT]` (default `localhost:5000`).
 * At end of input it half-closes the connection, prints the answers still
 * coming, and exits once the server has ended its side too.
 *
 * @module
 */

import { type HostPort, parseHostPort } from "./address.ts";
import { eachChunk } from "./io.ts";

/** Copies `input` to the server and the server's answers to `output`.
 * Resolves once the server has ended its stream. */
export async function talk(
  conn: Deno.Conn,
  input: ReadableStream<Uint8Array>,
  output: WritableStream<Uint8Array>,
): Promise<void> {
  const send = (async () => {
    try {
      for await (const chunk of input) {
        let written = 0;
        while (written < chunk.length) written += await conn.write(chunk.subarray(written));
      }
      await conn.closeWrite();
    } catch {
      // The server went away; the receiving side reports the end.
    }
  })();
  const writer = output.getWriter();
  try {
    await eachChunk(conn, new Uint8Array(16384), (chunk) => writer.write(chunk.slice()));
  } finally {
    writer.releaseLock();
    conn.close();
  }
  // Input may still be open (a terminal): the server is gone, so stop here
  // rather than wait for a line nobody will answer.
  await Promise.race([send, Promise.resolve()]);
}

if (import.meta.main) {
  const target = Deno.args[0] ?? "localhost:5000";
  let address: HostPort;
  try {
    if (Deno.args.length > 1) throw new Error(`expected at most one argument, HOST:PORT`);
    address = parseHostPort(target);
  } catch (error) {
    console.error(`client: ${(error as Error).message}`);
    Deno.exit(2);
  }
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect(address);
  } catch (error) {
    console.error(`client: cannot connect to ${target}: ${(error as Error).message}`);
    Deno.exit(1);
  }
  conn.setNoDelay(true);
  if (Deno.stdin.isTerminal()) {
    console.error(`connected to ${target}; type a line and press Enter, Ctrl-D to end`);
  }
  try {
    await talk(conn, Deno.stdin.readable, Deno.stdout.writable);
  } catch (error) {
    // Reset (a drain timeout, a backend gone): one line, not a stack trace.
    console.error(`client: the connection to ${target} ended: ${(error as Error).message}`);
    Deno.exit(1);
  }
  Deno.exit(0);
}
