import assert from "node:assert/strict";
import { type Discovered, PoolDiscovery, type SourceReport } from "./discovery.ts";
import { DnsSource, type Resolve } from "./discovery_dns.ts";
import { validateConfig } from "./config.ts";
import { Membership } from "./membership.ts";
import { buildPools } from "./plan.ts";
import { Backend, Pool } from "./pool.ts";
import { parseHostPort } from "./address.ts";
import { FakeClock, until } from "./test_util.ts";

const one = (address: string, weight = 1, backup = false): Discovered => ({
  address,
  weight,
  backup,
});

function keeper() {
  const changes: (readonly Discovered[])[] = [];
  const logged: string[] = [];
  const discovery = new PoolDiscovery({
    pool: "web",
    source: { kind: "dns", describe: "dns web.test A", start() {}, stop: async () => {} },
    onChange: (set) => changes.push(set),
    log: (line) => logged.push(line),
  });
  return { discovery, changes, logged };
}

Deno.test("PoolDiscovery: a failing source keeps the last good set; errors counted each time, said once per change", () => {
  const { discovery, changes, logged } = keeper();
  discovery.report({ error: "the name server did not answer" });
  assert.equal(discovery.backends, undefined);
  assert.match(
    logged[0]!,
    /pool web \(dns web\.test A\): the name server did not answer; no backends learned yet/,
  );
  discovery.report({ backends: [one("127.0.0.2:80"), one("127.0.0.1:80")] });
  assert.deepEqual(changes, [[one("127.0.0.1:80"), one("127.0.0.2:80")]], "sorted by address");
  assert.match(logged[1]!, /answering again/);
  for (let i = 0; i < 3; i++) {
    discovery.report({ error: "no such name, or no records of that type" });
  }
  assert.equal(discovery.errors, 4);
  assert.equal(logged.length, 3, "the same problem is said once");
  assert.match(logged[2]!, /keeping the last good set of 2 backend\(s\)/);
  assert.deepEqual(discovery.backends, changes[0]);
  assert.equal(discovery.failing, "no such name, or no records of that type");
  discovery.report({ error: "the name server did not answer" });
  assert.equal(logged.length, 4, "a different problem is said");
  assert.equal(changes.length, 1, "no error ever changes the set");
});

Deno.test("PoolDiscovery: the same set in another order is no change; a set with a problem is taken and counted", () => {
  const { discovery, changes } = keeper();
  discovery.report({ backends: [one("127.0.0.1:80"), one("127.0.0.2:80")] });
  discovery.report({ backends: [one("127.0.0.2:80"), one("127.0.0.1:80")] });
  assert.equal(changes.length, 1);
  discovery.report({ backends: [one("127.0.0.1:80", 3)], error: "key /x: not JSON" });
  assert.deepEqual(changes[1], [one("127.0.0.1:80", 3)]);
  assert.equal(discovery.errors, 1);
  assert.equal(discovery.failing, "key /x: not JSON");
});

Deno.test("PoolDiscovery.reject() puts the set before back, and the same answer is tried again", () => {
  const { discovery, changes, logged } = keeper();
  const good = [one("127.0.0.1:80")];
  const bad = [one("127.0.0.1:80"), one("127.0.0.1:9")];
  discovery.report({ backends: good });
  discovery.report({ backends: bad });
  discovery.reject(good, "could not apply it: loops back");
  assert.deepEqual(discovery.backends, good);
  assert.equal(discovery.errors, 1);
  assert.match(logged.at(-1)!, /could not apply it: loops back; keeping the last good set of 1/);
  discovery.report({ backends: bad });
  assert.equal(changes.length, 3, "offered again");
});

// A resolver that answers from a table, and counts the questions.
function table(answers: Record<string, unknown[] | Error>) {
  const asked: string[] = [];
  const resolve = ((name: string, type: string) => {
    asked.push(`${name} ${type}`);
    const answer = answers[`${name} ${type}`] ?? new Deno.errors.NotFound("no records");
    return answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer);
  }) as Resolve;
  return { resolve, asked };
}

Deno.test("DnsSource SRV: targets resolved to addresses, lowest priority first, others backups, weights scaled to 1-256", async () => {
  const { resolve } = table({
    "_echo._tcp.service.test SRV": [
      { priority: 10, weight: 0, port: 5001, target: "a.service.test." },
      { priority: 10, weight: 900, port: 5002, target: "b.service.test." },
      { priority: 20, weight: 5, port: 5003, target: "c.service.test." },
      { priority: 10, weight: 5, port: 5004, target: "gone.service.test." },
    ],
    "a.service.test A": ["127.0.0.11"],
    "b.service.test A": ["127.0.0.12"],
    "b.service.test AAAA": ["::1"],
    "c.service.test AAAA": ["::1"],
  });
  const source = new DnsSource(
    { name: "_echo._tcp.service.test", type: "SRV", intervalMs: 1000 },
    { clock: new FakeClock(), resolve },
  );
  const report = await source.resolveOnce();
  assert.deepEqual(report.backends, [
    one("127.0.0.11:5001", 1),
    one("127.0.0.12:5002", 256),
    one("[::1]:5002", 256),
    one("[::1]:5003", 1, true), // 5 of 900, scaled with the rest
  ]);
  assert.match(report.error!, /gone\.service\.test: no such name/);
});

