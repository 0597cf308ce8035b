/**
 * The lab backend's behaviour: answer every line with `[Server ID] <line>`.
 * `backend.ts` runs it from the command line; tests start it in-process.
 *
 * A last line without a newline is answered when the client ends its
 * stream; then the backend ends its own.
 *
 * @module
 */

import { concat, writeAll } from "./io.ts";

const NEWLINE = 0x0a;

/** Answers one client until it ends its stream, then closes the connection. */
export async function answerLines(conn: Deno.Conn, id: string): Promise<void> {
  const prefix = new TextEncoder().encode(`[Server ${id}] `);
  const buffer = new Uint8Array(16384);
  let pending: Uint8Array = new Uint8Array(0); // the start of a line not yet ended
  const answer = async (line: Uint8Array) => {
    const reply = new Uint8Array(prefix.length + line.length + 1);
    reply.set(prefix);
    reply.set(line, prefix.length);
    reply[reply.length - 1] = NEWLINE;
    await writeAll(conn, reply);
  };
  try {
    while (true) {
      const read = await conn.read(buffer);
      if (read === null) break;
      let chunk = buffer.subarray(0, read);
      let newline = chunk.indexOf(NEWLINE);
      while (newline >= 0) {
        await answer(concat(pending, chunk.subarray(0, newline)));
        pending = new Uint8Array(0);
        chunk = chunk.subarray(newline + 1);
        newline = chunk.indexOf(NEWLINE);
      }
      pending = concat(pending, chunk);
    }
    if (pending.length > 0) await answer(pending);
  } catch {
    // The client reset or went away: nothing more to answer.
  } finally {
    try {
      conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** Accepts clients until the listener closes, answering each one's lines. */
export async function serveBackend(
  listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>,
  id: string,
): Promise<void> {
  const connections = new Set<Promise<void>>();
  while (true) {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
    } catch (error) {
      if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) {
        break; // The listener was closed.
      }
      continue; // One client failed before it was accepted; keep serving.
    }
    conn.setNoDelay(true);
    const done = answerLines(conn, id);
    connections.add(done);
    done.finally(() => connections.delete(done));
  }
  await Promise.all(connections);
}
