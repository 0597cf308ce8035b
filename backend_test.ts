import assert from "node:assert/strict";
import { exchange, readAll, runScript, startTaggedServer } from "./test_util.ts";

Deno.test("backend answers each line with its tag, in order", async () => {
  const server = startTaggedServer("1");
  try {
    assert.equal(
      await exchange(server.port, "hello\nworld\n"),
      "[Server 1] hello\n[Server 1] world\n",
    );
  } finally {
    await server.close();
  }
});

Deno.test("backend answers a last line without a newline at end of input", async () => {
  const server = startTaggedServer("2");
  try {
    assert.equal(await exchange(server.port, "a\npartial"), "[Server 2] a\n[Server 2] partial\n");
    assert.equal(await exchange(server.port, ""), "");
  } finally {
    await server.close();
  }
});

Deno.test("backend joins a line that arrives in pieces", async () => {
  const server = startTaggedServer("3");
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    const encoder = new TextEncoder();
    await conn.write(encoder.encode("hel"));
    await conn.write(encoder.encode("lo\nby"));
    await conn.write(encoder.encode("e\n"));
    await conn.closeWrite();
    assert.equal(
      new TextDecoder().decode(await readAll(conn)),
      "[Server 3] hello\n[Server 3] bye\n",
    );
    conn.close();
  } finally {
    await server.close();
  }
});

Deno.test("backend.ts with missing or bad arguments prints usage and exits 2", async () => {
  const cases: [string[], RegExp][] = [
    [[], /^backend: expected 2 arguments, got 0/],
    [["5001"], /^backend: expected 2 arguments, got 1/],
    [["70000", "1"], /^backend: PORT 70000: port must be an integer 0-65535/],
    [["x", "1"], /^backend: PORT x: port must be an integer/],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await runScript("backend.ts", args);
    assert.equal(code, 2, args.join(" "));
    assert.match(stderr, message);
    assert.match(stderr, /Usage: deno run --allow-net backend.ts PORT ID/);
  }
});