Deno.test("DnsSource A and AAAA take the port from the config; no records is an error, not an empty set", async () => {
  const { resolve } = table({ "web.test A": ["127.0.0.1", "127.0.0.2"], "web.test AAAA": ["::1"] });
  const clock = new FakeClock();
  const a = new DnsSource({ name: "web.test", type: "A", port: 80, intervalMs: 1 }, {
    clock,
    resolve,
  });
  assert.deepEqual((await a.resolveOnce()).backends, [one("127.0.0.1:80"), one("127.0.0.2:80")]);
  const aaaa = new DnsSource({ name: "web.test", type: "AAAA", port: 80, intervalMs: 1 }, {
    clock,
    resolve,
  });
  assert.deepEqual((await aaaa.resolveOnce()).backends, [one("[::1]:80")]);
  const none = new DnsSource({ name: "none.test", type: "A", port: 80, intervalMs: 1 }, {
    clock,
    resolve,
  });
  assert.deepEqual(await none.resolveOnce(), { error: "no such name, or no records of that type" });
});

Deno.test("DnsSource asks again every interval on its clock, and stop() ends it", async () => {
  const { resolve, asked } = table({ "web.test A": ["127.0.0.1"] });
  const clock = new FakeClock();
  const reports: SourceReport[] = [];
  const source = new DnsSource({ name: "web.test", type: "A", port: 80, intervalMs: 5000 }, {
    clock,
    resolve,
  });
  source.start((report) => reports.push(report));
  await until(() => reports.length === 1, "the first answer");
  await clock.tick(4999);
  assert.equal(asked.length, 1, "not before the interval");
  await clock.tick(1);
  await until(() => reports.length === 2, "the second answer");
  await source.stop();
  await clock.tick(10_000);
  assert.equal(reports.length, 2);
});

const file = validateConfig({
  listeners: [{ name: "main", listen: "127.0.0.1:0", pool: "web" }],
  pools: {
    web: {
      backends: [{ address: "127.0.0.1:5001" }],
      discover: { dns: "web.test", port: 5002 },
    },
  },
});

Deno.test("Membership.overlay(): the file's backends, then discovered ones, then the admin API's; each with its source", () => {
  const members = new Membership();
  members.discover("web", "dns", [one("127.0.0.1:5001", 9), one("127.0.0.2:5002", 2)]);
  assert.equal(
    members.change(file, file, "web", { add: { address: "127.0.0.3:5003", weight: 4 } }),
    undefined,
  );
  const overlay = members.overlay(file);
  assert.deepEqual(
    overlay.config.pools.web!.backends.map((b) => [b.address, b.weight]),
    [["127.0.0.1:5001", 1], ["127.0.0.2:5002", 2], ["127.0.0.3:5003", 4]],
    "the file wins over discovery for the same address",
  );
  assert.deepEqual(Object.fromEntries(overlay.sources.get("web")!), {
    "127.0.0.1:5001": "config",
    "127.0.0.2:5002": "dns",
    "127.0.0.3:5003": "admin",
  });
  assert.match(members.change(file, file, "nope", { remove: "x" })!, /no pool "nope"/);
  assert.match(members.change(file, file, "web", { remove: "127.0.0.9:1" })!, /has no backend/);
});

Deno.test("Membership: a discovered set is dropped with the pool's discover block", () => {
  const members = new Membership();
  members.discover("web", "dns", [one("127.0.0.2:5002")]);
  const without = validateConfig({
    listeners: [{ name: "main", listen: "127.0.0.1:0", pool: "web" }],
    pools: { web: { backends: [{ address: "127.0.0.1:5001" }] } },
  });
  assert.deepEqual(members.overlay(without).config.pools.web!.backends.map((b) => b.address), [
    "127.0.0.1:5001",
  ]);
});

Deno.test("Membership.save() and restore(): changes and admin states outlast a restart, a backend's state waits for it", () => {
  const members = new Membership();
  members.change(file, file, "web", { add: { address: "127.0.0.3:5003" } });
  const backend = new Backend(parseHostPort("127.0.0.1:5001"));
  backend.adminState = "draining";
  backend.adminWeight = 7;
  const pools = new Map([["web", new Pool({ name: "web", backends: [backend] })]]);
  const saved = members.save(pools);
  assert.deepEqual(saved, {
    version: 1,
    pools: {
      web: {
        added: [{ address: "127.0.0.3:5003" }],
        admin: { "127.0.0.1:5001": { state: "draining", weight: 7 } },
      },
    },
  });
  const next = new Membership();
  next.restore(saved);
  const overlay = next.overlay(file);
  assert.deepEqual(overlay.config.pools.web!.backends.map((b) => b.address), [
    "127.0.0.1:5001",
    "127.0.0.3:5003",
  ]);
  const fresh = new Backend(parseHostPort("127.0.0.1:5001"));
  next.settle(new Map([["web", new Pool({ name: "web", backends: [fresh] })]]), overlay);
  assert.equal(fresh.adminState, "draining");
  assert.equal(fresh.configuredWeight, 7);
});

