import assert from "node:assert/strict";
import { startServer, until, writeAll } from "../test_util.ts";
import { Admin, BackendProcess, ephemeralPortStart, freePortsBelow } from "./cluster.ts";
import { runClient } from "./client.ts";

Deno.test("freePortsBelow(): distinct free ports under the ephemeral range, which it reads", async () => {
  const start = await ephemeralPortStart();
  assert.ok(start > 1024 && start <= 65535, String(start));
  const ports = freePortsBelow(6, start);
  assert.equal(new Set(ports).size, 6);
  for (const port of ports) {
    assert.ok(port >= 1024 && port < start, String(port));
    Deno.listen({ hostname: "127.0.0.1", port }).close();
  }
});

Deno.test("BackendProcess: its DONE lines are kept across kill -9 and restart; it ends when its stdin does", async () => {
  const [port] = freePortsBelow(1, await ephemeralPortStart());
  const backend = new BackendProcess("b7", port!);
  try {
    assert.equal(backend.running, false);
    await backend.start();
    assert.equal(backend.running, true);
    const plan = { deadlineMs: 10_000 };
    assert.equal((await runClient(port!, { seed: 1, up: 10, down: 10 }, plan)).outcome, "ok");
    await backend.kill();
    assert.equal(backend.running, false);
    assert.equal((await runClient(port!, { seed: 2, up: 1, down: 1 }, plan)).outcome, "refused");
    await backend.start();
    assert.equal((await runClient(port!, { seed: 3, up: 20, down: 20 }, plan)).outcome, "ok");
    await until(() => backend.lines.length === 2, "the second DONE line", 100, 50);
  } finally {
    // The gentle way: stdin closes, it exits (a kill -9 after 5 s would be the fallback).
    const started = Date.now();
    await backend.stop();
    assert.ok(Date.now() - started < 4_000, "it exited when its stdin closed");
  }
  assert.deepEqual(backend.lines, ["DONE 1 OK 10", "DONE 3 OK 20"]);
  assert.equal(backend.running, false);
});

Deno.test("Admin: one connection per call, closed once answered; no answer in time is undefined", async () => {
  let connections = 0;
  let closedByClient = 0;
  const api = startServer(async (conn) => {
    connections++;
    const head = new Uint8Array(4096);
    await conn.read(head);
    const body = 'lb_connections_active{listener="a"} 2\nlb_connections_active{listener="b"} 3\n';
    await writeAll(
      conn,
      new TextEncoder().encode(
        `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
      ),
    );
    await conn.closeWrite();
    // The client closes its end too: it keeps no connection between calls.
    if ((await conn.read(head)) === null) closedByClient++;
  });
  const silent = startServer(async (conn) => {
    while ((await conn.read(new Uint8Array(1024))) !== null);
  });
  try {
    const admin = new Admin(api.port, "t");
    assert.equal(await admin.metric("lb_connections_active"), 5);
    assert.equal(await admin.metric("lb_other"), 0);
    await until(() => closedByClient === 2, "both connections closed by the client");
    assert.equal(connections, 2);
    assert.equal(await new Admin(silent.port, "t", 200).metric("lb_connections_active"), undefined);
  } finally {
    await Promise.all([api.close(), silent.close()]);
  }
});
