import assert from "node:assert/strict";
import { runScript } from "./test_util.ts";

/**
 * The first of `count` consecutive free ports, below Linux's ephemeral range
 * (32768 and up, where client sockets get their ports) and away from the
 * lab's own 5000-5002, so a demo someone left running does not get in the way.
 */
function freePortRun(count: number): number {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 10000 + Math.floor(Math.random() * 20000);
    const held: Deno.Listener[] = [];
    try {
      for (let i = 0; i < count; i++) {
        held.push(Deno.listen({ hostname: "127.0.0.1", port: base + i }));
      }
      return base;
    } catch {
      // Taken; try another run.
    } finally {
      held.forEach((listener) => listener.close());
    }
  }
  throw new Error(`no run of ${count} free ports found`);
}

Deno.test("demo starts two backends and the balancer, shows the answers alternating, stops them", async () => {
  const base = freePortRun(3);
  const { code, stdout, stderr } = await runScript("demo.ts", [String(base)], {
    permissions: ["--allow-net", "--allow-run", "--allow-read"],
  });
  assert.equal(code, 0, stderr);
  const answers = stdout.split("\n").filter((line) => line.includes("→"));
  assert.deepEqual(
    answers,
    [1, 2, 3, 4, 5, 6].map((i) =>
      `  client ${i} → [Server ${((i - 1) % 2) + 1}] hello from client ${i}`
    ),
  );
  assert.match(stdout, /Round robin: 1, 2, 1, 2, 1, 2, as expected\./);
  assert.match(stdout, /Stopped the balancer and both backends\./);
  // Nothing it started is still listening.
  for (const port of [base, base + 1, base + 2]) {
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }));
  }
});
