import assert from "node:assert/strict";
import { dialDatagrams, listenDatagrams } from "./engine_deno_udp.ts";
import { startUdpServer, udpLoopback, until } from "./test_util.ts";

const encode = (text: string) => new TextEncoder().encode(text);
const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

Deno.test("deno engine: a flow's socket takes datagrams from its backend only", async () => {
  const backend = startUdpServer("1");
  const stranger = udpLoopback();
  const got: string[] = [];
  const socket = dialDatagrams(backend.address, {
    onDatagram: (bytes) => got.push(decode(bytes)),
    onError: (reason) => got.push(`error ${reason}`),
  });
  try {
    // Another socket writes to the flow's port first: not the backend, dropped.
    await stranger.send(encode("not from the backend"), {
      transport: "udp",
      hostname: "127.0.0.1",
      port: socket.address.port,
    });
    assert.equal(socket.send(encode("hi")), true);
    await until(() => got.length > 0, "the backend's answer");
    assert.deepEqual(got, ["[Server 1] hi"]);
  } finally {
    socket.close();
    stranger.close();
    await backend.close();
  }
});

Deno.test("deno engine: a listener's peers are kept for replies; nothing is called after close", async () => {
  const seen: string[] = [];
  const listener = listenDatagrams({ hostname: "127.0.0.1", port: 0 }, {}, (bytes, key) => {
    seen.push(`${key} ${decode(bytes)}`);
    listener.send(encode(`back: ${decode(bytes)}`), listener.sender());
  });
  const client = udpLoopback();
  const to: Deno.NetAddr = { transport: "udp", hostname: "127.0.0.1", port: listener.address.port };
  try {
    assert.equal(listener.address.hostname, "127.0.0.1", "the address as bound");
    await client.send(encode("one"), to);
    const [reply] = await client.receive();
    assert.equal(decode(reply), "back: one");
    const key = `127.0.0.1:${(client.addr as Deno.NetAddr).port}`;
    assert.deepEqual(seen, [`${key} one`]);
    assert.throws(() => listener.sender(), /outside onDatagram/);
    listener.close();
    assert.equal(listener.send(encode("late"), undefined), false, "a closed socket sends nothing");
    await client.send(encode("after close"), to).catch(() => {});
    assert.deepEqual(seen, [`${key} one`], "no callback after close");
  } finally {
    listener.close();
    client.close();
  }
});

Deno.test("deno engine: a listener refuses SO_REUSEPORT, which Deno's UDP sockets cannot set", () => {
  assert.throws(
    () => listenDatagrams({ hostname: "127.0.0.1", port: 0 }, { reusePort: true }, () => {}),
    /cannot share a UDP port/,
  );
});
