import assert from "node:assert/strict";
import { Attempt } from "./engine.ts";

Deno.test("Attempt: abandoned once, with the first reason, calling what the engine set", () => {
  const attempt = new Attempt();
  const calls: unknown[] = [];
  attempt.setOnAbort((reason) => calls.push(reason));
  assert.equal(attempt.aborted, false);
  attempt.abort("timeout");
  attempt.abort("draining");
  assert.equal(attempt.aborted, true);
  assert.equal(attempt.reason, "timeout");
  assert.deepEqual(calls, ["timeout"]);
});

Deno.test("Attempt: nothing is called once the engine has cleared its callback", () => {
  const attempt = new Attempt();
  let called = false;
  attempt.setOnAbort(() => called = true);
  attempt.setOnAbort(undefined); // connected: nothing left to abandon
  attempt.abort("timeout");
  assert.equal(called, false);
  assert.equal(attempt.aborted, true);
});
