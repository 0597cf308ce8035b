// A primary that fails over: with `on_down: shutdown-sessions`, the
// connections to the old primary are closed the moment checks mark it down,
// so clients reconnect to the new one (HAProxy's on-marked-down
// shutdown-sessions). The balancer runs as a process, on the engine under test.
import assert from "node:assert/strict";
import { answerLines } from "./lab.ts";
import {
  type BalancerProcess,
  connectLoopback,
  exchange,
  serverOf,
  startBalancerWithAdmin,
  startServer,
  until,
} from "./test_util.ts";

/** A server that says its role when asked `ROLE?`, and otherwise answers as lab backend `id`. */
function roleServer(id: string, role: { primary: boolean }) {
  return startServer(async (conn) => {
    const first = new Uint8Array(64);
    const read = await conn.read(first);
    if (read === null) return;
    const text = new TextDecoder().decode(first.subarray(0, read));
    if (text === "ROLE?\n") {
      await conn.write(new TextEncoder().encode(role.primary ? "primary\n" : "replica\n"));
      return;
    }
    // Not a check: answer this line, then the rest as the lab backend does.
    await conn.write(new TextEncoder().encode(`[Server ${id}] ${text}`));
    await answerLines(conn, id);
  });
}

const hex = (text: string) =>
  [...new TextEncoder().encode(text)].map((b) => b.toString(16).padStart(2, "0")).join("");

/** Sends a line on an open connection; resolves with the server that answered, or null once closed. */
async function ask(conn: Deno.Conn, line: string): Promise<string | null> {
  try {
    await conn.write(new TextEncoder().encode(line));
    const buffer = new Uint8Array(256);
    const read = await conn.read(buffer);
    return read === null ? null : serverOf(new TextDecoder().decode(buffer.subarray(0, read)));
  } catch {
    return null;
  }
}

for (const onDown of ["shutdown-sessions", "keep-sessions"] as const) {
  Deno.test(
    `failover with on_down: ${onDown}: the old primary's connections ${
      onDown === "shutdown-sessions" ? "are closed when it is marked down" : "stay"
    }`,
    async () => {
      const roles = { a: { primary: true }, b: { primary: false } };
      const a = roleServer("a", roles.a);
      const b = roleServer("b", roles.b);
      const dir = await Deno.makeTempDir();
      let lb: BalancerProcess | undefined;
      try {
        const running = await startBalancerWithAdmin(
          dir,
          `listeners:
  - { name: db, listen: "127.0.0.1:0", pool: db }
pools:
  db:
    balance: first
    backends: [{ address: "127.0.0.1:${a.port}" }, { address: "127.0.0.1:${b.port}" }]
    health:
      check: { send: "${hex("ROLE?\n")}", expect: "${hex("primary")}" }
      interval_ms: 50
      timeout_ms: 5000
      rise: 1
      fall: 1
      on_down: ${onDown}
`,
          {
            token: "t",
            permissions: ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"],
          },
        );
        lb = running.lb;
        const states = async () => (await running.backends("db")).map((x) => x.state).join();
        await until(async () => await states() === "up,down", "a up, b down (a replica)", 400, 25);
        const held = await connectLoopback(lb.port);
        assert.equal(await ask(held, "before\n"), "a");
        // Fail over: b is promoted, a demoted.
        roles.a.primary = false;
        roles.b.primary = true;
        await until(async () => await states() === "down,up", "a down, b up", 400, 25);
        // New clients go to b (once the data plane has heard: a client placed on a
        // just before is cut, and tries again).
        await until(
          async () => {
            try {
              return serverOf(await exchange(lb!.port, "new\n")) === "b";
            } catch {
              return false;
            }
          },
          "new clients go to b",
          100,
          20,
        );
        if (onDown === "shutdown-sessions") {
          assert.equal(await ask(held, "after\n"), null, "the old primary's connection was closed");
          await lb.waitForLine("stdout", /end=backend-down/);
        } else {
          assert.equal(await ask(held, "after\n"), "a", "the connection stays on a");
        }
        held.close();
      } finally {
        await lb?.close();
        await Promise.all([a.close(), b.close()]);
        await Deno.remove(dir, { recursive: true });
      }
    },
  );
}

Deno.test("POST /api/pools/{pool}/rebalance closes the oldest connections over a backend's share, a few at a time", async () => {
  const a = roleServer("a", { primary: true });
  const b = roleServer("b", { primary: true });
  const dir = await Deno.makeTempDir();
  let lb: BalancerProcess | undefined;
  const held: Deno.Conn[] = [];
  try {
    const running = await startBalancerWithAdmin(
      dir,
      `listeners:
  - { name: db, listen: "127.0.0.1:0", pool: db }
pools:
  db: { backends: [{ address: "127.0.0.1:${a.port}" }, { address: "127.0.0.1:${b.port}" }] }
`,
      {
        token: "t",
        permissions: ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"],
      },
    );
    lb = running.lb;
    // b is away while 20 long-lived clients connect: all of them land on a.
    const bAddress = encodeURIComponent(`127.0.0.1:${b.port}`);
    assert.equal((await running.call("POST", `/api/backends/db/${bAddress}/disable`)).status, 200);
    for (let i = 0; i < 20; i++) {
      const conn = await connectLoopback(lb.port);
      assert.equal(await ask(conn, `client ${i}\n`), "a");
      held.push(conn);
    }
    assert.equal((await running.call("POST", `/api/backends/db/${bAddress}/enable`)).status, 200);
    // The data-plane threads report their counts a moment later.
    await until(
      async () => {
        const [first] = await running.backends("db");
        return (first as unknown as { active: number }).active === 20;
      },
      "a's 20 connections counted",
      400,
      25,
    );
    const bad = await running.call("POST", "/api/pools/db/rebalance", { rate_per_s: 0 });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error, /rate_per_s: expected a whole number 1-10000, got 0/);
    const misnamed = await running.call("POST", "/api/pools/db/rebalance", { rate: 10 });
    assert.equal(misnamed.status, 400);
    assert.match(misnamed.body.error, /unknown key\(s\) "rate"/);
    assert.equal((await running.call("POST", "/api/pools/db/rebalance", [])).status, 400);
    const started = await running.call("POST", "/api/pools/db/rebalance", { rate_per_s: 200 });
    assert.equal(started.status, 200, JSON.stringify(started.body));
    assert.equal(started.body.closing, 10);
    assert.deepEqual(
      started.body.backends.map((l: { recycle: number; share: number }) => [l.share, l.recycle]),
      [[10, 10], [10, 0]],
    );
    // The ten oldest are closed; the ten newest stay on a.
    const closed = await Promise.all(held.map(async (conn) => {
      const buffer = new Uint8Array(16);
      const read = await Promise.race([
        conn.read(buffer).catch(() => null),
        new Promise<"open">((resolve) => setTimeout(() => resolve("open"), 2000)),
      ]);
      return read === null;
    }));
    assert.deepEqual(closed, [...Array(10).fill(true), ...Array(10).fill(false)]);
    await lb.waitForLine("stdout", /end=rebalanced/);
    // Those clients reconnect, and now spread out.
    const again = [];
    for (let i = 0; i < 10; i++) again.push(serverOf(await exchange(lb.port, "again\n")));
    assert.ok(again.includes("b"));
    assert.equal((await running.call("POST", "/api/pools/nope/rebalance")).status, 404);
  } finally {
    for (const conn of held) conn.close();
    await lb?.close();
    await Promise.all([a.close(), b.close()]);
    await Deno.remove(dir, { recursive: true });
  }
});
