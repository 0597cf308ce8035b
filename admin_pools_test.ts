import assert from "node:assert/strict";
import { exchange, startBalancerWithAdmin, startTaggedServer } from "./test_util.ts";

const TOKEN = "pool-changes-token";

Deno.test("admin: POST and DELETE a pool's backends at run time; a reload of the file keeps them", async () => {
  const one = startTaggedServer("1");
  const two = startTaggedServer("2");
  const dir = await Deno.makeTempDir();
  const { lb, base, call } = await startBalancerWithAdmin(
    dir,
    `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:${one.port}" }] }
`,
    {
      token: TOKEN,
      permissions: ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"],
    },
  );
  const servers = async (n: number) => {
    const seen: string[] = [];
    for (let i = 0; i < n; i++) seen.push((await exchange(lb.port, "x\n")).slice(8, 9));
    return seen.join("");
  };
  try {
    assert.equal(await servers(2), "11");
    const added = await call("POST", "/api/pools/web/backends", {
      address: `127.0.0.1:${two.port}`,
      weight: 1,
    });
    assert.equal(added.status, 200, JSON.stringify(added.body));
    // Round robin over both now: each server exactly once in two.
    assert.deepEqual([...await servers(4)].sort().join(""), "1122");

    // A reload of the file keeps the added backend.
    lb.kill("SIGHUP");
    await lb.waitForLine("stderr", /reloaded \(SIGHUP\)/);
    assert.deepEqual([...await servers(4)].sort().join(""), "1122");

    const removed = await call("DELETE", `/api/pools/web/backends/127.0.0.1%3A${one.port}`);
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    assert.equal(await servers(3), "222");

    // Refusals say why, and change nothing.
    const bad = await call("POST", "/api/pools/web/backends", { address: "nowhere" });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error, /address: expected HOST:PORT/);
    const unknownPool = await call("POST", "/api/pools/db/backends", { address: "127.0.0.1:1" });
    assert.equal(unknownPool.status, 404);
    const last = await call("DELETE", `/api/pools/web/backends/127.0.0.1%3A${two.port}`);
    assert.equal(last.status, 400);
    assert.match(last.body.error, /expected at least one backend/);
    assert.equal(await servers(2), "22");
    const wrongMethod = await fetch(`${base}/api/pools/web/backends`, { method: "GET" });
    assert.equal(wrongMethod.status, 405);
    assert.equal(wrongMethod.headers.get("allow"), "POST");
    await wrongMethod.body?.cancel();
    const noToken = await fetch(`${base}/api/pools/web/backends`, { method: "POST", body: "{}" });
    assert.equal(noToken.status, 401);
    await noToken.body?.cancel();
  } finally {
    await lb.close();
    await Promise.all([one.close(), two.close()]);
    await Deno.remove(dir, { recursive: true });
  }
});
