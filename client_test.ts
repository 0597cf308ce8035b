import assert from "node:assert/strict";
import net from "node:net";
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

Deno.test("client.ts whose connection is reset says so in one line and exits 1", async () => {
  // A server that resets on the first bytes, as a balancer's drain timeout does.
  const server = net.createServer((socket) => {
    socket.on("error", () => {});
    socket.once("data", () => socket.resetAndDestroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  try {
    const { code, stderr } = await runScript("client.ts", [`127.0.0.1:${port}`], {
      stdin: "hello\n",
    });
    assert.equal(code, 1);
    assert.match(stderr, new RegExp(`^client: the connection to 127.0.0.1:${port} ended: .+\\n$`));
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});
