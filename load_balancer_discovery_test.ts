// The balancer as a process, its pools learned from real etcd and dnsmasq
// servers, changed under traffic (on the epoll engine, in two data-plane
// threads); run-time changes kept by a state file; and
// three instances on one source that send each client to the same backend.
import assert from "node:assert/strict";
import { Dnsmasq, Etcd, have } from "./test_peers.ts";
import {
  type BalancerProcess,
  checkConfigFile,
  connectLoopback,
  exchange,
  exchangeFrom,
  serverOf,
  startBalancerWithAdmin,
  startServer,
  startTaggedServer,
  TEST_ENGINE,
  type TestServer,
  until,
} from "./test_util.ts";
import { answerLines } from "./lab.ts";

const haveDnsmasq = await have("dnsmasq", "dnsmasq-base");
const haveEtcd = await have("etcd", "etcd-server");
const TOKEN = "discovery-test-token";
const PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env=LOG_TOKENS,LOG_STREAM",
];

const balancerOn = (dir: string, config: string) =>
  startBalancerWithAdmin(dir, config, { token: TOKEN, permissions: PERMISSIONS });

/** Sends a line on an open connection; resolves with the server that answered it. */
async function ask(conn: Deno.Conn, line: string): Promise<string> {
  await conn.write(new TextEncoder().encode(line));
  const buffer = new Uint8Array(256);
  let text = "";
  while (!text.includes("\n")) {
    const read = await conn.read(buffer);
    if (read === null) throw new Error(`closed after ${JSON.stringify(text)}`);
    text += new TextDecoder().decode(buffer.subarray(0, read));
  }
  return serverOf(text);
}

