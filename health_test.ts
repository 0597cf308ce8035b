import assert from "node:assert/strict";
import {
  admits,
  DEFAULT_HEALTH,
  effectiveWeight,
  type Health,
  INITIAL_HEALTH,
  nextCheckIn,
  recordCheck,
  recordConnect,
  startTrial,
} from "./health.ts";
import {
  type Checkable,
  fromHex,
  HealthChecker,
  sendExpectProbe,
  tcpProbe,
  udpProbe,
} from "./health_check.ts";
import {
  FakeClock,
  refusingAddress,
  silentAddress,
  startServer,
  startUdpServer,
  until,
  writeAll,
} from "./test_util.ts";

const settings = { ...DEFAULT_HEALTH, rise: 2, fall: 3, backoffBaseMs: 1000, backoffMaxMs: 5000 };

Deno.test("active checks: down after `fall` failures in a row, a success in between resets", () => {
  let h: Health = INITIAL_HEALTH;
  const steps: [boolean, number, string][] = [
    [false, 1, "up"],
    [false, 2, "up"],
    [true, 0, "up"], // the streak starts over
    [false, 1, "up"],
    [false, 2, "up"],
    [false, 0, "down"],
  ];
  steps.forEach(([ok, streak, state], i) => {
    const { health, change } = recordCheck(h, ok, 100 * i, settings, "refused");
    assert.equal(health.state, state, `step ${i}`);
    assert.equal(health.streak, streak, `step ${i}`);
    assert.equal(change !== undefined, i === 5, `step ${i}`);
    h = health;
  });
  assert.deepEqual(
    recordCheck(INITIAL_HEALTH, false, 0, { ...settings, fall: 1 }, "refused").change,
    {
      from: "up",
      to: "down",
      why: "1 failed check(s) in a row, last: refused",
    },
  );
});

Deno.test("active checks: up after `rise` good checks; a failure while down doubles the backoff", () => {
  let h = recordCheck(
    recordCheck(recordCheck(INITIAL_HEALTH, false, 0, settings).health, false, 0, settings)
      .health,
    false,
    0,
    settings,
  ).health;
  assert.deepEqual([h.state, h.backoffMs, h.retryAt], ["down", 1000, 1000]);
  h = recordCheck(h, false, 1000, settings).health;
  assert.deepEqual([h.state, h.backoffMs, h.retryAt], ["down", 2000, 3000]);
  h = recordCheck(h, false, 3000, settings).health;
  h = recordCheck(h, false, 7000, settings).health;
  assert.deepEqual([h.backoffMs, h.retryAt], [5000, 12000]); // capped at backoffMaxMs
  const once = recordCheck(h, true, 12000, settings);
  assert.deepEqual([once.health.state, once.health.streak, once.change], ["down", 1, undefined]);
  const twice = recordCheck(once.health, true, 14000, settings);
  assert.equal(twice.health.state, "up");
  assert.equal(twice.health.upSince, 14000);
  assert.deepEqual(twice.change, { from: "down", to: "up", why: "2 good check(s) in a row" });
});

Deno.test("next check: the interval while up or rising, the backoff while failing", () => {
  const down = recordCheck({ ...INITIAL_HEALTH, streak: 2 }, false, 500, settings).health;
  assert.equal(nextCheckIn(down, 500, 2000), 1000); // retryAt 1500
  const rising = recordCheck(down, true, 1500, settings).health;
  assert.equal(nextCheckIn(rising, 1500, 2000), 2000);
  assert.equal(nextCheckIn(INITIAL_HEALTH, 0, 2000), 2000);
});

Deno.test("passive ejection: `fall` failed connects take it down; one trial after the backoff", () => {
  let h: Health = INITIAL_HEALTH;
  for (let i = 0; i < 3; i++) h = recordConnect(h, false, 0, settings, "refused").health;
  assert.equal(h.state, "down");
  // Without active checks: closed to clients until the backoff has run out…
  assert.equal(admits(h, 999, false), false);
  assert.equal(admits(h, 1000, false), true);
  // …then one client tries it, and nobody else meanwhile (half-open).
  h = startTrial(h);
  assert.equal(admits(h, 1000, false), false);
  // It fails: the wait doubles.
  h = recordConnect(h, false, 1010, settings).health;
  assert.deepEqual([h.trial, h.backoffMs, h.retryAt], [false, 2000, 3010]);
  assert.equal(admits(h, 3009, false), false);
  // The next trial succeeds: up at once.
  const { health, change } = recordConnect(startTrial(h), true, 3010, settings);
  assert.equal(health.state, "up");
  assert.deepEqual(change, { from: "down", to: "up", why: "a client connected" });
});

Deno.test("passive ejection with active checks: only the checker brings it back", () => {
  let h: Health = INITIAL_HEALTH;
  for (let i = 0; i < 3; i++) h = recordConnect(h, false, 0, settings).health;
  assert.equal(admits(h, 1_000_000, true), false);
  assert.equal(admits(INITIAL_HEALTH, 0, true), true);
});

Deno.test("slow start ramps the weight from a twentieth to all of it, then stays", () => {
  const up = { ...INITIAL_HEALTH, upSince: 1000 };
  const ramp = [1000, 1500, 2000, 3000, 5000, 11000, 99000].map((now) =>
    effectiveWeight(10, up, now, 10000)
  );
  assert.deepEqual(ramp, [0.5, 0.5, 1, 2, 4, 10, 10]);
  assert.equal(effectiveWeight(10, up, 1000, 0), 10); // off
  assert.equal(effectiveWeight(10, INITIAL_HEALTH, 0, 10000), 10); // at start: full weight
});

