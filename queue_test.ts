import assert from "node:assert/strict";
import { WaitQueue } from "./queue.ts";

Deno.test("WaitQueue wakes waiters first come, first served", async () => {
  const queue = new WaitQueue({ max: 10, timeoutMs: 10_000 });
  const order: string[] = [];
  const a = queue.wait().then((outcome) => order.push(`a:${outcome}`));
  const b = queue.wait().then((outcome) => order.push(`b:${outcome}`));
  assert.equal(queue.length, 2);
  queue.wake();
  await a;
  queue.wake();
  await b;
  assert.deepEqual(order, ["a:slot", "b:slot"]);
  assert.equal(queue.length, 0);
  queue.wake(); // nobody waiting: nothing happens
});

Deno.test("WaitQueue turns a client away when full, and times waits out", async () => {
  const queue = new WaitQueue({ max: 1, timeoutMs: 30 });
  const first = queue.wait();
  assert.equal(await queue.wait(), "full");
  assert.equal(await first, "timeout");
  assert.equal(queue.length, 0);
});

Deno.test("WaitQueue.cutAll() ends every wait", async () => {
  const queue = new WaitQueue({ timeoutMs: 10_000 });
  const waits = [queue.wait(), queue.wait()];
  queue.cutAll();
  assert.deepEqual(await Promise.all(waits), ["cut", "cut"]);
});
