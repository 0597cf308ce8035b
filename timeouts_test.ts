import assert from "node:assert/strict";
import { TimeoutQueue } from "./timeouts.ts";
import { FakeClock } from "./test_util.ts";

Deno.test("TimeoutQueue fires each timeout at its deadline, in order, from one timer", async () => {
  const clock = new FakeClock();
  const queue = new TimeoutQueue(clock);
  const fired: string[] = [];
  queue.add(100, () => fired.push(`a@${clock.now()}`));
  await clock.advanceTo(30);
  queue.add(100, () => fired.push(`b@${clock.now()}`));
  await clock.advanceTo(60);
  queue.add(100, () => fired.push(`c@${clock.now()}`));
  assert.equal(clock.pending, 1);
  await clock.advanceTo(1000);
  assert.deepEqual(fired, ["a@100", "b@130", "c@160"]);
  assert.equal(queue.length, 0);
  assert.equal(clock.pending, 0);
});

Deno.test("TimeoutQueue: a cancelled timeout never fires, and the front is dropped at once", async () => {
  const clock = new FakeClock();
  const queue = new TimeoutQueue(clock);
  const fired: string[] = [];
  const a = queue.add(100, () => fired.push("a"));
  const b = queue.add(100, () => fired.push("b"));
  queue.add(100, () => fired.push("c"));
  b.cancel();
  assert.equal(queue.length, 3, "b is behind a live a");
  a.cancel();
  assert.equal(queue.length, 1, "a and b are gone, c is left");
  a.cancel();
  await clock.advanceTo(1000);
  assert.deepEqual(fired, ["c"]);
});

Deno.test("TimeoutQueue keeps its timer armed when emptied, and it then fires harmlessly", async () => {
  const clock = new FakeClock();
  const queue = new TimeoutQueue(clock);
  // The common case: every attempt finishes long before its timeout. No
  // timer is set or cleared per attempt.
  for (let i = 0; i < 100; i++) queue.add(5000, () => assert.fail("cancelled")).cancel();
  assert.equal(queue.length, 0);
  assert.equal(clock.pending, 1);
  await clock.advanceTo(5000);
  assert.equal(clock.pending, 0, "nothing left: not re-armed");
  // A later timeout arms a timer of its own.
  let fired = false;
  queue.add(5000, () => fired = true);
  assert.equal(clock.pending, 1);
  await clock.advanceTo(10_000);
  assert.ok(fired);
});

Deno.test("TimeoutQueue: a shorter timeout after a longer one (a reload) still fires first", async () => {
  const clock = new FakeClock();
  const queue = new TimeoutQueue(clock);
  const fired: string[] = [];
  queue.add(5000, () => fired.push(`long@${clock.now()}`));
  queue.add(200, () => fired.push(`short@${clock.now()}`));
  await clock.advanceTo(10_000);
  assert.deepEqual(fired, ["short@200", "long@5000"]);
});

Deno.test("TimeoutQueue.clear() forgets every timeout and stops its timer", async () => {
  const clock = new FakeClock();
  const queue = new TimeoutQueue(clock);
  queue.add(100, () => assert.fail("cleared"));
  queue.clear();
  assert.equal(clock.pending, 0);
  assert.equal(queue.length, 0);
  await clock.advanceTo(1000);
});

Deno.test("TimeoutQueue on the real clock: fires, and clear() leaves no timer behind", async () => {
  const queue = new TimeoutQueue();
  const fired = Promise.withResolvers<void>();
  queue.add(5, () => fired.resolve());
  // The queue's timer is unref'd (in the balancer a pending connect keeps
  // the process alive); here a plain timer stands in for that connect.
  const alive = setTimeout(() => {}, 10_000);
  await fired.promise;
  clearTimeout(alive);
  queue.add(60_000, () => assert.fail("cleared"));
  queue.clear();
});

Deno.test("TimeoutQueue: a timeout added while one fires (a retry) does not delay those already queued", async () => {
  const clock = new FakeClock();
  const queue = new TimeoutQueue(clock);
  const fired: string[] = [];
  // A times out and its callback tries again at once, adding a later timeout
  // from inside the queue's own firing; B, due before that one, keeps its time.
  queue.add(1000, () => {
    fired.push(`a@${clock.now()}`);
    queue.add(1000, () => fired.push(`retry@${clock.now()}`));
  });
  await clock.advanceTo(500);
  queue.add(1000, () => fired.push(`b@${clock.now()}`));
  await clock.advanceTo(5000);
  assert.deepEqual(fired, ["a@1000", "b@1500", "retry@2000"]);
});
