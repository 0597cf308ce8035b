import assert from "node:assert/strict";
import { bridge, type BridgeResult } from "./bridge.ts";
import { BufferPool } from "./buffers.ts";
import { listenLoopback, readAll, seededBytes, writeAll } from "./test_util.ts";

/** Two connected loopback sockets. */
async function socketPair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  const listener = listenLoopback();
  const [near, far] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  listener.close();
  return [near, far];
}

/**
 * client ⇄ (proxyIn ⇄ bridge ⇄ proxyOut) ⇄ server, on real sockets. Runs
 * `scenario` with the two ends, then returns the bridge's result.
 */
async function throughBridge(
  scenario: (client: Deno.TcpConn, server: Deno.TcpConn) => Promise<void>,
  options: Parameters<typeof bridge>[2] = {},
): Promise<BridgeResult> {
  const [client, proxyIn] = await socketPair();
  const [proxyOut, server] = await socketPair();
  const bridged = bridge(proxyIn, proxyOut, options);
  try {
    await scenario(client, server);
    return await bridged;
  } finally {
    client.close();
    server.close();
  }
}

Deno.test("bridge() copies bytes both ways at once, exactly, and counts them", async () => {
  const up = seededBytes(3 * 1024 * 1024 + 7, 1);
  const down = seededBytes(5 * 1024 * 1024 + 3, 2);
  const result = await throughBridge(async (client, server) => {
    const [atServer, atClient] = await Promise.all([
      readAll(server),
      readAll(client),
      writeAll(client, up).then(() => client.closeWrite()),
      writeAll(server, down).then(() => server.closeWrite()),
    ]);
    assert.deepEqual(atServer, up);
    assert.deepEqual(atClient, down);
  });
  assert.equal(result.bytesFromClient, up.length);
  assert.equal(result.bytesFromServer, down.length);
  assert.ok(result.end === "client-fin" || result.end === "server-fin", result.end);
});

Deno.test("bridge() keeps the reply path open after the client half-closes", async () => {
  const result = await throughBridge(async (client, server) => {
    await writeAll(client, new TextEncoder().encode("question"));
    await client.closeWrite();
    // The server sees the end of the request only after all of it…
    assert.equal(new TextDecoder().decode(await readAll(server)), "question");
    // …and its answer still reaches the half-closed client.
    await writeAll(server, new TextEncoder().encode("answer"));
    await server.closeWrite();
    assert.equal(new TextDecoder().decode(await readAll(client)), "answer");
  });
  assert.deepEqual(result, { bytesFromClient: 8, bytesFromServer: 6, end: "client-fin" });
});

Deno.test("bridge() carries a server's banner to a client that has sent nothing", async () => {
  const result = await throughBridge(async (client, server) => {
    await writeAll(server, new TextEncoder().encode("220 ready\r\n"));
    const buffer = new Uint8Array(64);
    const read = await client.read(buffer);
    assert.equal(new TextDecoder().decode(buffer.subarray(0, read ?? 0)), "220 ready\r\n");
    await server.closeWrite();
    assert.equal(await client.read(buffer), null);
    await client.closeWrite();
    assert.equal(await server.read(buffer), null);
  });
  assert.deepEqual(result, { bytesFromClient: 0, bytesFromServer: 11, end: "server-fin" });
});

Deno.test("bridge() closes both of its sockets once both directions have ended", async () => {
  const [client, proxyIn] = await socketPair();
  const [proxyOut, server] = await socketPair();
  const bridged = bridge(proxyIn, proxyOut);
  await client.closeWrite();
  await server.closeWrite();
  await bridged;
  assert.throws(() => proxyIn.close(), Deno.errors.BadResource);
  assert.throws(() => proxyOut.close(), Deno.errors.BadResource);
  client.close();
  server.close();
});

Deno.test("bridge() cuts both sides at once when its signal aborts", async () => {
  const cut = new AbortController();
  const result = await throughBridge(async (client, server) => {
    await writeAll(client, new TextEncoder().encode("hello"));
    const buffer = new Uint8Array(16);
    assert.equal(await server.read(buffer), 5);
    cut.abort();
    // Both ends see the proxy go away, although neither of them ended its stream.
    assert.equal(await client.read(buffer), null);
    assert.equal(await server.read(buffer), null);
  }, { signal: cut.signal });
  assert.deepEqual(result, { bytesFromClient: 5, bytesFromServer: 0, end: "aborted" });
});

Deno.test("bridge() delivers every byte in order while growing and shrinking its buffers", async () => {
  // Tiny pools, so that bulk data makes each direction switch between its
  // small and large buffer many times.
  const pools = { small: new BufferPool(7, 8), large: new BufferPool(61, 8) };
  const data = seededBytes(100_000, 3);
  const result = await throughBridge(async (client, server) => {
    const [received] = await Promise.all([
      readAll(server),
      (async () => {
        // Alternate bulk and trickles: small writes make the reader shrink back.
        for (let offset = 0, i = 0; offset < data.length; i++) {
          const size = i % 2 === 0 ? 3 : 4000;
          await writeAll(client, data.subarray(offset, offset + size));
          offset += size;
        }
        await client.closeWrite();
      })(),
    ]);
    assert.deepEqual(received, data);
    await server.closeWrite();
    await readAll(client);
  }, { pools });
  assert.equal(result.bytesFromClient, data.length);
  // Every buffer went back to its pool: the two small ones, and the large
  // one the client-to-server direction borrowed.
  assert.equal(pools.small.free, 2);
  assert.equal(pools.large.free, 1);
});
