import assert from "node:assert/strict";
import { EarlyBytes } from "./early.ts";
import { Attempt } from "./engine.ts";

const bytes = (...values: number[]) => new Uint8Array(values);

Deno.test("EarlyBytes: view() joins the chunks in order; discard() drops from the front across chunks", () => {
  const early = new EarlyBytes();
  early.push(bytes(1, 2));
  early.push(bytes(3));
  early.push(bytes(4, 5, 6));
  assert.deepEqual(early.view(), bytes(1, 2, 3, 4, 5, 6));
  early.push(bytes(7));
  early.discard(4);
  assert.equal(early.bytes, 3);
  assert.deepEqual(early.view(), bytes(5, 6, 7));
  early.discard(10);
  assert.equal(early.bytes, 0);
  assert.deepEqual(early.chunks, []);
});

Deno.test("EarlyBytes: more() waits for bytes past what is known, or the end, or a failure", async () => {
  const early = new EarlyBytes();
  const order: string[] = [];
  const first = early.more(0).then(() => order.push("first"));
  await Promise.resolve();
  assert.equal(order.length, 0);
  early.push(bytes(1));
  await first;
  // Known already: resolves only when something new comes.
  const second = early.more(1).then(() => order.push("second"));
  await Promise.resolve();
  assert.equal(order.join(), "first");
  early.end();
  await second;
  await early.more(1); // ended: at once
  const failed = new EarlyBytes();
  const third = failed.more(0).then(() => order.push("third"));
  failed.fail();
  await third;
  assert.equal(order.join(), "first,second,third");
});

Deno.test("EarlyBytes: a byte at a time, read whole after each, keeps every byte in order", () => {
  const early = new EarlyBytes();
  for (let i = 0; i < 5000; i++) {
    early.push(bytes(i & 0xff));
    const view = early.view();
    assert.equal(view.length, i + 1);
    assert.equal(view[i], i & 0xff);
  }
  early.discard(4990);
  assert.deepEqual([...early.view()], [...Array(10).keys()].map((k) => (4990 + k) & 0xff));
  assert.equal(early.chunks.length, 1);
});

Deno.test("EarlyBytes: recycled, it holds nothing and the next client's bytes are whole; a buffer lent by a view or a peek is never reused", async () => {
  const first = new EarlyBytes();
  first.push(bytes(1, 2, 3));
  first.recycle();
  assert.equal(first.bytes, 0);
  const second = new EarlyBytes();
  second.push(bytes(9, 8));
  const copied = new Uint8Array(2);
  second.copyTo(copied, 0);
  assert.deepEqual(copied, bytes(9, 8));

  const held = second.view();
  const peeked = await second.peek(0, new Attempt());
  second.recycle();
  for (let i = 0; i < 4; i++) {
    const next = new EarlyBytes();
    next.push(bytes(7, 7, 7));
    next.recycle();
  }
  assert.deepEqual(held, bytes(9, 8));
  assert.deepEqual(peeked.bytes, bytes(9, 8));
  assert.deepEqual(second.view(), bytes(9, 8));
});

Deno.test("EarlyBytes: copyTo() writes what is held, after a discard, small or large, where asked", () => {
  for (const size of [0, 3, 600]) {
    const early = new EarlyBytes();
    early.push(new Uint8Array(size + 2).map((_, i) => i & 0xff));
    early.discard(2);
    const target = new Uint8Array(size + 10).fill(0xee);
    assert.equal(early.copyTo(target, 4), size);
    assert.deepEqual(target.subarray(4, 4 + size), early.view());
    assert.equal(target[3], 0xee);
    assert.equal(target[4 + size], 0xee);
  }
});
