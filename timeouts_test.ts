import assert from "node:assert/strict";
import { type Clock, TimeoutQueue } from "./timeouts.ts";

/** A clock whose time moves only when the test says, with the timers it holds. */
function fakeClock() {
  let now = 0;
  let nextId = 1;
  const timers = new Map<number, { at: number; callback: () => void }>();
  const clock: Clock = {
    now: () => now,
    setTimer(callback, ms) {
      const id = nextId++;
      timers.set(id, { at: now + ms, callback });
      return id;
    },
    clearTimer: (id) => void timers.delete(id),
  };
  return {
    clock,
    timers,
    /** Moves time to `to`, firing due timers in order. */
    advanceTo(to: number) {
      while (true) {
        const due = [...timers].filter(([, t]) => t.at <= to).sort((a, b) => a[1].at - b[1].at)[0];
        if (due === undefined) break;
        timers.delete(due[0]);
        now = due[1].at;
        due[1].callback();
      }
      now = to;
    },
  };
}

Deno.test("TimeoutQueue fires each timeout at its deadline, in order, from one timer", () => {
  const time = fakeClock();
  const queue = new TimeoutQueue(time.clock);
  const fired: string[] = [];
  queue.add(100, () => fired.push(`a@${time.clock.now()}`));
  time.advanceTo(30);
  queue.add(100, () => fired.push(`b@${time.clock.now()}`));
  time.advanceTo(60);
  queue.add(100, () => fired.push(`c@${time.clock.now()}`));
  assert.equal(time.timers.size, 1);
  time.advanceTo(1000);
  assert.deepEqual(fired, ["a@100", "b@130", "c@160"]);
  assert.equal(queue.length, 0);
  assert.equal(time.timers.size, 0);
});

Deno.test("TimeoutQueue: a cancelled timeout never fires, and the front is dropped at once", () => {
  const time = fakeClock();
  const queue = new TimeoutQueue(time.clock);
  const fired: string[] = [];
  const a = queue.add(100, () => fired.push("a"));
  const b = queue.add(100, () => fired.push("b"));
  queue.add(100, () => fired.push("c"));
  b.cancel();
  assert.equal(queue.length, 3, "b is behind a live a");
  a.cancel();
  assert.equal(queue.length, 1, "a and b are gone, c is left");
  a.cancel();
  time.advanceTo(1000);
  assert.deepEqual(fired, ["c"]);
});

Deno.test("TimeoutQueue keeps its timer armed when emptied, and it then fires harmlessly", () => {
  const time = fakeClock();
  const queue = new TimeoutQueue(time.clock);
  // The common case: every attempt finishes long before its timeout. No
  // timer is set or cleared per attempt.
  for (let i = 0; i < 100; i++) queue.add(5000, () => assert.fail("cancelled")).cancel();
  assert.equal(queue.length, 0);
  assert.equal(time.timers.size, 1);
  time.advanceTo(5000);
  assert.equal(time.timers.size, 0, "nothing left: not re-armed");
  // A later timeout arms a timer of its own.
  let fired = false;
  queue.add(5000, () => fired = true);
  assert.equal(time.timers.size, 1);
  time.advanceTo(10_000);
  assert.ok(fired);
});

Deno.test("TimeoutQueue: a shorter timeout after a longer one (a reload) still fires first", () => {
  const time = fakeClock();
  const queue = new TimeoutQueue(time.clock);
  const fired: string[] = [];
  queue.add(5000, () => fired.push(`long@${time.clock.now()}`));
  queue.add(200, () => fired.push(`short@${time.clock.now()}`));
  time.advanceTo(10_000);
  assert.deepEqual(fired, ["short@200", "long@5000"]);
});

Deno.test("TimeoutQueue.clear() forgets every timeout and stops its timer", () => {
  const time = fakeClock();
  const queue = new TimeoutQueue(time.clock);
  queue.add(100, () => assert.fail("cleared"));
  queue.clear();
  assert.equal(time.timers.size, 0);
  assert.equal(queue.length, 0);
  time.advanceTo(1000);
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
