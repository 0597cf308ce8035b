/** Health end to end on loopback: a backend killed mid-run, then restarted. */

import assert from "node:assert/strict";
import { serveBackend } from "./lab.ts";
import { tcpProbe } from "./health_check.ts";
import type { LoadBalancerEvent } from "./events.ts";
import { exchange, serverOf, startBalancer, startTaggedServer } from "./test_util.ts";

/** Resolves when the balancer reports `backend` going to `to`. */
function stateChange(events: LoadBalancerEvent[], backend: string, to: "up" | "down") {
  return new Promise<Extract<LoadBalancerEvent, { type: "backend-state" }>>((resolve, reject) => {
    const started = Date.now();
    const look = () => {
      const found = events.find((e) =>
        e.type === "backend-state" && e.backend === backend && e.to === to
      );
      if (found?.type === "backend-state") return resolve(found);
      if (Date.now() - started > 5000) return reject(new Error(`${backend} never went ${to}`));
      setTimeout(look, 5);
    };
    look();
  });
}

Deno.test("health: a killed backend is down within fall × interval, gets no clients, and ramps back up", async () => {
  const one = startTaggedServer("1");
  let two = startTaggedServer("2");
  const intervalMs = 100;
  const lb = startBalancer([one.address, two.address], {
    healthCheck: { probe: tcpProbe(100), intervalMs },
    health: { rise: 2, fall: 2, backoffBaseMs: 50, backoffMaxMs: 100, slowStartMs: 1500 },
  });
  const twoName = lb.backends[1]!.name;
  let restarted: Deno.TcpListener | undefined;
  let serving: Promise<void> | undefined;
  try {
    assert.deepEqual(
      [await exchange(lb.port, "a\n"), await exchange(lb.port, "b\n")].map(serverOf).sort(),
      ["1", "2"],
    );

    // Kill it: the checks start failing.
    const killedAt = performance.now();
    await two.close();
    const down = await stateChange(lb.events, twoName, "down");
    const tookMs = performance.now() - killedAt;
    assert.ok(tookMs < 2 * intervalMs + 400, `down after ${tookMs.toFixed(0)} ms`);
    assert.match(down.why, /^2 failed check\(s\) in a row, last: /);

    // While down, every client goes to the other one, without trying it first.
    const errorsBefore = lb.events.filter((e) => e.type === "connect-error").length;
    for (let i = 0; i < 10; i++) assert.equal(serverOf(await exchange(lb.port, "x\n")), "1");
    assert.equal(lb.events.filter((e) => e.type === "connect-error").length, errorsBefore);

    // Restart it on the same port: up after `rise` good checks…
    restarted = Deno.listen({ hostname: "127.0.0.1", port: two.port });
    serving = serveBackend(restarted, "2");
    const up = await stateChange(lb.events, twoName, "up");
    assert.equal(up.why, "2 good check(s) in a row");

    // …and at first it gets only a small share, while slow start ramps its weight.
    const early: string[] = [];
    for (let i = 0; i < 20; i++) early.push(serverOf(await exchange(lb.port, "x\n")));
    const earlyShare = early.filter((s) => s === "2").length;
    assert.ok(earlyShare <= 6, `right after coming up it got ${earlyShare} of 20`);

    await new Promise((resolve) => setTimeout(resolve, 1600));
    const later: string[] = [];
    for (let i = 0; i < 20; i++) later.push(serverOf(await exchange(lb.port, "x\n")));
    assert.equal(later.filter((s) => s === "2").length, 10, `at full weight: ${later}`);
  } finally {
    await lb.close();
    restarted?.close();
    await serving;
    await one.close();
    two = undefined!;
  }
});
