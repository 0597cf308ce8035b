import assert from "node:assert/strict";
import fc from "fast-check";
import { sourceKey } from "./cidr.ts";
import { type AdmitOutcome, SourceLimits, type SourceLimitSettings } from "./source_limits.ts";
import type { Clock } from "./clock.ts";
import { FakeClock, fuzzParameters } from "./test_util.ts";

function limits(settings: Partial<SourceLimitSettings>, clock = new FakeClock()) {
  return new SourceLimits({ ipv6Prefix: 64, tableSize: 100, ...settings }, { clock });
}

/** Admits `address` `times` times and returns the outcomes. */
function admitMany(table: SourceLimits, address: string, times: number): AdmitOutcome[] {
  return Array.from({ length: times }, () => table.admit(address));
}

Deno.test("SourceLimits.admit() holds each source to maxconn, independently of the others", () => {
  const table = limits({ maxconn: 2 });
  assert.deepEqual(admitMany(table, "10.0.0.1", 3), ["ok", "ok", "per-source-maxconn"]);
  assert.deepEqual(admitMany(table, "10.0.0.2", 3), ["ok", "ok", "per-source-maxconn"]);
  assert.equal(table.activeConnections("10.0.0.1"), 2);
  table.release("10.0.0.1");
  assert.equal(table.activeConnections("10.0.0.1"), 1);
  assert.deepEqual(admitMany(table, "10.0.0.1", 2), ["ok", "per-source-maxconn"]);
  assert.equal(table.activeConnections("10.0.0.2"), 2, "the other source is untouched");
  assert.equal(table.size, 2);
});

Deno.test("SourceLimits: a maxconn refusal takes no token", () => {
  const table = limits({ maxconn: 1, ratePerS: 1, burst: 3 });
  assert.equal(table.admit("10.0.0.1"), "ok"); // 2 tokens left
  assert.deepEqual(admitMany(table, "10.0.0.1", 5), Array(5).fill("per-source-maxconn"));
  table.release("10.0.0.1");
  assert.equal(table.admit("10.0.0.1"), "ok"); // 1 left
  table.release("10.0.0.1");
  assert.equal(table.admit("10.0.0.1"), "ok"); // 0 left
  table.release("10.0.0.1");
  assert.equal(table.admit("10.0.0.1"), "per-source-rate");
  assert.equal(table.activeConnections("10.0.0.1"), 0, "a rate refusal counts nothing");
});

Deno.test("SourceLimits: a burst, then ratePerS, refilled by the clock and never past the burst", async () => {
  const clock = new FakeClock();
  const table = limits({ ratePerS: 2, burst: 4 }, clock);
  assert.deepEqual(admitMany(table, "10.0.0.1", 5), ["ok", "ok", "ok", "ok", "per-source-rate"]);
  assert.equal(table.admit("10.0.0.2"), "ok", "another source has its own bucket");
  await clock.tick(499);
  assert.equal(table.admit("10.0.0.1"), "per-source-rate");
  await clock.tick(1); // 500 ms at 2/s: one token
  assert.deepEqual(admitMany(table, "10.0.0.1", 2), ["ok", "per-source-rate"]);
  await clock.tick(10_000); // 20 tokens' worth, held to the burst
  assert.deepEqual(admitMany(table, "10.0.0.1", 5), ["ok", "ok", "ok", "ok", "per-source-rate"]);
  assert.equal(clock.pending, 0, "no timers: refills are computed when asked");
});

Deno.test("SourceLimits: rate refusals do not push the next token further away", async () => {
  const clock = new FakeClock();
  const table = limits({ ratePerS: 1, burst: 1 }, clock);
  assert.equal(table.admit("10.0.0.1"), "ok");
  for (let ms = 100; ms < 1000; ms += 100) {
    await clock.advanceTo(ms);
    assert.equal(table.admit("10.0.0.1"), "per-source-rate", `at ${ms} ms`);
  }
  await clock.advanceTo(1000);
  assert.equal(table.admit("10.0.0.1"), "ok");
});

