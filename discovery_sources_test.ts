// The two discovery sources against real servers on loopback: Debian's
// dnsmasq and etcd (skipped, saying what to install, where missing).
import assert from "node:assert/strict";
import { realClock } from "./clock.ts";
import { type Discovered, PoolDiscovery, type SourceReport } from "./discovery.ts";
import { DnsSource } from "./discovery_dns.ts";
import { EtcdSource } from "./discovery_etcd.ts";
import { Dnsmasq, Etcd, have } from "./test_peers.ts";
import { until } from "./test_util.ts";

const haveDnsmasq = await have("dnsmasq", "dnsmasq-base");
const haveEtcd = await have("etcd", "etcd-server");

const addresses = (set: readonly Discovered[] | undefined) => (set ?? []).map((b) => b.address);

// A source behind a PoolDiscovery, as the balancer runs it, with what it said.
function follow(source: DnsSource | EtcdSource) {
  const logged: string[] = [];
  const reports: SourceReport[] = [];
  const discovery = new PoolDiscovery({
    pool: "web",
    source: {
      kind: source.kind,
      describe: source.describe,
      start: (report) =>
        source.start((r) => {
          reports.push(r);
          report(r);
        }),
      stop: () => source.stop(),
    },
    onChange: () => {},
    log: (line) => logged.push(line),
  });
  discovery.start();
  return { discovery, logged, reports };
}

