import assert from "node:assert/strict";
import {
  checkBurstsBit,
  checkBytesExact,
  checkDescriptorsFlat,
  checkDrained,
  checkEveryKindServed,
  checkFinalRound,
  checkMemoryFlat,
  checkNoneLost,
  checkNoneRefused,
  checkReloads,
  logTime,
  median,
  misrouted,
} from "./checks.ts";
import type { ClientRecord, JoinedRecord } from "./join.ts";
import type { Sample } from "./report.ts";

let nextSeed = 100;

function record(fields: Partial<ClientRecord> = {}): ClientRecord {
  return {
    outcome: "ok",
    seed: nextSeed++,
    up: 1000,
    backendFirst: false,
    backend: "b1",
    acceptedAt: 10_010,
    startedAt: 10_000,
    endedAt: 11_000,
    kind: "short",
    phase: "load",
    ...fields,
  };
}

function joined(fields: Partial<JoinedRecord> = {}): JoinedRecord {
  const base = record(fields);
  return { finding: base.outcome, ...base, ...fields };
}

Deno.test("checkBytesExact() and checkNoneLost() fail on one bad record, or a stray backend line", () => {
  const good = [joined(), joined()];
  assert.equal(checkBytesExact(good, []).ok, true);
  assert.equal(checkBytesExact([...good, joined({ finding: "corrupt", why: "x" })], []).ok, false);
  assert.equal(checkBytesExact(good, ['backend b1 printed "?"']).ok, false);
  assert.equal(checkBytesExact([joined({ finding: "closed" })], []).ok, false, "nothing ok");
  assert.equal(checkNoneLost(good).ok, true);
  const lost = checkNoneLost([...good, joined({ finding: "lost", why: "closed on a stream" })]);
  assert.equal(lost.ok, false);
  assert.match(lost.examples![0]!, /lost: closed on a stream/);
});

Deno.test("checkNoneRefused() allows a refused connect only from a burst's start to the grace after it", () => {
  const bursts = [{ from: 20_000, to: 22_000 }];
  const refusedAt = (startedAt: number) => [joined({ outcome: "refused", startedAt })];
  assert.equal(checkNoneRefused(refusedAt(20_000), bursts, 5_000).ok, true);
  assert.equal(checkNoneRefused(refusedAt(26_999), bursts, 5_000).ok, true);
  assert.equal(checkNoneRefused(refusedAt(27_001), bursts, 5_000).ok, false);
  assert.equal(checkNoneRefused(refusedAt(19_999), bursts, 5_000).ok, false);
  assert.equal(checkNoneRefused(refusedAt(1_000), [], 5_000).ok, false);
});

Deno.test("checkEveryKindServed() and checkFinalRound() want an ok of each kind, and every final one ok", () => {
  const load = [
    joined({ kind: "short" }),
    joined({ kind: "idle", finding: "closed" }),
    joined({ kind: "reset", finding: "reset-sent" }),
  ];
  const short = { kind: "short" };
  const reset = { kind: "reset", served: "reset-sent" as const };
  assert.equal(checkEveryKindServed(load, [short, reset]).ok, true);
  const idle = checkEveryKindServed(load, [short, { kind: "idle" }]);
  assert.equal(idle.ok, false);
  assert.match(idle.detail, /none served: idle \(ok\)/);
  // A kind that resets on purpose is served by its reset, not by an ok.
  assert.equal(checkEveryKindServed([joined({ kind: "reset" })], [reset]).ok, false);
  // The final round's clients do not stand in for the load's.
  const finalIdle = [joined({ kind: "idle", phase: "final" })];
  assert.equal(checkEveryKindServed(finalIdle, [{ kind: "idle" }]).ok, false);

  const final = (finding: JoinedRecord["finding"]) => joined({ phase: "final", finding });
  assert.equal(checkFinalRound([final("ok"), final("ok")], 2).ok, true);
  assert.equal(checkFinalRound([final("ok"), final("closed")], 2).ok, false);
  assert.equal(checkFinalRound([final("ok")], 2).ok, false, "one missing");
  assert.equal(checkFinalRound([], 0).ok, false, "no final round ran");
});