Deno.test("SourceLimits: burst defaults to max(1, ratePerS)", async () => {
  const clock = new FakeClock();
  const table = limits({ ratePerS: 3 }, clock);
  assert.deepEqual(admitMany(table, "10.0.0.1", 4), ["ok", "ok", "ok", "per-source-rate"]);
  const slow = limits({ ratePerS: 0.5 }, clock);
  assert.deepEqual(admitMany(slow, "10.0.0.1", 2), ["ok", "per-source-rate"]);
  await clock.tick(1999);
  assert.equal(slow.admit("10.0.0.1"), "per-source-rate");
  await clock.tick(1);
  assert.equal(slow.admit("10.0.0.1"), "ok");
});

Deno.test("SourceLimits counts IPv6 sources per ipv6Prefix network, and mapped IPv4 as IPv4", () => {
  const table = limits({ maxconn: 1, ipv6Prefix: 64 });
  assert.equal(table.admit("2001:db8:1:2::1"), "ok");
  assert.equal(table.admit("2001:db8:1:2:ffff:ffff:ffff:ffff"), "per-source-maxconn");
  assert.equal(table.admit("[2001:DB8:1:2::7]"), "per-source-maxconn");
  assert.equal(table.admit("2001:db8:1:3::1"), "ok", "the next /64 is another source");
  assert.equal(table.admit("10.0.0.1"), "ok");
  assert.equal(table.admit("::ffff:10.0.0.1"), "per-source-maxconn");
  assert.equal(table.admit("10.0.0.2"), "ok", "IPv4 sources are whole addresses");
  assert.equal(table.size, 4);
  table.release("2001:db8:1:2::42"); // any address of the /64 releases its count
  assert.equal(table.activeConnections("2001:db8:1:2::1"), 0);

  const perHost = limits({ maxconn: 1, ipv6Prefix: 128 });
  assert.equal(perHost.admit("2001:db8::1"), "ok");
  assert.equal(perHost.admit("2001:db8::2"), "ok");
  assert.equal(perHost.admit("2001:0db8:0:0:0:0:0:1"), "per-source-maxconn");
});

Deno.test("SourceLimits forgets the least recently seen source when full; a refusal counts as seen", () => {
  const table = limits({ maxconn: 1, tableSize: 3 });
  for (const address of ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) {
    table.admit(address);
    table.release(address);
  }
  table.admit("10.0.0.1");
  table.release("10.0.0.1"); // seen again: now 2 is the oldest
  table.admit("10.0.0.4");
  assert.equal(table.size, 3);
  assert.deepEqual(
    ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"].map((a) => table.tracks(a)),
    [true, false, true, true],
  );
  table.release("10.0.0.4"); // idle again, and newest
  assert.equal(table.admit("10.0.0.3"), "ok");
  assert.equal(table.admit("10.0.0.3"), "per-source-maxconn"); // refused, yet seen
  table.release("10.0.0.3");
  table.admit("10.0.0.5"); // oldest now: 1
  assert.ok(!table.tracks("10.0.0.1"));
  assert.ok(table.tracks("10.0.0.3") && table.tracks("10.0.0.4") && table.tracks("10.0.0.5"));
});

Deno.test("SourceLimits forgets idle sources before ones with open connections", () => {
  const table = limits({ maxconn: 5, tableSize: 3 });
  table.admit("10.0.0.1"); // oldest, but holds a connection
  table.admit("10.0.0.2");
  table.release("10.0.0.2"); // idle
  table.admit("10.0.0.3"); // holds a connection
  table.admit("10.0.0.4");
  assert.ok(table.tracks("10.0.0.1"), "kept: it has a connection open");
  assert.ok(!table.tracks("10.0.0.2"), "the idle one went first, though it is newer");
  assert.equal(table.size, 3);
});

