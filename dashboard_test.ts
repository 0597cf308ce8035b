import assert from "node:assert/strict";
import { parseHostPort } from "./address.ts";
import { Dashboard, eventStream, MAX_STREAMS } from "./dashboard.ts";
import { Histogram, type ListenerStats } from "./metrics.ts";
import { Backend, Pool } from "./pool.ts";
import { FakeClock } from "./test_util.ts";

function fixture() {
  const clock = new FakeClock();
  const one = new Backend(parseHostPort("127.0.0.1:5001"));
  const two = new Backend(parseHostPort("127.0.0.1:5002"));
  const pool = new Pool({ name: "web", backends: [one, two] });
  const listener: ListenerStats & { activeConnections: number } = {
    name: "main",
    pool: { name: "web" },
    activeConnections: 0,
    durations: new Histogram([1]),
    rejected: new Map(),
  };
  const dashboard = new Dashboard({
    listeners: () => [listener],
    pools: () => [pool],
    describe: () => ({ address: "127.0.0.1:5000", engine: "epoll", threads: 2 }),
  }, clock);
  // deno-lint-ignore no-explicit-any
  const snapshot = () => dashboard.snapshot() as any;
  return { clock, one, two, listener, dashboard, snapshot };
}

Deno.test("Dashboard: rates per second from the counters, five minutes of history, state and since", async () => {
  const { clock, one, listener, dashboard, snapshot } = fixture();
  dashboard.sample();
  one.connections = 10;
  one.active = 2;
  one.connectFailures = 1;
  one.bytesIn = 4096;
  for (let i = 0; i < 12; i++) listener.durations.observe(0.1);
  await clock.tick(2000);
  dashboard.sample();
  let backend = snapshot().pools[0].backends[0];
  assert.equal(backend.connections_per_s, 6, "12 new (10 ended, 2 open) over 2 s");
  assert.equal(backend.history.errors_per_s.at(-1), 0.5);
  assert.equal(backend.bytes_in_per_s, 2048);
  assert.equal(snapshot().listeners[0].accepted_per_s, 6);
  assert.deepEqual(
    { engine: snapshot().listeners[0].engine, threads: snapshot().listeners[0].threads },
    { engine: "epoll", threads: 2 },
  );
  for (let i = 0; i < 400; i++) dashboard.sample();
  assert.equal(snapshot().pools[0].backends[0].history.connections_per_s.length, 300);
  one.adminState = "draining";
  dashboard.sample();
  await clock.tick(7000);
  backend = snapshot().pools[0].backends[0];
  assert.deepEqual([backend.state, backend.for_s], ["draining", 7]);
});

Deno.test("Dashboard: the last checks as a strip, and recent events newest first, fifty at most", () => {
  const { one, dashboard, snapshot } = fixture();
  for (let i = 0; i < 25; i++) {
    one.lastCheck = { at: new Date(1_000_000 + i), ok: i % 5 !== 0 };
    dashboard.sample();
  }
  dashboard.sample(); // the same check again: not counted twice
  const checks = snapshot().pools[0].backends[0].checks;
  assert.equal(checks.length, 20);
  assert.deepEqual(checks.slice(0, 5), [false, true, true, true, true], "checks 5 to 24");
  for (let i = 0; i < 60; i++) dashboard.note("reload", `reload ${i}`);
  const events = snapshot().events;
  assert.equal(events.length, 50);
  assert.equal(events[0].text, "reload 59");
});

Deno.test("eventStream(): a snapshot at once and every half second, until cancelled", async () => {
  const { clock, dashboard } = fixture();
  const reader = eventStream(dashboard, clock)!.getReader();
  const text = async () => new TextDecoder().decode((await reader.read()).value);
  assert.equal(await text(), "retry: 2000\n\n");
  assert.match(await text(), /^event: snapshot\ndata: \{"version":/);
  await clock.tick(500);
  assert.match(await text(), /^event: snapshot\n/);
  await reader.cancel();
  assert.equal(clock.pending, 0, "no timer left behind");
});

Deno.test("Dashboard: connect time p50 and p99 over the last 256, failed connects by cause", () => {
  const { one, dashboard, snapshot } = fixture();
  assert.equal(snapshot().pools[0].backends[0].connect_ms, null);
  for (let ms = 1; ms <= 300; ms++) one.recordConnectTime(ms);
  assert.deepEqual(
    snapshot().pools[0].backends[0].connect_ms,
    { p50: 172, p99: 298 },
    "45..300: the 128th and the 254th",
  );
  dashboard.connectError("127.0.0.1:5001", "ECONNREFUSED: Connection refused (os error 111)");
  dashboard.connectError("127.0.0.1:5001", "ECONNREFUSED: Connection refused (os error 111)");
  dashboard.connectError("127.0.0.1:5001", "TimedOut: no answer in 5000 ms");
  assert.deepEqual(snapshot().pools[0].backends[0].errors_by_cause, {
    ECONNREFUSED: 2,
    TimedOut: 1,
  });
});

Deno.test("eventStream(): at most MAX_STREAMS at once; a closed one makes room", async () => {
  const { clock, dashboard } = fixture();
  const open = Array.from(
    { length: MAX_STREAMS },
    () => eventStream(dashboard, clock)!.getReader(),
  );
  assert.equal(eventStream(dashboard, clock), undefined, "one more is refused");
  await open.pop()!.cancel();
  const again = eventStream(dashboard, clock);
  assert.ok(again !== undefined);
  await Promise.all([...open.map((r) => r.cancel()), again.cancel()]);
  assert.equal(dashboard.streams, 0);
  assert.equal(clock.pending, 0);
});

Deno.test("Dashboard: clients no backend served count as failed for their listener", () => {
  const { dashboard, snapshot } = fixture();
  for (const end of ["client-fin", "no-backend", "connect-failed", "queue-full", "acl"]) {
    dashboard.ended("main", end);
  }
  assert.equal(snapshot().listeners[0].failed, 3);
});
