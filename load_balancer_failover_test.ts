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
      timeout_ms: 500
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
        await until(
          async () => {
            const states = (await running.backends("db")).map((x) => x.state);
            return states.join() === "up,down";
          },
          "a up, b down (a replica)",
          400,
          25,
        );
        const held = await connectLoopback(lb.port);
        assert.equal(await ask(held, "before\n"), "a");
        // Fail over: b is promoted, a demoted.
        roles.a.primary = false;
        roles.b.primary = true;
        await until(
          async () => {
            const states = (await running.backends("db")).map((x) => x.state);
            return states.join() === "down,up";
          },
          "a down, b up",
          400,
          25,
        );
        assert.equal(serverOf(await exchange(lb.port, "new\n")), "b", "new clients go to b");
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