Deno.test("a backend that joins a running pool starts its slow start then; one that stays keeps its weight", async () => {
  const clock = new FakeClock();
  const config = (backends: string[]) =>
    validateConfig({
      listeners: [{ name: "main", listen: "127.0.0.1:0", pool: "web" }],
      pools: {
        web: {
          backends: backends.map((address) => ({ address, weight: 100 })),
          health: { slow_start_ms: 10_000 },
        },
      },
    });
  const first = buildPools(config(["127.0.0.1:5001"]), { clock });
  assert.equal(first.get("web")!.backends[0]!.weight, 100, "at start: no ramp");
  await clock.tick(1000);
  const next = buildPools(config(["127.0.0.1:5001", "127.0.0.1:5002"]), { clock, previous: first });
  const [kept, added] = next.get("web")!.backends;
  assert.equal(kept!.weight, 100);
  assert.equal(added!.weight, 5, "a twentieth at first");
  await clock.tick(5000);
  assert.equal(added!.weight, 50);
});

Deno.test("Membership.overlay() leaves out a discovered backend the file would refuse, and applies the rest", () => {
  const members = new Membership();
  const listening = validateConfig({
    listeners: [{ name: "main", listen: "127.0.0.1:5000", pool: "web" }],
    pools: { web: { discover: { dns: "web.test", port: 5000 } } },
  });
  members.discover("web", "dns", [
    one("127.0.0.1:5000"),
    one("0.0.0.0:5000"),
    one("127.0.0.2:5000"),
  ]);
  const overlay = members.overlay(listening);
  assert.deepEqual(overlay.config.pools.web!.backends.map((b) => b.address), ["127.0.0.2:5000"]);
  assert.match(overlay.leftOut.get("web")!, /^127\.0\.0\.1:5000: listener main's own address/);
});

Deno.test("Membership: removing a discovered backend holds until it is added back with its address alone", () => {
  const members = new Membership();
  members.discover("web", "dns", [one("127.0.0.2:5002", 3)]);
  let running = members.overlay(file).config;
  assert.equal(members.change(running, file, "web", { remove: "127.0.0.2:5002" }), undefined);
  running = members.overlay(file).config;
  assert.deepEqual(running.pools.web!.backends.map((b) => b.address), ["127.0.0.1:5001"]);
  // Discovery offering it again does not bring it back…
  members.discover("web", "dns", [one("127.0.0.2:5002", 4)]);
  assert.equal(members.overlay(file).config.pools.web!.backends.length, 1);
  // …an add of the address alone hands it back to discovery, with discovery's weight.
  assert.equal(
    members.change(running, file, "web", { add: { address: "127.0.0.2:5002" } }),
    undefined,
  );
  const back = members.overlay(file);
  assert.deepEqual(back.config.pools.web!.backends.map((b) => [b.address, b.weight]), [
    ["127.0.0.1:5001", 1],
    ["127.0.0.2:5002", 4],
  ]);
  assert.equal(back.sources.get("web")!.get("127.0.0.2:5002"), "dns");
  // An add with a weight is the admin API's own; removing it removes the address.
  assert.equal(
    members.change(back.config, file, "web", { add: { address: "127.0.0.2:5002", weight: 9 } }),
    undefined,
  );
  assert.equal(members.overlay(file).sources.get("web")!.get("127.0.0.2:5002"), "admin");
  assert.equal(members.change(back.config, file, "web", { remove: "127.0.0.2:5002" }), undefined);
  assert.equal(members.overlay(file).config.pools.web!.backends.length, 1);
  // An add the file would refuse is refused, named by its address.
  assert.match(
    members.change(back.config, file, "web", { add: { address: "0.0.0.0:80" } })!,
    /^"0\.0\.0\.0:80": address: .*not an address to connect to/,
  );
});

Deno.test("PoolDiscovery.leaveOut(): counted each time, said once per problem", () => {
  const { discovery, logged } = keeper();
  discovery.leaveOut("127.0.0.1:5000: listener main's own address");
  discovery.leaveOut("127.0.0.1:5000: listener main's own address");
  discovery.leaveOut(undefined);
  assert.equal(discovery.errors, 2);
  assert.equal(logged.length, 1);
  assert.match(
    logged[0]!,
    /left out 127\.0\.0\.1:5000: listener main's own address; the rest applied/,
  );
  assert.equal(discovery.leftOut, undefined);
});
