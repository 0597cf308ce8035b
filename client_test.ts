import assert from "node:assert/strict";
import { refusingAddress, runScript, startTaggedServer } from "./test_util.ts";

Deno.test("client.ts sends piped lines, prints each answer, and exits at end of input", async () => {
  const server = startTaggedServer("1");
  try {
    const { code, stdout } = await runScript("client.ts", [`127.0.0.1:${server.port}`], {
      stdin: "one\ntwo\nthree",
    });
    assert.equal(code, 0);
    assert.equal(stdout, "[Server 1] one\n[Server 1] two\n[Server 1] three\n");
  } finally {
    await server.close();
  }
});

Deno.test("client.ts that cannot connect says so in one line and exits 1", async () => {
  const { port } = refusingAddress();
  const { code, stdout, stderr } = await runScript("client.ts", [`127.0.0.1:${port}`], {
    stdin: "",
  });
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.match(stderr, new RegExp(`^client: cannot connect to 127.0.0.1:${port}: .+\\n$`));
});
