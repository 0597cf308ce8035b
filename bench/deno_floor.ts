/**
 * Deno's floor for an idle proxied connection, for the benchmark to measure
 * beside the balancer: the least a Deno proxy can hold per client, namely two
 * sockets with a read pending on each. A zero-length read returns at once,
 * so each pending read holds a 1-byte buffer. It copies nothing.
 *
 * `deno run --allow-net bench/deno_floor.ts LISTEN_PORT BACKEND_PORT`
 *
 * @module
 */

const [listenPort, backendPort] = Deno.args.map(Number);
const listener = Deno.listen({ hostname: "127.0.0.1", port: listenPort });
console.error(`deno floor: listening on 127.0.0.1:${listener.addr.port}`);
for await (const client of listener) {
  (async () => {
    const server = await Deno.connect({ hostname: "127.0.0.1", port: backendPort! });
    // Pass the client's first byte on, so the backend counts the connection.
    const first = new Uint8Array(1);
    if (await client.read(first) === 1) await server.write(first);
    await Promise.race([client.read(new Uint8Array(1)), server.read(new Uint8Array(1))]);
    client.close();
    server.close();
  })().catch(() => {});
}