Deno.test({
  name:
    "dnsmasq: A, AAAA and SRV answers, a changed hosts file after SIGHUP, a restart with new SRV records",
  ignore: !haveDnsmasq,
  fn: async () => {
    const directory = await Deno.makeTempDir();
    const dns = new Dnsmasq(directory);
    await dns.writeHosts([
      "127.0.0.11 a.service.test",
      "127.0.0.12 b.service.test",
      "::1 six.service.test",
    ]);
    await dns.start([
      {
        name: "_echo._tcp.service.test",
        target: "a.service.test",
        port: 5001,
        priority: 0,
        weight: 10,
      },
      {
        name: "_echo._tcp.service.test",
        target: "b.service.test",
        port: 5002,
        priority: 1,
        weight: 20,
      },
    ]);
    try {
      const a = new DnsSource(
        { name: "a.service.test", type: "A", port: 80, resolver: dns.resolver, intervalMs: 50 },
        { clock: realClock },
      );
      assert.deepEqual(addresses((await a.resolveOnce()).backends), ["127.0.0.11:80"]);
      const aaaa = new DnsSource(
        {
          name: "six.service.test",
          type: "AAAA",
          port: 80,
          resolver: dns.resolver,
          intervalMs: 50,
        },
        { clock: realClock },
      );
      assert.deepEqual(addresses((await aaaa.resolveOnce()).backends), ["[::1]:80"]);
      const srv = new DnsSource(
        { name: "_echo._tcp.service.test", type: "SRV", resolver: dns.resolver, intervalMs: 50 },
        { clock: realClock },
      );
      const first = await srv.resolveOnce();
      assert.deepEqual(
        [...first.backends!].sort((x, y) => x.address.localeCompare(y.address)),
        [
          { address: "127.0.0.11:5001", weight: 10, backup: false },
          { address: "127.0.0.12:5002", weight: 20, backup: true },
        ],
      );
      // The hosts file changes: after SIGHUP the SRV target resolves anew.
      const { discovery } = follow(srv);
      await until(() => discovery.backends !== undefined, "a first answer");
      await dns.writeHosts(["127.0.0.21 a.service.test", "127.0.0.12 b.service.test"]);
      dns.reread();
      await until(
        () => addresses(discovery.backends).includes("127.0.0.21:5001"),
        "the new address after SIGHUP",
        400,
        25,
      );
      // New SRV records need a restart of dnsmasq (it reads them at start).
      await dns.start([
        {
          name: "_echo._tcp.service.test",
          target: "b.service.test",
          port: 5002,
          priority: 0,
          weight: 1,
        },
      ]);
      await until(
        () => addresses(discovery.backends).join() === "127.0.0.12:5002",
        "the set after the restart",
        400,
        25,
      );
      await discovery.stop();
    } finally {
      await dns.stop();
      await Deno.remove(directory, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "dnsmasq: a name that goes away, then a server that does not answer, keep the last good set",
  ignore: !haveDnsmasq,
  fn: async () => {
    const directory = await Deno.makeTempDir();
    const dns = new Dnsmasq(directory);
    await dns.writeHosts(["127.0.0.11 web.service.test", "127.0.0.12 web.service.test"]);
    await dns.start();
    try {
      const source = new DnsSource(
        { name: "web.service.test", type: "A", port: 80, resolver: dns.resolver, intervalMs: 50 },
        { clock: realClock },
      );
      const { discovery, logged } = follow(source);
      await until(() => discovery.backends?.length === 2, "both addresses");
      await dns.writeHosts(["127.0.0.99 other.service.test"]);
      dns.reread();
      await until(() => discovery.errors > 0, "NXDOMAIN noticed", 400, 25);
      assert.deepEqual(addresses(discovery.backends), ["127.0.0.11:80", "127.0.0.12:80"]);
      await dns.stop();
      await until(
        () => discovery.failing === "the name server did not answer",
        "a timeout",
        400,
        25,
      );
      assert.deepEqual(addresses(discovery.backends), ["127.0.0.11:80", "127.0.0.12:80"]);
      const said = logged.filter((line) => line.includes("no such name"));
      assert.equal(said.length, 1, "NXDOMAIN said once, however often it was asked");
      await discovery.stop();
    } finally {
      await dns.stop();
      await Deno.remove(directory, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "etcd: keys put, changed and deleted are followed; a broken value is left out; etcd down keeps the set",
  ignore: !haveEtcd,
  fn: async () => {
    const directory = await Deno.makeTempDir();
    const etcd = new Etcd(directory);
    await etcd.start();
    try {
      await etcd.put("/lb/api/a", { address: "127.0.0.1:5001", weight: 2 });
      await etcd.put("/lb/other/x", { address: "127.0.0.1:6000" }); // another prefix
      const source = new EtcdSource({ endpoint: etcd.endpoint, prefix: "/lb/api/" }, {
        clock: realClock,
      });
      const { discovery, logged } = follow(source);
      await until(() => discovery.backends !== undefined, "the first range", 400, 25);
      assert.deepEqual(discovery.backends, [{
        address: "127.0.0.1:5001",
        weight: 2,
        backup: false,
      }]);
      await etcd.put("/lb/api/b", { address: "127.0.0.1:5002", backup: true });
      await until(() => discovery.backends?.length === 2, "a put, through the watch", 400, 25);
      await etcd.put("/lb/api/a", { address: "127.0.0.1:5001", weight: 5 });
      await until(() => discovery.backends?.[0]?.weight === 5, "a change", 400, 25);
      await etcd.put("/lb/api/a", "{not json");
      await until(() => discovery.errors > 0, "the broken value", 400, 25);
      assert.match(discovery.failing!, /key \/lb\/api\/a: not JSON/);
      assert.equal(
        discovery.backends?.[0]?.weight,
        5,
        "a broken value keeps the good one before it",
      );
      await etcd.put("/lb/api/c", { address: "not an address" });
      await etcd.delete("/lb/api/a");
      await until(
        () => addresses(discovery.backends).join() === "127.0.0.1:5002",
        "a delete",
        400,
        25,
      );
      assert.match(discovery.failing!, /key \/lb\/api\/c: address: /);
      await etcd.delete("/lb/api/c");
      await until(() => discovery.failing === undefined, "answering well again", 400, 25);
      // etcd stops: the set stays; it starts again: the watch resumes.
      await etcd.stop();
      await until(() => /cannot reach etcd/.test(discovery.failing ?? ""), "etcd gone", 400, 25);
      assert.deepEqual(addresses(discovery.backends), ["127.0.0.1:5002"]);
      await etcd.start();
      await until(() => discovery.failing === undefined, "etcd back", 400, 50);
      await etcd.put("/lb/api/d", { address: "127.0.0.1:5004" });
      await until(() => discovery.backends?.length === 2, "a put after the restart", 400, 25);
      assert.equal(logged.filter((l) => l.includes("cannot reach etcd")).length, 1);
      await discovery.stop();
    } finally {
      await etcd.stop();
      await Deno.remove(directory, { recursive: true });
    }
  },
});
