import assert from "node:assert/strict";
import { runScript } from "./test_util.ts";

Deno.test("demo starts two backends and the balancer, shows the answers alternating, stops them", async () => {
  // Three consecutive ports away from the lab's own 5000-5002, so a demo
  // someone left running does not get in the way.
  const base = 20000 + Math.floor(Math.random() * 20000);
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
