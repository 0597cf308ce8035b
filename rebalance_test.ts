import assert from "node:assert/strict";
import { rebalancePlan } from "./rebalance.ts";

const backend = (
  name: string,
  active: number,
  extra: Partial<{ w: number; backup: boolean; usable: boolean }> = {},
) => ({
  name,
  active,
  configuredWeight: extra.w ?? 1,
  backup: extra.backup ?? false,
  usable: extra.usable ?? true,
});

Deno.test("rebalancePlan(): a backend over its weighted share gives up the excess; others none", () => {
  assert.deepEqual(rebalancePlan([backend("a", 20), backend("b", 0)]), [
    { address: "a", active: 20, share: 10, recycle: 10 },
    { address: "b", active: 0, share: 10, recycle: 0 },
  ]);
  // Weights 3:1 over 40 connections: a's share is 30.
  assert.deepEqual(
    rebalancePlan([backend("a", 36, { w: 3 }), backend("b", 4)]).map((l) => l.recycle),
    [6, 0],
  );
});

Deno.test("rebalancePlan(): within tolerance, or one over, nothing moves; down, draining and backups are left alone", () => {
  assert.deepEqual(rebalancePlan([backend("a", 11), backend("b", 9)]).map((l) => l.recycle), [
    0,
    0,
  ]);
  assert.deepEqual(rebalancePlan([backend("a", 2), backend("b", 1)]).map((l) => l.recycle), [0, 0]);
  const plan = rebalancePlan([
    backend("a", 10),
    backend("b", 0),
    backend("down", 30, { usable: false }),
    backend("spare", 5, { backup: true }),
  ]);
  assert.deepEqual(plan.map((l) => [l.address, l.recycle]), [["a", 5], ["b", 0]]);
});