Deno.test("SourceLimits: when every source holds connections, the least recently seen goes and its count restarts", () => {
  const table = limits({ maxconn: 2, tableSize: 2 });
  assert.deepEqual(admitMany(table, "10.0.0.1", 2), ["ok", "ok"]);
  table.admit("10.0.0.2");
  table.admit("10.0.0.3"); // table full of busy sources: 1 is forgotten
  assert.ok(!table.tracks("10.0.0.1"));
  assert.equal(table.activeConnections("10.0.0.1"), 0);
  // Releases of a forgotten source bring nothing back and count nothing.
  table.release("10.0.0.1");
  assert.ok(!table.tracks("10.0.0.1"));
  assert.equal(table.size, 2);
  // The cost: 1 may open maxconn more while its old two are still open...
  assert.deepEqual(admitMany(table, "10.0.0.1", 3), ["ok", "ok", "per-source-maxconn"]);
  // ...and the old connections' releases land on the new entry, never below zero.
  for (let i = 0; i < 4; i++) table.release("10.0.0.1");
  assert.equal(table.activeConnections("10.0.0.1"), 0);
  assert.deepEqual(admitMany(table, "10.0.0.1", 3), ["ok", "ok", "per-source-maxconn"]);
});

Deno.test("SourceLimits.release() of an unknown source is ignored and adds no entry", () => {
  const table = limits({ maxconn: 1 });
  table.release("10.0.0.9");
  table.release("not an address");
  assert.equal(table.size, 0);
  assert.equal(table.admit("10.0.0.9"), "ok");
});

Deno.test("SourceLimits.reconfigure() keeps counts and applies the new limits", () => {
  const table = limits({ maxconn: 3 });
  admitMany(table, "10.0.0.1", 2);
  table.reconfigure({ maxconn: 1, ipv6Prefix: 64, tableSize: 100 });
  assert.equal(table.activeConnections("10.0.0.1"), 2);
  assert.equal(table.admit("10.0.0.1"), "per-source-maxconn");
  table.release("10.0.0.1");
  assert.equal(table.admit("10.0.0.1"), "per-source-maxconn");
  table.release("10.0.0.1");
  assert.equal(table.admit("10.0.0.1"), "ok");
  table.reconfigure({ ipv6Prefix: 64, tableSize: 100 }); // no limits at all
  assert.deepEqual(admitMany(table, "10.0.0.1", 3), ["ok", "ok", "ok"]);
  assert.equal(table.activeConnections("10.0.0.1"), 4);
});

Deno.test("SourceLimits.reconfigure() carries buckets over: refilled at the old rate, held to the new burst", async () => {
  const clock = new FakeClock();
  const table = limits({ ratePerS: 1, burst: 10 }, clock);
  admitMany(table, "10.0.0.1", 9); // 1 token left
  assert.equal(table.admit("10.0.0.2"), "ok"); // 9 left
  await clock.tick(2000); // 1 → 3 and 9 → 10 (capped) at the old rate
  table.reconfigure({ ratePerS: 100, burst: 5, ipv6Prefix: 64, tableSize: 100 });
  assert.deepEqual(admitMany(table, "10.0.0.1", 4), ["ok", "ok", "ok", "per-source-rate"]);
  assert.deepEqual(admitMany(table, "10.0.0.2", 6), [...Array(5).fill("ok"), "per-source-rate"]);
  await clock.tick(10); // at the new rate: one token per 10 ms
  assert.deepEqual(admitMany(table, "10.0.0.2", 2), ["ok", "per-source-rate"]);

  // A bucket that did not exist before the rate did starts full.
  const unlimited = limits({}, clock);
  admitMany(unlimited, "10.0.0.1", 50);
  unlimited.reconfigure({ ratePerS: 2, ipv6Prefix: 64, tableSize: 100 });
  assert.deepEqual(admitMany(unlimited, "10.0.0.1", 3), ["ok", "ok", "per-source-rate"]);
});

