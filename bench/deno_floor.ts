/**
 * Deno's floor, for the benchmark to measure beside the balancer: the least
 * any proxy built on `Deno.listen`/`Deno.connect` can cost. Two modes:
 *
 * - `copy`: the simplest correct proxy — accept, connect to the next backend
 *   in turn, copy each way through a 1 KiB buffer with `read()`/`write()`,
 *   pass an end of stream on with `closeWrite()`, close both. No timeouts,
 *   logs, metrics or health: what is left is the runtime's own cost per
 *   request and per connection.
 * - `hold`: the least a Deno proxy can hold per idle client — two sockets
 *   with a read pending on each. A zero-length read returns at once, so each
 *   pending read holds a 1-byte buffer. It copies only the client's first
 *   byte (so the backend counts the connection).
 *
 * `deno run --allow-net bench/deno_floor.ts copy|hold LISTEN_PORT BACKEND_PORT...`
 *
 * @module
 */

const [mode, listenPort, ...backendPorts] = Deno.args;
if ((mode !== "copy" && mode !== "hold") || backendPorts.length === 0) {
  console.error("usage: deno_floor.ts copy|hold LISTEN_PORT BACKEND_PORT...");
  Deno.exit(2);
}
const listener = Deno.listen({ hostname: "127.0.0.1", port: Number(listenPort) });
console.error(`deno floor (${mode}): listening on 127.0.0.1:${listener.addr.port}`);
let next = 0;

interface Pair {
  open: number;
  closed: boolean;
  close(): void;
}

async function copy(src: Deno.Conn, dst: Deno.Conn, pair: Pair): Promise<void> {
  const buffer = new Uint8Array(1024);
  try {
    while (true) {
      const read = await src.read(buffer);
      if (read === null) {
        if (--pair.open > 0) await dst.closeWrite();
        return;
      }
      let written = 0;
      while (written < read) written += await dst.write(buffer.subarray(written, read));
    }
  } catch {
    // A reset on either side: close both, which ends the other copy too.
    pair.close();
  }
}

async function proxy(client: Deno.TcpConn): Promise<void> {
  const port = Number(backendPorts[next++ % backendPorts.length]);
  const server = await Deno.connect({ hostname: "127.0.0.1", port, autoSelectFamily: false })
    .catch((error) => {
      client.close();
      throw error;
    });
  client.setNoDelay(true);
  server.setNoDelay(true);
  const pair: Pair = {
    open: 2,
    closed: false,
    close() {
      if (this.closed) return;
      this.closed = true;
      client.close();
      server.close();
    },
  };
  await Promise.all([copy(client, server, pair), copy(server, client, pair)]);
  pair.close();
}

async function hold(client: Deno.TcpConn): Promise<void> {
  const server = await Deno.connect({ hostname: "127.0.0.1", port: Number(backendPorts[0]) });
  const first = new Uint8Array(1);
  if (await client.read(first) === 1) await server.write(first);
  await Promise.race([client.read(new Uint8Array(1)), server.read(new Uint8Array(1))]);
  client.close();
  server.close();
}

while (true) {
  try {
    const client = await listener.accept();
    (mode === "copy" ? proxy(client) : hold(client)).catch(() => {});
  } catch {
    // A client gone before accept, or out of descriptors: go on.
  }
}