/** Clients one after another until stopped: which server answered each, and any failure. */
function traffic(port: number) {
  let running = true;
  const seen: string[] = [];
  const failures: string[] = [];
  const loop = (async () => {
    while (running) {
      try {
        seen.push(serverOf(await exchange(port, "ping\n")));
      } catch (error) {
        failures.push(String(error));
      }
    }
  })();
  return {
    seen,
    failures,
    /** Resolves once `n` more clients have been answered. */
    more: (n: number) => {
      const target = seen.length + n;
      return until(() => seen.length >= target || failures.length > 0, `${n} more answers`);
    },
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

Deno.test({
  name: "etcd discovery under traffic: puts and deletes applied, none of them fails a client; " +
    "on_remove drain and close; etcd down keeps the set; admin add and remove",
  ignore: !haveEtcd,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const etcd = new Etcd(dir);
    const servers = ["a", "b", "c", "x", "y"].map((id) => [id, startTaggedServer(id)] as const);
    const server = Object.fromEntries(servers) as Record<string, TestServer>;
    const at = (id: string) => `127.0.0.1:${server[id]!.port}`;
    await etcd.start();
    let lb: BalancerProcess | undefined;
    let load: ReturnType<typeof traffic> | undefined;
    try {
      await etcd.put("/lb/api/a", { address: at("a") });
      await etcd.put("/lb/cut/x", { address: at("x") });
      const running = await balancerOn(
        dir,
        `listeners:
  - { name: api, listen: "127.0.0.1:0", pool: api }
  - { name: cut, listen: "127.0.0.1:0", pool: cut }
pools:
  api: { discover: { etcd: "${etcd.endpoint}", prefix: /lb/api/ } }
  cut:
    discover: { etcd: "${etcd.endpoint}", prefix: /lb/cut/ }
    on_remove: close
${TEST_ENGINE === "epoll" ? "threads: 2\n" : ""}`,
      );
      lb = running.lb;
      const { call, backends } = running;
      const ports = [...lb.stderr.join("\n").matchAll(/listening on 127\.0\.0\.1:(\d+)/g)].map((
        m,
      ) => Number(m[1]));
      const [apiPort, cutPort] = ports as [number, number];
      await until(async () => (await backends("api")).length === 1, "a learned", 400, 25);
      assert.deepEqual((await backends("api"))[0], {
        ...(await backends("api"))[0],
        address: at("a"),
        source: "etcd",
      });
      await until(async () => (await backends("cut")).length === 1, "x learned", 400, 25);
      // Held connections: one on a (pool api drains), one on x (pool cut closes).
      const onA = await connectLoopback(apiPort);
      assert.equal(await ask(onA, "held\n"), "a");
      const onX = await connectLoopback(cutPort);
      assert.equal(await ask(onX, "held\n"), "x");

      load = traffic(apiPort);
      await load.more(5);
      await etcd.put("/lb/api/b", { address: at("b"), weight: 1 });
      await etcd.put("/lb/cut/y", { address: at("y") });
      await until(() => load!.seen.includes("b"), "b takes clients", 2000, 5);
      await until(async () => (await backends("cut")).length === 2, "y learned", 400, 25);

      // A key naming the listener itself is left out, and said; the rest still applies.
      await etcd.put("/lb/api/self", { address: `127.0.0.1:${apiPort}` });
      await until(
        async () => {
          const [api] = (await call("GET", "/api/discovery")).body as { left_out: string | null }[];
          return /listener api's own address/.test(api?.left_out ?? "");
        },
        "the loop left out",
        400,
        25,
      );
      await lb.waitForLine("stderr", /pool api .*: left out 127\.0\.0\.1:\d+: listener api's own/);

      // a leaves the pool: no new client reaches it; its held connection finishes.
      await etcd.delete("/lb/api/a");
      await until(async () => (await backends("api")).length === 1, "a removed", 400, 25);
      const after = load.seen.length + 1; // one client may have been placed already
      await load.more(20);
      assert.deepEqual(new Set(load.seen.slice(after)), new Set(["b"]));
      assert.equal(await ask(onA, "still here\n"), "a", "a's connection finishes in its own time");
      onA.close();

      // x leaves a pool with on_remove: close: its held connection is cut.
      await etcd.delete("/lb/cut/x");
      const cut = await onX.read(new Uint8Array(64)).catch(() => null);
      assert.equal(cut, null, "the connection to x was closed by the balancer");
      onX.close();
      await lb.waitForLine("stdout", /end=backend-removed/);

      // etcd stops: the set stays and clients are served; it returns and the watch resumes.
      await etcd.stop();
      await until(
        async () => {
          const [api] = (await call("GET", "/api/discovery")).body as { failing: string | null }[];
          return /cannot reach etcd/.test(api?.failing ?? "");
        },
        "etcd seen gone",
        400,
        25,
      );
      await load.more(10);
      assert.deepEqual((await backends("api")).map((b) => b.address), [at("b")]);
      const metrics = (await call("GET", "/metrics")).body as string;
      assert.match(metrics, /lb_discovery_errors_total\{pool="api",source="etcd"\} [1-9]/);
      assert.match(
        metrics,
        new RegExp(`lb_backend_info\\{pool="api",backend="${at("b")}",source="etcd"\\} 1`),
      );
      await etcd.start();
      await etcd.put("/lb/api/c", { address: at("c") });
      await until(() => load!.seen.includes("c"), "c takes clients after etcd returns", 2000, 5);

      // The admin API adds and removes beside discovery.
      const added = await call("POST", "/api/pools/api/backends", { address: at("a") });
      assert.equal(added.status, 200, JSON.stringify(added.body));
      const before = load.seen.length;
      await until(() => load!.seen.slice(before).includes("a"), "a added by hand", 2000, 5);
      assert.equal((await backends("api")).find((b) => b.address === at("a"))?.source, "admin");
      const removed = await call(
        "DELETE",
        `/api/pools/api/backends/${encodeURIComponent(at("c"))}`,
      );
      assert.equal(removed.status, 200, JSON.stringify(removed.body));
      const since = load.seen.length + 1;
      await load.more(20);
      assert.ok(!load.seen.slice(since).includes("c"), "c removed by hand takes no client");

      await load.stop();
      assert.deepEqual(load.failures, [], "no client failed through any of it");
    } finally {
      await load?.stop();
      await lb?.close();
      await etcd.stop();
      await Promise.all(servers.map(([, s]) => s.close()));
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// A tagged server on another loopback address, on a given port (0: any).
function taggedOn(hostname: string, port: number, id: string): TestServer {
  const listener = Deno.listen({ hostname, port });
  const bound = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const server = startServer((conn) => answerLines(conn, id), { hostname, port: bound });
  return server;
}

Deno.test({
  name:
    "DNS discovery under traffic: A records from dnsmasq, changed by SIGHUP; NXDOMAIN keeps the set",
  ignore: !haveDnsmasq,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const dns = new Dnsmasq(dir);
    const two = taggedOn("127.0.0.2", 0, "2");
    const three = taggedOn("127.0.0.3", two.port, "3");
    let lb: BalancerProcess | undefined;
    let load: ReturnType<typeof traffic> | undefined;
    try {
      await dns.writeHosts(["127.0.0.2 web.service.test"]);
      await dns.start();
      const running = await balancerOn(
        dir,
        `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web:
    discover: { dns: web.service.test, type: A, port: ${two.port}, resolver: "${dns.resolver}", interval_ms: 100 }
`,
      );
      lb = running.lb;
      const { backends, call } = running;
      await until(async () => (await backends("web")).length === 1, "the A record", 400, 25);
      load = traffic(lb.port);
      await load.more(5);
      assert.deepEqual(new Set(load.seen), new Set(["2"]));
      await dns.writeHosts(["127.0.0.2 web.service.test", "127.0.0.3 web.service.test"]);
      dns.reread();
      await until(() => load!.seen.includes("3"), "the second address takes clients", 4000, 5);
      assert.equal((await backends("web"))[0]!.source, "dns");
      // The name goes away: the pool keeps both.
      await dns.writeHosts(["127.0.0.9 other.service.test"]);
      dns.reread();
      await until(
        async () => {
          const [web] = (await call("GET", "/api/discovery")).body as { errors: number }[];
          return (web?.errors ?? 0) > 0;
        },
        "NXDOMAIN counted",
        400,
        25,
      );
      const since = load.seen.length;
      await load.more(10);
      assert.deepEqual(new Set(load.seen.slice(since)), new Set(["2", "3"]));
      await lb.waitForLine("stderr", /no such name.*keeping the last good set of 2 backend/);
      // It comes back with one address: the other leaves.
      await dns.writeHosts(["127.0.0.3 web.service.test"]);
      dns.reread();
      await until(async () => (await backends("web")).length === 1, "back to one", 400, 25);
      const after = load.seen.length + 1;
      await load.more(10);
      assert.deepEqual(new Set(load.seen.slice(after)), new Set(["3"]));
      await load.stop();
      assert.deepEqual(load.failures, []);
    } finally {
      await load?.stop();
      await lb?.close();
      await dns.stop();
      await Promise.all([two.close(), three.close()]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "state_file: backends added and drained through the admin API outlast a restart",
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const one = startTaggedServer("1");
    const two = startTaggedServer("2");
    const config = `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:${one.port}" }] }
state_file: ${dir}/state.json
`;
    let lb: BalancerProcess | undefined;
    try {
      // A state file that cannot be read is said, and kept aside, not overwritten.
      await Deno.writeTextFile(`${dir}/state.json`, "{not json");
      let running = await balancerOn(dir, config);
      lb = running.lb;
      await lb.waitForLine("stderr", /state file .*: not JSON; starting without it; kept aside/);
      assert.equal(await Deno.readTextFile(`${dir}/state.json.unreadable`), "{not json");
      const added = await running.call("POST", "/api/pools/web/backends", {
        address: `127.0.0.1:${two.port}`,
        weight: 3,
      });
      assert.equal(added.status, 200);
      const drained = await running.call("POST", `/api/backends/web/127.0.0.1:${one.port}/drain`);
      assert.equal(drained.status, 200, JSON.stringify(drained.body));
      const saved = JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
      assert.deepEqual(saved.pools.web.admin, { [`127.0.0.1:${one.port}`]: { state: "draining" } });
      // Changes at once are saved one at a time: the file stays whole.
      const twoAt = `/api/backends/web/${encodeURIComponent(`127.0.0.1:${two.port}`)}/weight`;
      const answers = await Promise.all(
        [2, 3, 4, 5, 6, 7, 8, 9].map((weight) => running.call("POST", twoAt, { weight })),
      );
      assert.ok(answers.every((a) => a.status === 200));
      const after = JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
      const weight = after.pools.web.admin[`127.0.0.1:${two.port}`].weight;
      assert.equal(weight, (await running.backends("web"))[1]!.weight, "the last change is saved");
      const leftovers = [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".tmp"));
      assert.deepEqual(leftovers, []);
      // A reload of the file keeps the drain too, with a state file.
      lb.kill("SIGHUP");
      await lb.waitForLine("stderr", /reloaded \(SIGHUP\)/);
      assert.equal(serverOf(await exchange(lb.port, "x\n")), "2");
      await lb.close();

      running = await balancerOn(dir, config);
      lb = running.lb;
      await lb.waitForLine("stderr", /state file .* restored/);
      const state = await running.backends("web");
      assert.deepEqual(
        state.map((b) => [b.address, b.state, b.source]),
        [
          [`127.0.0.1:${one.port}`, "draining", "config"],
          [`127.0.0.1:${two.port}`, "up", "admin"],
        ],
      );
      assert.equal(serverOf(await exchange(lb.port, "x\n")), "2");
    } finally {
      await lb?.close();
      await Promise.all([one.close(), two.close()]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "three instances on one etcd prefix send 1,000 clients to the same backends, " +
    "before and after a backend leaves; about 1/N of them move",
  ignore: !haveEtcd,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const etcd = new Etcd(dir);
    const ids = ["1", "2", "3", "4", "5"];
    const servers = ids.map((id) => startTaggedServer(id));
    const instances: BalancerProcess[] = [];
    await etcd.start();
    try {
      const config = `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web:
    balance: source-hash
    discover: { etcd: "${etcd.endpoint}", prefix: /lb/web/ }
`;
      const put = (i: number) =>
        etcd.put(`/lb/web/${ids[i]}`, { address: `127.0.0.1:${servers[i]!.port}` });
      const learned = async (
        call: (m: string, p: string) => Promise<{ body: unknown }>,
        n: number,
      ) =>
        await until(
          async () => ((await call("GET", "/api/backends")).body as unknown[]).length === n,
          `${n} backends learned`,
          400,
          25,
        );
      // The first instance learns the backends one at a time, last first;
      // the others learn them all at once.
      const first = await balancerOn(dir, config);
      instances.push(first.lb);
      for (let i = ids.length - 1; i >= 0; i--) {
        await put(i);
        await learned(first.call, ids.length - i);
      }
      for (let n = 0; n < 2; n++) {
        const next = await balancerOn(dir, config);
        instances.push(next.lb);
        await learned(next.call, ids.length);
      }
      // 1,000 clients, each its own loopback address: where each instance sends it.
      const clients = Array.from(
        { length: 1000 },
        (_, i) => `127.1.${Math.floor(i / 250)}.${(i % 250) + 1}`,
      );
      const mapping = async (lb: BalancerProcess) => {
        const out: string[] = [];
        for (let i = 0; i < clients.length; i += 50) {
          const batch = clients.slice(i, i + 50);
          out.push(
            ...await Promise.all(
              batch.map(async (c) => serverOf(await exchangeFrom(c, lb.port, "x\n"))),
            ),
          );
        }
        return out;
      };
      const before = await Promise.all(instances.map(mapping));
      assert.deepEqual(before[1], before[0]);
      assert.deepEqual(before[2], before[0]);
      assert.equal(new Set(before[0]).size, ids.length, "every backend takes some clients");

      await etcd.delete("/lb/web/3");
      for (const lb of instances) {
        await lb.waitForLine("stderr", /reloaded \(discovery: pool web -127\.0\.0\.1:\d+\)/);
      }
      const after = await Promise.all(instances.map(mapping));
      assert.deepEqual(after[1], after[0]);
      assert.deepEqual(after[2], after[0]);
      const moved = clients.filter((_, i) => before[0]![i] !== after[0]![i]).length;
      const onRemoved = before[0]!.filter((s) => s === "3").length;
      assert.ok(!after[0]!.includes("3"));
      // Those on the removed backend must move; Maglev moves few others.
      console.log(
        `source-hash: ${moved} of 1000 clients moved when 1 of 5 backends left ` +
          `(${onRemoved} were on it)`,
      );
      assert.ok(moved >= onRemoved);
      assert.ok(
        moved <= onRemoved + 1000 * 0.05,
        `${moved} moved, ${onRemoved} had to; backends on ports ` +
          servers.map((s) => s.port).join(", "),
      );
    } finally {
      await Promise.all(instances.map((lb) => lb.close()));
      await etcd.stop();
      await Promise.all(servers.map((s) => s.close()));
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("examples/discovery.yaml passes --check", async () => {
  const { code, said } = await checkConfigFile("examples/discovery.yaml");
  assert.equal(code, 0, said);
  assert.match(said, /web: source-hash over dns _echo\._tcp\.service\.test/);
});