Deno.test("SourceLimits.reconfigure() with a smaller table forgets by the usual rule", () => {
  const table = limits({ maxconn: 9, tableSize: 4 });
  table.admit("10.0.0.1"); // busy, oldest
  for (const address of ["10.0.0.2", "10.0.0.3"]) {
    table.admit(address);
    table.release(address);
  }
  table.admit("10.0.0.4"); // busy
  table.reconfigure({ maxconn: 9, ipv6Prefix: 64, tableSize: 2 });
  assert.equal(table.size, 2);
  assert.ok(table.tracks("10.0.0.1") && table.tracks("10.0.0.4"));
  table.reconfigure({ maxconn: 9, ipv6Prefix: 64, tableSize: 1 });
  assert.ok(!table.tracks("10.0.0.1") && table.tracks("10.0.0.4"));
});

Deno.test("SourceLimits.reconfigure() merges IPv6 counts into wider networks; narrower ones start afresh", () => {
  const table = limits({ maxconn: 2, ipv6Prefix: 64 });
  table.admit("2001:db8:0:1::1");
  table.admit("2001:db8:0:2::1");
  table.admit("10.0.0.1");
  table.reconfigure({ maxconn: 2, ipv6Prefix: 48, tableSize: 100 });
  assert.equal(table.size, 2);
  assert.equal(table.activeConnections("2001:db8:0:ffff::1"), 2);
  assert.equal(table.admit("2001:db8:0:3::1"), "per-source-maxconn");
  table.release("2001:db8:0:1::1");
  assert.equal(table.admit("2001:db8:0:3::1"), "ok");

  table.reconfigure({ maxconn: 2, ipv6Prefix: 64, tableSize: 100 });
  assert.ok(!table.tracks("2001:db8:0:1::1"), "a /48's count cannot be split into /64s");
  assert.equal(table.activeConnections("10.0.0.1"), 1, "IPv4 counts stay");
  assert.equal(table.size, 1);
});

Deno.test("SourceLimits names a bad setting and its value; reconfigure() then keeps the old ones", () => {
  const base = { ipv6Prefix: 64, tableSize: 100 };
  const cases: [Partial<SourceLimitSettings>, string][] = [
    [{ maxconn: 0 }, "'maxconn' must be an integer of at least 1: got 0"],
    [{ maxconn: 1.5 }, "'maxconn' must be an integer of at least 1: got 1.5"],
    [{ ratePerS: 0 }, "'ratePerS' must be a number above 0: got 0"],
    [{ ratePerS: Infinity }, "'ratePerS' must be a number above 0: got Infinity"],
    [{ ratePerS: 1, burst: 0.5 }, "'burst' must be a number of at least 1: got 0.5"],
    [{ burst: 5 }, "'burst' needs 'ratePerS' (a bucket needs a refill rate): got burst 5 alone"],
    [{ ipv6Prefix: 129 }, "'ipv6Prefix' must be an integer 0-128: got 129"],
    [{ ipv6Prefix: -1 }, "'ipv6Prefix' must be an integer 0-128: got -1"],
    [{ tableSize: 0 }, "'tableSize' must be an integer of at least 1: got 0"],
    [{ tableSize: NaN }, "'tableSize' must be an integer of at least 1: got NaN"],
  ];
  for (const [settings, message] of cases) {
    assert.throws(() => limits({ ...base, ...settings }), new RangeError(message));
  }
  const table = limits({ maxconn: 1 });
  table.admit("10.0.0.1");
  assert.throws(() => table.reconfigure({ ...base, maxconn: 0 }), RangeError);
  assert.equal(table.admit("10.0.0.1"), "per-source-maxconn");
});

// --- Against a model -----------------------------------------------------------

/**
 * The rules as first written: a list of sources with explicit seen times,
 * scanned in full on every call. Slow, and obviously right.
 */
class ModelLimits {
  readonly #sources: { key: string; active: number; tokens: number; at: number; seen: number }[] =
    [];
  #tick = 0;

  constructor(
    readonly settings: Required<Omit<SourceLimitSettings, "maxconn" | "ratePerS">> & {
      maxconn: number;
      ratePerS: number;
    },
    readonly clock: Clock,
  ) {}

