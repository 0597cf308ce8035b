import assert from "node:assert/strict";
import {
  closeQuietly,
  refusingAddress,
  silentAddress,
  startServer,
  type TestServer,
  until,
  writeAll,
} from "../test_util.ts";
import { serveSoakConnection } from "./backend.ts";
import { joinBackendLines } from "./join.ts";
import { runClient, type StreamResult } from "./client.ts";

/** A soak backend in this process; its DONE lines land in `lines`. */
function soakBackend(): TestServer & { lines: string[] } {
  const lines: string[] = [];
  const server = startServer((conn) => serveSoakConnection(conn, "b1", (line) => lines.push(line)));
  return Object.assign(server, { lines });
}

/**
 * What a relay does with the bytes it reads one way: `seen` bytes came
 * before these; `otherEnded` says the other way has ended. It returns the
 * bytes to pass on, or undefined to stop passing anything on that way (it
 * then finishes that way's stream, cleanly, and reads the rest to nowhere).
 */
type Edit = (bytes: Uint8Array, seen: number, otherEnded: boolean) => Uint8Array | undefined;

/** A relay to `port`, a stand-in for a balancer, broken on purpose by its edits. */
function relay(port: number, edits: { up?: Edit; down?: Edit }): TestServer {
  return startServer(async (client) => {
    const server = await Deno.connect({ hostname: "127.0.0.1", port });
    const ended = { up: false, down: false };
    const copy = async (from: Deno.TcpConn, to: Deno.TcpConn, way: "up" | "down") => {
      const edit = edits[way] ?? ((bytes) => bytes);
      const buffer = new Uint8Array(65536);
      let seen = 0;
      let passing = true;
      try {
        while (true) {
          const n = await from.read(buffer);
          if (n === null) break;
          const out = passing
            ? edit(buffer.subarray(0, n), seen, ended[way === "up" ? "down" : "up"])
            : undefined;
          seen += n;
          if (out !== undefined) {
            await writeAll(to, out);
          } else if (passing) {
            passing = false;
            await to.closeWrite();
          }
        }
        ended[way] = true;
        if (passing) await to.closeWrite();
      } catch {
        // One side gone: the other copy ends too.
      }
    };
    await Promise.all([copy(client, server, "up"), copy(server, client, "down")]);
    closeQuietly(server);
  });
}

/** Flips one bit of the byte at `at` (counted from the first byte that way). */
const flipAt = (at: number): Edit => (bytes, seen) => {
  if (at >= seen && at < seen + bytes.length) bytes[at - seen] = bytes[at - seen]! ^ 1;
  return bytes;
};

// What the soak makes of one client once its backend's DONE lines are in.
function findingOf(result: StreamResult, lines: string[]) {
  const record = { ...result, kind: "stream", phase: "load" as const };
  const backendLines = lines.map((line) => ({ backend: "b1", line }));
  return joinBackendLines([record], backendLines, []).joined[0]!.finding;
}

const plan = { deadlineMs: 30_000 };

Deno.test("runClient(): big streams both ways with half-close arrive exact: ok, with the backend named and its DONE line", async () => {
  const backend = soakBackend();
  try {
    const result = await runClient(backend.port, { seed: 5, up: 3 << 20, down: 5 << 20 }, plan);
    assert.equal(result.outcome, "ok");
    assert.equal(result.backend, "b1");
    assert.ok(result.acceptedAt! >= result.startedAt);
    assert.ok(result.endedAt >= result.acceptedAt!);
    await until(() => backend.lines.length === 1, "the DONE line");
    assert.deepEqual(backend.lines, [`DONE 5 OK ${3 << 20}`]);
  } finally {
    await backend.close();
  }
});

