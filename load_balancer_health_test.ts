/**
 * Health end to end on loopback: a backend killed mid-run, then restarted.
 * Real sockets and real probes; the checks' schedule, backoff and slow start
 * run on a fake clock, moved by the test.
 */

import assert from "node:assert/strict";
import { serveBackend } from "./lab.ts";
import { tcpProbe } from "./health_check.ts";
import type { LoadBalancerEvent } from "./events.ts";
import {
  exchange,
  FakeClock,
  serverOf,
  startBalancer,
  startTaggedServer,
  until,
} from "./test_util.ts";

type StateChange = Extract<LoadBalancerEvent, { type: "backend-state" }>;

/**
 * Moves the clock on an interval at a time, letting each round of probes
 * finish, until `backend` goes `to`; returns the change and the clock's time.
 */
async function advanceUntil(
  clock: FakeClock,
  events: LoadBalancerEvent[],
  backend: string,
  to: "up" | "down",
  stepMs: number,
): Promise<{ change: StateChange; at: number }> {
  const find = () =>
    events.find((e): e is StateChange =>
      e.type === "backend-state" && e.backend === backend && e.to === to
    );
  for (let round = 0; round < 100 && find() === undefined; round++) {
    const checked = events.length;
    await clock.tick(stepMs);
    // A probe is real I/O: give it the turns it needs (a refused connect, a handshake).
    await until(() => find() !== undefined || events.length > checked, "a probe", 50).catch(
      () => {},
    );
  }
  const change = find();
  assert.ok(change, `${backend} never went ${to}`);
  return { change, at: clock.now() };
}

Deno.test("health: a killed backend is down within fall × interval, gets no clients, and ramps back up", async () => {
  const clock = new FakeClock();
  const one = startTaggedServer("1");
  const two = startTaggedServer("2");
  const intervalMs = 100;
  const lb = startBalancer([one.address, two.address], {
    healthCheck: { probe: tcpProbe(1000), intervalMs },
    health: { rise: 2, fall: 2, backoffBaseMs: 50, backoffMaxMs: 100, slowStartMs: 1500 },
    clock,
  });
  const twoName = lb.backends[1]!.name;
  let restarted: Deno.TcpListener | undefined;
  let serving: Promise<void> | undefined;
  try {
    assert.deepEqual(
      [await exchange(lb.port, "a\n"), await exchange(lb.port, "b\n")].map(serverOf).sort(),
      ["1", "2"],
    );

    // Kill it: the checks start failing, and `fall` of them take it down.
    const killedAt = clock.now();
    await two.close();
    const down = await advanceUntil(clock, lb.events, twoName, "down", intervalMs);
    assert.ok(down.at - killedAt <= 3 * intervalMs, `down after ${down.at - killedAt} ms`);
    assert.match(down.change.why, /^2 failed check\(s\) in a row, last: /);

    // While down, every client goes to the other one, without trying it first.
    const errorsBefore = lb.events.filter((e) => e.type === "connect-error").length;
    for (let i = 0; i < 10; i++) assert.equal(serverOf(await exchange(lb.port, "x\n")), "1");
    assert.equal(lb.events.filter((e) => e.type === "connect-error").length, errorsBefore);

    // Restart it on the same port: up after `rise` good checks…
    restarted = Deno.listen({ hostname: "127.0.0.1", port: two.port });
    serving = serveBackend(restarted, "2");
    const up = await advanceUntil(clock, lb.events, twoName, "up", intervalMs / 2);
    assert.equal(up.change.why, "2 good check(s) in a row");

    // …and at first it gets only a small share, while slow start ramps its weight.
    const early: string[] = [];
    for (let i = 0; i < 20; i++) early.push(serverOf(await exchange(lb.port, "x\n")));
    const earlyShare = early.filter((s) => s === "2").length;
    assert.ok(earlyShare <= 2, `right after coming up it got ${earlyShare} of 20`);

    // Past the slow start, its full weight: half of the clients.
    await clock.tick(1500);
    const later: string[] = [];
    for (let i = 0; i < 20; i++) later.push(serverOf(await exchange(lb.port, "x\n")));
    assert.equal(later.filter((s) => s === "2").length, 10, `at full weight: ${later}`);
  } finally {
    await lb.close();
    restarted?.close();
    await serving;
    await one.close();
  }
});