  admit(address: string): AdmitOutcome {
    const key = sourceKey(address, this.settings.ipv6Prefix);
    const now = this.clock.now();
    let source = this.#sources.find((s) => s.key === key);
    if (source === undefined) {
      if (this.#sources.length === this.settings.tableSize) this.#forgetOne();
      source = { key, active: 0, tokens: this.settings.burst, at: now, seen: 0 };
      this.#sources.push(source);
    }
    source.seen = this.#tick++;
    const tokens = Math.min(
      this.settings.burst,
      source.tokens + (now - source.at) * this.settings.ratePerS / 1000,
    );
    if (source.active >= this.settings.maxconn) return "per-source-maxconn";
    if (tokens < 1) return "per-source-rate";
    source.tokens = tokens - 1;
    source.at = now;
    source.active++;
    return "ok";
  }

  release(address: string): void {
    const key = sourceKey(address, this.settings.ipv6Prefix);
    const source = this.#sources.find((s) => s.key === key);
    if (source === undefined) return;
    source.seen = this.#tick++;
    source.active = Math.max(0, source.active - 1);
  }

  active(address: string): number {
    const key = sourceKey(address, this.settings.ipv6Prefix);
    return this.#sources.find((s) => s.key === key)?.active ?? 0;
  }

  get size(): number {
    return this.#sources.length;
  }

  #forgetOne(): void {
    const idle = this.#sources.filter((s) => s.active === 0);
    const candidates = idle.length > 0 ? idle : this.#sources;
    const oldest = candidates.reduce((a, b) => (b.seen < a.seen ? b : a));
    this.#sources.splice(this.#sources.indexOf(oldest), 1);
  }
}

/** A clock moved by hand, synchronously, that refuses timers: SourceLimits must set none. */
function handClock(): Clock & { time: number } {
  return {
    time: 0,
    now() {
      return this.time;
    },
    setTimer() {
      throw new Error("SourceLimits set a timer");
    },
    clearTimer() {},
  };
}

Deno.test("property: SourceLimits decides and forgets exactly as a full-scan model does", () => {
  const addresses = [
    "10.0.0.1",
    "10.0.0.2",
    "::ffff:10.0.0.3",
    "10.0.0.3",
    "2001:db8:0:1::1",
    "2001:db8:0:1::2",
    "2001:db8:0:2::1",
    "2001:db8:1::1",
  ];
  const step = fc.oneof(
    fc.record({ op: fc.constant("admit" as const), address: fc.constantFrom(...addresses) }),
    fc.record({ op: fc.constant("release" as const), address: fc.constantFrom(...addresses) }),
    fc.record({ op: fc.constant("tick" as const), ms: fc.integer({ min: 0, max: 1500 }) }),
  );
  const settings = fc.record({
    maxconn: fc.integer({ min: 1, max: 4 }),
    ratePerS: fc.integer({ min: 1, max: 5 }),
    burst: fc.integer({ min: 1, max: 6 }),
    ipv6Prefix: fc.constantFrom(48, 64, 128),
    tableSize: fc.integer({ min: 1, max: 5 }),
  });
  fc.assert(
    fc.property(settings, fc.array(step, { maxLength: 80 }), (chosen, steps) => {
      const clock = handClock();
      const table = new SourceLimits(chosen, { clock });
      const model = new ModelLimits(chosen, clock);
      for (const [i, s] of steps.entries()) {
        if (s.op === "tick") {
          clock.time += s.ms;
        } else if (s.op === "admit") {
          assert.equal(table.admit(s.address), model.admit(s.address), `step ${i}: admit`);
        } else {
          table.release(s.address);
          model.release(s.address);
        }
        assert.equal(table.size, model.size, `step ${i}: size`);
        for (const address of addresses) {
          assert.equal(table.activeConnections(address), model.active(address), `step ${i}`);
        }
      }
    }),
    fuzzParameters("SourceLimits vs model"),
  );
});