Deno.test("misrouted(): both the connect and the accept inside one window, with 1 ms of slack", () => {
  const windows = [{ from: 1_000, to: 2_000 }, { from: 5_000, to: Infinity }];
  const cases: [number, number | undefined, boolean][] = [
    [1_500, 1_600, true],
    // Started before the window opened: the pick may have come first.
    [900, 1_600, false],
    [1_000.5, 1_600, false],
    // Accepted after it closed: the pick may have come after.
    [1_500, 2_100, false],
    [1_500, 1_999.5, false],
    // Never answered: no pick to blame.
    [1_500, undefined, false],
    // A window still open at the end.
    [6_000, 99_999, true],
    [3_000, 3_100, false],
  ];
  for (const [startedAt, acceptedAt, expected] of cases) {
    assert.equal(
      misrouted(record({ startedAt, acceptedAt }), windows),
      expected,
      `${startedAt}–${acceptedAt}`,
    );
  }
});

function samples(fds: (t: number) => number, seconds = 60): Sample[] {
  return Array.from({ length: seconds * 2 }, (_, i) => {
    const t = i / 2;
    return { t, fds: fds(t), rssKiB: 100_000, rate: 0 };
  });
}

Deno.test("checkDescriptorsFlat(): medians of the third and last quarter, within max(4, 5%), bursts left out", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
  // Noisy under load (±30 from one sample to the next), but flat: ok.
  const noisy = (t: number) => 100 + ((t * 7) % 60) - 30;
  assert.equal(checkDescriptorsFlat(samples(noisy), 60, []).ok, true);
  // A leak of one descriptor a second: 15 more over a quarter.
  const leak = checkDescriptorsFlat(samples((t) => 100 + t), 60, []);
  assert.equal(leak.ok, false);
  assert.match(leak.detail, /bound: at most max\(4, 5%\) = 7 more/);
  // A short burst moves no median; one over most of the last quarter would,
  // and is left out.
  const short = (t: number) => (t >= 50 && t < 54 ? 900 : 100);
  assert.equal(checkDescriptorsFlat(samples(short), 60, []).ok, true);
  const long = (t: number) => (t >= 46 && t < 56 ? 900 : 100);
  assert.equal(checkDescriptorsFlat(samples(long), 60, []).ok, false);
  assert.equal(checkDescriptorsFlat(samples(long), 60, [{ from: 46, to: 56 }]).ok, true);
  // Too few samples to judge.
  assert.equal(checkDescriptorsFlat(samples(() => 100, 10), 60, []).ok, false);
});

function rss(kib: (t: number) => number, seconds = 600): Sample[] {
  return Array.from({ length: seconds / 4 }, (_, i) => {
    const t = i * 4;
    return { t, fds: 100, rssKiB: kib(t), rate: 0 };
  });
}

Deno.test("checkMemoryFlat(): the last quarter's highest RSS within the bound of the second quarter's", () => {
  const MIB = 1024;
  // A sawtooth whose teeth fall anywhere but whose peaks stay put: ok, even
  // when the second half starts in a trough (a fitted line would climb).
  const saw = (t: number) => (t < 300 ? 150 : 100 + ((t - 300) % 150) / 3) * MIB;
  assert.equal(checkMemoryFlat(rss(saw), 600, 0.01, false).ok, true);
  // A leak of 2 MiB a minute on 100 MiB: 9% over five minutes, past 1% a minute.
  const leak = checkMemoryFlat(rss((t) => (100 + t / 30) * MIB), 600, 0.01, false);
  assert.equal(leak.ok, false);
  assert.match(
    leak.detail,
    /highest RSS 110 MiB over 150–300 s, 120 MiB over 450–600 s \(\+9\.\d%\)/,
  );
  assert.match(leak.detail, /bound: 1\.0% a minute, 5\.0% over the half a run between/);
  // The same leak over a one-minute run is within a short run's bound.
  assert.equal(checkMemoryFlat(rss((t) => (100 + t / 30) * MIB, 60), 60, 1, true).ok, true);
  // A burst of held clients late in the run is not a leak, once left out.
  const burst = (t: number) => (t >= 500 && t < 520 ? 180 : 100) * MIB;
  assert.equal(checkMemoryFlat(rss(burst), 600, 0.01, false).ok, false);
  assert.equal(checkMemoryFlat(rss(burst), 600, 0.01, false, [{ from: 500, to: 520 }]).ok, true);
  // Too few samples to judge, or no memory read.
  assert.equal(checkMemoryFlat(rss(() => 100 * MIB, 8), 8, 0.01, false).ok, false);
  assert.equal(checkMemoryFlat(rss(() => 0), 600, 0.01, false).ok, false);
});

