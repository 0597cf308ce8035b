import assert from "node:assert/strict";
import { closeQuietly, startServer, type TestServer, writeAll } from "../test_util.ts";
import { serveSoakConnection } from "./backend.ts";
import { runClient } from "./client.ts";

const soakBackend = () => startServer((conn) => serveSoakConnection(conn, "b1"));

/**
 * A relay to `port` that copies both ways, flipping one bit of the byte at
 * `flipAt` in the direction named (counted from the first byte that way).
 */
function relay(port: number, direction: "up" | "down", flipAt: number): TestServer {
  return startServer(async (client) => {
    const server = await Deno.connect({ hostname: "127.0.0.1", port });
    const copy = async (from: Deno.TcpConn, to: Deno.TcpConn, flip: boolean) => {
      const buffer = new Uint8Array(65536);
      let seen = 0;
      try {
        while (true) {
          const n = await from.read(buffer);
          if (n === null) break;
          if (flip && flipAt >= seen && flipAt < seen + n) {
            buffer[flipAt - seen] = buffer[flipAt - seen]! ^ 1;
          }
          seen += n;
          await writeAll(to, buffer.subarray(0, n));
        }
        await to.closeWrite();
      } catch {
        // One side gone: the other copy ends too.
      }
    };
    await Promise.all([
      copy(client, server, direction === "up"),
      copy(server, client, direction === "down"),
    ]);
    closeQuietly(server);
  });
}

Deno.test("runClient(): big streams both ways with half-close arrive exact: ok, with the backend named", async () => {
  const backend = soakBackend();
  try {
    const result = await runClient(backend.port, { seed: 5, up: 3 << 20, down: 5 << 20 }, {
      deadlineMs: 30_000,
    });
    assert.equal(result.outcome, "ok");
    assert.equal(result.backend, "b1");
    assert.ok(result.acceptedAt! >= result.startedAt);
  } finally {
    await backend.close();
  }
});

Deno.test("runClient(): one bit changed on the way, either way, is corrupt and says where", async () => {
  const backend = soakBackend();
  // The header line comes first upward: byte 1000 is in the body.
  const up = relay(backend.port, "up", 1000);
  // "HELLO b1 <ms>\n" comes first downward (about 23 bytes).
  const down = relay(backend.port, "down", 70_000);
  try {
    const plan = { deadlineMs: 30_000 };
    const upward = await runClient(up.port, { seed: 9, up: 200_000, down: 100 }, plan);
    assert.equal(upward.outcome, "corrupt");
    assert.match(upward.detail!, /backend said BAD \d+/);
    const downward = await runClient(down.port, { seed: 9, up: 100, down: 200_000 }, plan);
    assert.equal(downward.outcome, "corrupt");
    assert.match(downward.detail!, /answer byte 69\d{3} differs/);
  } finally {
    await Promise.all([up.close(), down.close(), backend.close()]);
  }
});

Deno.test("runClient(): a clean close before the end is closed; silence until the deadline is hung", async () => {
  const cutShort = startServer(async (conn) => {
    await writeAll(conn, new TextEncoder().encode("HELLO b9 1\n"));
  });
  // Takes the whole request, then says nothing until the test lets it go.
  const release = Promise.withResolvers<void>();
  const silent = startServer(async (conn) => {
    while ((await conn.read(new Uint8Array(1024))) !== null);
    await release.promise;
  });
  try {
    const closed = await runClient(cutShort.port, { seed: 1, up: 10, down: 1000 }, {
      deadlineMs: 30_000,
    });
    assert.equal(closed.outcome, "closed");
    assert.equal(closed.backend, "b9");
    const hung = await runClient(silent.port, { seed: 1, up: 10, down: 10 }, { deadlineMs: 200 });
    assert.equal(hung.outcome, "hung");
  } finally {
    release.resolve();
    await Promise.all([cutShort.close(), silent.close()]);
  }
});

Deno.test("runClient(): asked to reset, it closes with unread bytes (reset-sent), and the backend lives on", async () => {
  const backend = soakBackend();
  try {
    const plan = { deadlineMs: 30_000, resetAfter: 1000 };
    const reset = await runClient(backend.port, { seed: 3, up: 10, down: 4 << 20 }, plan);
    assert.equal(reset.outcome, "reset-sent");
    const after = await runClient(backend.port, { seed: 4, up: 10, down: 10 }, {
      deadlineMs: 30_000,
    });
    assert.equal(after.outcome, "ok");
  } finally {
    await backend.close();
  }
});
