/**
 * The lab backend's behaviour: answer every line with `[Server ID] <line>`.
 * `backend.ts` runs it from the command line; tests start it in-process.
 *
 * A last line without a newline is answered when the client ends its
 * stream; then the backend ends its own. Over UDP, every datagram is
 * answered with one datagram: the same tag, then the datagram's bytes.
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

/** The largest UDP payload over IPv4; a bigger datagram cannot be received whole. */
const MAX_DATAGRAM_BYTES = 65507;

/**
 * Answers every datagram `socket` receives with one datagram to its sender:
 * `[Server ID] ` and then the datagram's bytes, raw (no line splitting, no
 * newline added), until the socket is closed. A reply that cannot be sent
 * (too big with the tag, the sender gone) is dropped, as UDP may.
 */
export async function answerDatagrams(socket: Deno.DatagramConn, id: string): Promise<void> {
  const prefix = new TextEncoder().encode(`[Server ${id}] `);
  const buffer = new Uint8Array(MAX_DATAGRAM_BYTES);
  // Sends are not awaited one by one, so a flood is answered as it comes;
  // each reply is its own buffer, and all are settled before this returns.
  const sending = new Set<Promise<unknown>>();
  while (true) {
    let datagram: Uint8Array;
    let sender: Deno.Addr;
    try {
      [datagram, sender] = await socket.receive(buffer);
    } catch (error) {
      if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) {
        break; // The socket was closed.
      }
      continue; // One datagram failed (an ICMP error, …); keep answering.
    }
    const reply = new Uint8Array(prefix.length + datagram.length);
    reply.set(prefix);
    reply.set(datagram, prefix.length);
    const sent: Promise<unknown> = socket.send(reply, sender).catch(() => {
      // Dropped: the same as a datagram lost on the way.
    }).finally(() => sending.delete(sent));
    sending.add(sent);
  }
  await Promise.all(sending);
}