Deno.test("runClient(): one bit changed on the way, either way, is corrupt and says where", async () => {
  const backend = soakBackend();
  // The header line comes first upward: byte 1000 is in the body.
  const up = relay(backend.port, { up: flipAt(1000) });
  // "HELLO b1 <ms>\n" comes first downward (about 23 bytes).
  const down = relay(backend.port, { down: flipAt(70_000) });
  try {
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

Deno.test("backend-first: the backend ends first, the client's stream still arrives whole after it, and the DONE line says so", async () => {
  const backend = soakBackend();
  try {
    const header = { seed: 11, up: 2 << 20, down: 1 << 20, backendFirst: true };
    const result = await runClient(backend.port, header, plan);
    assert.equal(result.outcome, "ok");
    assert.equal(result.backendFirst, true);
    await until(() => backend.lines.length === 1, "the DONE line");
    assert.deepEqual(backend.lines, [`DONE 11 OK ${2 << 20}`]);
    assert.equal(findingOf(result, backend.lines), "ok");
  } finally {
    await backend.close();
  }
});

Deno.test("backend-first: a relay that drops what the client sends after the backend's end fools the client, not the soak", async () => {
  const backend = soakBackend();
  const dropsLate = relay(backend.port, {
    up: (bytes, _, downEnded) => downEnded ? undefined : bytes,
  });
  try {
    const header = { seed: 12, up: 2 << 20, down: 1 << 20, backendFirst: true };
    const result = await runClient(dropsLate.port, header, plan);
    assert.equal(result.outcome, "ok", "the client cannot tell");
    await until(() => backend.lines.length === 1, "the DONE line");
    assert.match(backend.lines[0]!, /^DONE 12 BAD \d+$/);
    assert.equal(findingOf(result, backend.lines), "corrupt");
    // And a relay that lost the client's end altogether leaves no DONE line.
    assert.equal(findingOf(result, []), "lost");
  } finally {
    await Promise.all([dropsLate.close(), backend.close()]);
  }
});

Deno.test("a relay that drops the answer's tail and then closes cleanly: the client sees closed, the soak sees lost", async () => {
  const backend = soakBackend();
  const cutsShort = relay(backend.port, {
    down: (bytes, seen) => seen + bytes.length <= 100_000 ? bytes : undefined,
  });
  try {
    const result = await runClient(cutsShort.port, { seed: 13, up: 1000, down: 1 << 20 }, plan);
    assert.equal(result.outcome, "closed");
    await until(() => backend.lines.length === 1, "the DONE line");
    assert.deepEqual(backend.lines, ["DONE 13 OK 1000"]);
    assert.equal(findingOf(result, backend.lines), "lost");
  } finally {
    await Promise.all([cutsShort.close(), backend.close()]);
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
    const closed = await runClient(cutShort.port, { seed: 1, up: 10, down: 1000 }, plan);
    assert.equal(closed.outcome, "closed");
    assert.equal(closed.backend, "b9");
    const hung = await runClient(silent.port, { seed: 1, up: 10, down: 10 }, { deadlineMs: 200 });
    assert.equal(hung.outcome, "hung");
  } finally {
    release.resolve();
    await Promise.all([cutShort.close(), silent.close()]);
  }
});

Deno.test("runClient(): a refused connect is refused; a connect that never completes is hung at the deadline", async () => {
  const refused = await runClient(refusingAddress().port, { seed: 1, up: 1, down: 1 }, plan);
  assert.equal(refused.outcome, "refused");
  assert.match(refused.detail!, /ConnectionRefused/);
  const silent = await silentAddress();
  try {
    const hung = await runClient(silent.port, { seed: 1, up: 1, down: 1 }, { deadlineMs: 300 });
    assert.equal(hung.outcome, "hung");
    assert.ok(hung.endedAt - hung.startedAt < 5_000);
  } finally {
    await silent.close();
  }
});

Deno.test("runClient(): asked to reset, it closes with unread bytes (reset-sent), and the backend lives on", async () => {
  const backend = soakBackend();
  try {
    const reset = await runClient(backend.port, { seed: 3, up: 10, down: 4 << 20 }, {
      deadlineMs: 30_000,
      resetAfter: 1000,
    });
    assert.equal(reset.outcome, "reset-sent");
    const after = await runClient(backend.port, { seed: 4, up: 10, down: 10 }, plan);
    assert.equal(after.outcome, "ok");
  } finally {
    await backend.close();
  }
});

Deno.test("runClient(): a held client sends no body byte until released, then finishes ok", async () => {
  const backend = soakBackend();
  try {
    const release = Promise.withResolvers<void>();
    let ended = false;
    const held = runClient(backend.port, { seed: 21, up: 5000, down: 5000 }, {
      deadlineMs: 30_000,
      holdUntil: release.promise,
    }).finally(() => ended = true);
    await until(() => false, "a while", 200).catch(() => {});
    assert.equal(ended, false);
    assert.deepEqual(backend.lines, []);
    release.resolve();
    assert.equal((await held).outcome, "ok");
  } finally {
    await backend.close();
  }
});

Deno.test("runClient(): an interruption ends a waiting client at once, as closed", async () => {
  const backend = soakBackend();
  try {
    const interrupt = new AbortController();
    const idle = runClient(backend.port, { seed: 22, up: 10, down: 10 }, {
      deadlineMs: 30_000,
      idleMs: 20_000,
      signal: interrupt.signal,
    });
    await until(() => false, "a while", 50).catch(() => {});
    interrupt.abort();
    const result = await idle;
    assert.equal(result.outcome, "closed");
    assert.ok(result.endedAt - result.startedAt < 5_000);
  } finally {
    await backend.close();
  }
});
