/**
 * The bridge: glues a client socket to a backend socket, one one-way copy per
 * direction, as the lab did with a pipe each way.
 *
 * Why `read()`/`write()` and not `readable.pipeTo(writable)`: measured on
 * Deno 2.9.6 (see README, "Why the bridge is a read/write loop"):
 * - `conn.readable` closes the whole socket when it reaches end of stream
 *   (denoland/deno#22258). A client that sends a request and then half-closes
 *   never receives the answer. That alone rules it out.
 * - `pipeTo` over streams we build ourselves on `read()`/`closeWrite()` is
 *   correct, but costs more CPU per small request and per new connection than
 *   this loop (figures in the README), because every chunk crosses two stream
 *   queues and their promises.
 * - This loop reuses one buffer per direction and awaits each write before the
 *   next read, so a slow reader holds back a fast writer through TCP's own
 *   flow control: memory per connection is two buffers, never a queue.
 *
 * End of stream on one side is passed on as a half-close (`closeWrite()`) of
 * the other; the other direction keeps flowing until it ends too. An error in
 * either direction (a reset, a write to a closed peer) ends the whole
 * connection: both sockets are closed at once, so no orphan is left behind.
 * Both sockets are closed exactly once, after both copies have stopped.
 *
 * @module
 */

/** How a bridged connection ended, from the balancer's point of view.
 *
 * - `client-fin` / `server-fin`: both directions finished cleanly; the named
 *   side was the first to end its stream.
 * - `client-reset` / `server-reset`: the named side failed (reset, broken
 *   pipe, …); this wins over a clean end on the other side.
 * - `aborted`: the caller's signal cut the connection (drain timeout, …).
 */
export type BridgeEnd = "client-fin" | "server-fin" | "client-reset" | "server-reset" | "aborted";

/** What {@linkcode bridge} resolves with once both sockets are closed. */
export interface BridgeResult {
  /** Bytes read from the client and written to the server. */
  readonly bytesFromClient: number;
  /** Bytes read from the server and written to the client. */
  readonly bytesFromServer: number;
  /** How it ended. */
  readonly end: BridgeEnd;
}

/** Options for {@linkcode bridge}. */
export interface BridgeOptions {
  /** Aborting closes both sockets at once; the result's end is `aborted`. */
  signal?: AbortSignal;
  /** Size of each direction's read buffer in bytes.
   * @default {32768} */
  bufferSize?: number;
}

type Side = "client" | "server";

/**
 * Copies bytes both ways between `client` and `server` until both directions
 * have ended, then closes both. Never rejects: every failure is reported as
 * the result's `end`.
 */
export async function bridge(
  client: Deno.Conn,
  server: Deno.Conn,
  options: BridgeOptions = {},
): Promise<BridgeResult> {
  const bufferSize = options.bufferSize ?? 32768;
  const signal = options.signal;
  let firstFin: BridgeEnd | undefined;
  let failure: BridgeEnd | undefined;
  let closed = false;

  const closeBoth = () => {
    if (closed) return;
    closed = true;
    closeQuietly(client);
    closeQuietly(server);
  };
  const fail = (end: BridgeEnd) => {
    // Once we have closed the sockets ourselves, the errors that follow are
    // our own doing, not the peer's.
    if (closed) return;
    failure = end;
    closeBoth();
  };
  const onAbort = () => fail("aborted");

  // One direction: src → dst, until src ends or either side fails.
  const copy = async (src: Deno.Conn, dst: Deno.Conn, from: Side, to: Side): Promise<number> => {
    const buffer = new Uint8Array(bufferSize);
    let total = 0;
    while (true) {
      let read: number | null;
      try {
        read = await src.read(buffer);
      } catch {
        fail(`${from}-reset`);
        return total;
      }
      if (read === null) {
        firstFin ??= `${from}-fin`;
        try {
          await dst.closeWrite();
        } catch {
          fail(`${to}-reset`);
        }
        return total;
      }
      try {
        let written = 0;
        while (written < read) {
          written += await dst.write(buffer.subarray(written, read));
        }
      } catch {
        fail(`${to}-reset`);
        return total;
      }
      total += read;
    }
  };

  if (signal?.aborted) {
    fail("aborted");
  } else {
    signal?.addEventListener("abort", onAbort, { once: true });
  }
  const [bytesFromClient, bytesFromServer] = await Promise.all([
    copy(client, server, "client", "server"),
    copy(server, client, "server", "client"),
  ]);
  signal?.removeEventListener("abort", onAbort);
  closeBoth();
  return { bytesFromClient, bytesFromServer, end: failure ?? firstFin ?? "client-fin" };
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed: nothing left to release.
  }
}
