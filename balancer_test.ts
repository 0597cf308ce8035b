import assert from "node:assert/strict";
import { RoundRobin } from "./balancer.ts";

const none = new Set<string>();

Deno.test("RoundRobin hands out backends in order and wraps: s1 s2 s3 s1 s2 s3 s1", () => {
  const strategy = new RoundRobin<string>();
  const backends = ["s1", "s2", "s3"];
  const picks = Array.from({ length: 7 }, () => strategy.pick(backends, { tried: none }));
  assert.deepEqual(picks, ["s1", "s2", "s3", "s1", "s2", "s3", "s1"]);
});

Deno.test("RoundRobin steps over backends this client already tried", () => {
  const strategy = new RoundRobin<string>();
  const backends = ["s1", "s2", "s3"];
  assert.equal(strategy.pick(backends, { tried: new Set(["s1"]) }), "s2");
  assert.equal(strategy.pick(backends, { tried: new Set(["s3", "s1"]) }), "s2");
  assert.equal(strategy.pick(backends, { tried: new Set(["s1", "s2", "s3"]) }), undefined);
});

Deno.test("RoundRobin moves its cursor once per attempt, so a retry goes on to the next", () => {
  // Client A: s1. Client B: s2 fails, retry gets s3. Client C: s1 again.
  const strategy = new RoundRobin<string>();
  const backends = ["s1", "s2", "s3"];
  assert.equal(strategy.pick(backends, { tried: none }), "s1");
  assert.equal(strategy.pick(backends, { tried: none }), "s2");
  assert.equal(strategy.pick(backends, { tried: new Set(["s2"]) }), "s3");
  assert.equal(strategy.pick(backends, { tried: none }), "s1");
});

Deno.test("RoundRobin returns undefined for an empty pool and never reorders the caller's list", () => {
  const strategy = new RoundRobin<string>();
  assert.equal(strategy.pick([], { tried: none }), undefined);
  const backends = Object.freeze(["s1", "s2"]);
  strategy.pick(backends, { tried: none });
  assert.deepEqual(backends, ["s1", "s2"]);
});