Deno.test("HealthChecker probes at once, then every interval, and backs off while down", async () => {
  const fake = new FakeClock();
  const results = [true, false, false, false, false, true, true];
  const probed: number[] = [];
  const changes: string[] = [];
  const backend: Checkable & { health: Health } = {
    address: { hostname: "127.0.0.1", port: 1 },
    health: INITIAL_HEALTH,
    recordCheck(ok, reason) {
      const outcome = recordCheck(this.health, ok, fake.now(), settings, reason);
      this.health = outcome.health;
      if (outcome.change) changes.push(`${outcome.change.to}@${fake.now()}`);
    },
  };
  const checker = new HealthChecker({
    backends: [backend],
    probe: () => {
      probed.push(fake.now());
      return Promise.resolve(results.shift() ? undefined : "refused");
    },
    intervalMs: 100,
    clock: fake,
  });
  checker.start();
  for (let i = 0; i < 7; i++) await fake.next();
  // ok@0, fail@100, fail@200, fail@300 → down (backoff 1000); fail@1300 → backoff 2000;
  // ok@3300 (rising: next at the interval), ok@3400 → up.
  assert.deepEqual(probed, [0, 100, 200, 300, 1300, 3300, 3400]);
  assert.deepEqual(changes, ["down@300", "up@3400"]);
  await checker.stop();
  assert.equal(fake.pending, 0);
});

Deno.test("HealthChecker records nothing when a probe finds no descriptor, and looks again", async () => {
  const fake = new FakeClock();
  const recorded: boolean[] = [];
  const backend: Checkable = {
    address: { hostname: "127.0.0.1", port: 1 },
    health: INITIAL_HEALTH,
    recordCheck: (ok) => void recorded.push(ok),
  };
  const outcomes = ["emfile", "emfile", "emfile", "emfile", "ok"];
  const probed: number[] = [];
  const checker = new HealthChecker({
    backends: [backend],
    probe: () => {
      probed.push(fake.now());
      if (outcomes.shift() === "ok") return Promise.resolve(undefined);
      return Promise.reject(
        Object.assign(new Error("Too many open files (os error 24)"), { code: "EMFILE" }),
      );
    },
    intervalMs: 100,
    clock: fake,
  });
  checker.start();
  for (let i = 0; i < 5; i++) await fake.next();
  // Four shortages (more than `fall`) recorded nothing; the fifth probe's verdict is the first.
  assert.deepEqual(probed, [0, 100, 200, 300, 400]);
  assert.deepEqual(recorded, [true]);
  await checker.stop();
});

Deno.test("tcpProbe: healthy when a connect succeeds, not when refused or silent", async () => {
  const server = startServer(() => Promise.resolve());
  const silent = await silentAddress();
  try {
    assert.equal(await tcpProbe(500)(server.address), undefined);
    assert.match((await tcpProbe(500)(refusingAddress()))!, /ECONNREFUSED|refused/i);
    assert.equal(await tcpProbe(100)(silent.address), "no answer in 100 ms");
  } finally {
    await server.close();
    await silent.close();
  }
});

Deno.test("sendExpectProbe: healthy only when the reply starts with the expected bytes", async () => {
  const server = startServer(async (conn) => {
    const buffer = new Uint8Array(16);
    const read = await conn.read(buffer);
    const asked = new TextDecoder().decode(buffer.subarray(0, read ?? 0));
    await writeAll(conn, new TextEncoder().encode(asked === "PING\n" ? "+PONG\r\n" : "-ERR\r\n"));
  });
  try {
    const ping = fromHex("50494e470a"); // "PING\n"
    assert.equal(
      await sendExpectProbe(ping, fromHex("2b504f4e47"), 500)(server.address),
      undefined,
    );
    assert.equal(
      await sendExpectProbe(fromHex("00"), fromHex("2b504f4e47"), 500)(server.address),
      "reply did not start with the expected bytes (got 2d4552520d)",
    );
  } finally {
    await server.close();
  }
});

Deno.test("udpProbe: healthy only when the backend's own reply starts with the expected bytes", async () => {
  const encode = (text: string) => new TextEncoder().encode(text);
  const server = startUdpServer("1", (bytes) => {
    const asked = new TextDecoder().decode(bytes);
    return asked === "ping" ? [encode("pong!")] : asked === "quiet" ? [] : [encode("what?")];
  });
  // Asked on one port, it answers "pong!" from another: not the backend's reply.
  const other = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  const impostor = startUdpServer("2", () => []);
  const answering = (async () => {
    await until(() => impostor.received.length > 0, "the probe asked the impostor");
    await other.send(encode("pong!"), impostor.received[0]!.from);
  })();
  try {
    const [ping, pong] = [encode("ping"), encode("pong")];
    assert.equal(await udpProbe(ping, pong, 1000)(server.address), undefined);
    assert.equal(
      await udpProbe(encode("nonsense"), pong, 1000)(server.address),
      "reply did not start with the expected bytes (got 77686174)",
    );
    // Silence fails at the probe's own timeout: the behaviour under test.
    assert.equal(
      await udpProbe(encode("quiet"), pong, 100)(server.address),
      "no reply within 100 ms",
    );
    // Long enough for the impostor's answer to arrive first and be ignored.
    assert.equal(
      await udpProbe(ping, pong, 1000)(impostor.address),
      "no reply within 1000 ms",
      "nothing from the port asked",
    );
    await answering;
  } finally {
    await server.close();
    await impostor.close();
    other.close();
  }
});