const at = (ms: number) => new Date(ms).toISOString();

Deno.test("checkBurstsBit(): EMFILE during the burst, then accepting again, then clients served", () => {
  const burst = {
    from: Date.parse("2026-11-27T20:00:00Z"),
    to: Date.parse("2026-11-27T20:00:02Z"),
  };
  const failed = `${at(burst.from + 300)} load_balancer: accept failed: EMFILE: Too many open ` +
    `files (os error 24); backing off from 10 ms (said once until accepting works again)`;
  const recovered = `${
    at(burst.from + 2_100)
  } load_balancer: accepting again after 9 failed accept(s)`;
  const served = [joined({ startedAt: burst.from + 3_000 })];
  assert.equal(logTime(recovered), burst.from + 2_100);
  assert.equal(logTime("no time here"), undefined);

  const bit = checkBurstsBit([failed, recovered], [burst], served, 5_000);
  assert.equal(bit.ok, true, bit.detail);
  assert.match(
    bit.detail,
    /EMFILE 0\.3 s in \(1×\), accepting again 2\.1 s in, 1 clients ok after/,
  );
  // Accepting again in between, then out again: it is the last recovery that counts.
  const again = failed.replace(at(burst.from + 300), at(burst.from + 2_050));
  const early = recovered.replace(at(burst.from + 2_100), at(burst.from + 400));
  const twice = checkBurstsBit([failed, early, again, recovered], [burst], served, 5_000);
  assert.match(twice.detail, /EMFILE 0\.3 s in \(2×\), accepting again 2\.1 s in/);
  assert.equal(checkBurstsBit([failed, early, again], [burst], served, 5_000).ok, false);
  // A burst that did not bite: nothing logged.
  assert.equal(checkBurstsBit([], [burst], served, 5_000).ok, false);
  // An EMFILE from another time does not count.
  const earlier = failed.replace(at(burst.from + 300), at(burst.from - 60_000));
  assert.equal(checkBurstsBit([earlier, recovered], [burst], served, 5_000).ok, false);
  // It never recovered, or nobody was served after.
  assert.equal(checkBurstsBit([failed], [burst], served, 5_000).ok, false);
  const before = [joined({ startedAt: burst.from + 1_000 })];
  assert.equal(checkBurstsBit([failed, recovered], [burst], before, 5_000).ok, false);
  assert.equal(checkBurstsBit([failed, recovered], [], served, 5_000).ok, false, "no burst ran");
});

Deno.test("checkDrained(): every held connection ok, the balancer drained them, cut none, exited 0", () => {
  const held = (finding: JoinedRecord["finding"] = "ok") => joined({ phase: "drain", finding });
  const log = [
    "2026-11-27T20:00:00.000Z load_balancer: SIGTERM: no longer accepting; draining 2 connection(s), up to 10000 ms",
    "2026-11-27T20:00:01.000Z load_balancer: stopped; 0 connection(s) cut at the drain timeout",
  ];
  assert.equal(checkDrained([held(), held()], 2, log, { code: 0 }).ok, true);
  assert.equal(checkDrained([held(), held("reset")], 2, log, { code: 0 }).ok, false);
  assert.equal(checkDrained([held()], 2, log, { code: 0 }).ok, false);
  assert.equal(checkDrained([held(), held()], 2, log, { code: 1 }).ok, false);
  assert.equal(checkDrained([held(), held()], 2, log, undefined).ok, false);
  const cut = [log[0]!, log[1]!.replace("0 connection", "2 connection")];
  assert.equal(checkDrained([held(), held()], 2, cut, { code: 0 }).ok, false);
  const drainedNone = [log[0]!.replace("draining 2", "draining 0"), log[1]!];
  assert.equal(checkDrained([held(), held()], 2, drainedNone, { code: 0 }).ok, false);
});

Deno.test("checkReloads(): a reload refused for want of descriptors is allowed, any other is not", () => {
  const applied = "t load_balancer: reloaded (SIGHUP): 1 listener";
  const emfile = "t load_balancer: reload (SIGHUP) failed: Too many open files (os error 24)";
  const other = "t load_balancer: reload (SIGHUP) failed: pools.web: expected an object";
  assert.equal(checkReloads([applied, emfile]).ok, true);
  assert.equal(checkReloads([applied, other]).ok, false);
  assert.equal(checkReloads([]).ok, false);
});
