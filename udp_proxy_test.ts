import assert from "node:assert/strict";
import type { HostPort } from "./address.ts";
import { createStrategy, type Strategy } from "./balancer.ts";
import type { Clock } from "./clock.ts";
import { DenoEngine } from "./engine_deno.ts";
import { EpollEngine } from "./engine_epoll.ts";
import type { LoadBalancerEvent } from "./events.ts";
import type { HealthSettings } from "./health.ts";
import { Backend, Pool } from "./pool.ts";
import { parseProxyHeader } from "./proxy_protocol.ts";
import {
  accessRecords,
  FakeClock,
  seededBytes,
  serverOf,
  startUdpServer,
  TEST_ENGINE,
  UdpTestClient,
  type UdpTestServer,
  until,
} from "./test_util.ts";
import { UdpBalancer, type UdpSettings } from "./udp_proxy.ts";

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

interface Running {
  balancer: UdpBalancer;
  pool: Pool;
  port: number;
  events: LoadBalancerEvent[];
  backends: Backend[];
  close(): Promise<void>;
}

/** A UDP listener on 127.0.0.1 over `servers`, on the engine under test. */
function startUdp(
  servers: readonly (UdpTestServer | HostPort)[],
  options: {
    settings?: Partial<UdpSettings>;
    clock?: Clock;
    balance?: "round-robin" | "source-hash";
    strategy?: Strategy<Backend>;
    sendProxy?: "v2";
    onDown?: "shutdown-sessions";
    health?: HealthSettings;
    hostname?: string;
  } = {},
): Running {
  const events: LoadBalancerEvent[] = [];
  const backends = servers.map((s) => {
    const backend = new Backend("address" in s ? s.address : s);
    if (options.sendProxy) backend.sendProxy = options.sendProxy;
    return backend;
  });
  const pool = new Pool({
    backends,
    strategy: options.strategy ?? createStrategy(options.balance ?? "round-robin"),
    ...(options.onDown ? { settings: { onDown: options.onDown } } : {}),
    ...(options.health ? { health: options.health } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
  });
  const epoll = TEST_ENGINE === "epoll"
    ? new EpollEngine(options.clock ? { clock: options.clock } : {})
    : undefined;
  const balancer = new UdpBalancer({
    address: { hostname: options.hostname ?? "127.0.0.1", port: 0 },
    engine: epoll ?? new DenoEngine(),
    pool,
    ...(options.settings ? { settings: options.settings } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
    onEvent: (event) => events.push(event),
  });
  return {
    balancer,
    pool,
    port: balancer.address.port,
    events,
    backends,
    async close() {
      await balancer.shutdown(0);
      await epoll?.dispose();
    },
  };
}

Deno.test("udp: a DNS-style query gets its one answer from the listener's address, and the flow ends", async () => {
  const server = startUdpServer("1");
  const lb = startUdp([server], { settings: { responses: 1 } });
  const client = new UdpTestClient(lb.port);
  try {
    await client.send("query 1");
    const [answer, from] = await client.receive();
    assert.equal(text(answer), "[Server 1] query 1");
    assert.equal(from.port, lb.port, "the answer comes from the address the client sent to");
    await until(() => lb.balancer.activeConnections === 0, "the flow ended after one answer");
    const [record] = accessRecords(lb.events);
    assert.equal(record?.end, "responses");
    assert.equal(record?.client, `127.0.0.1:${client.address.port}`);
    assert.equal(record?.bytesIn, 7);
    assert.equal(record?.bytesOut, 18);
    assert.equal(lb.balancer.udp.datagramsIn, 1);
    assert.equal(lb.balancer.udp.datagramsOut, 1);
    assert.equal(lb.backends[0]!.connections, 1);
    assert.equal(lb.backends[0]!.active, 0);
  } finally {
    await client.close();
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: datagrams keep their boundaries and bytes exactly, both ways, 0 to 65507 bytes", async () => {
  const server = startUdpServer("echo", (bytes) => [bytes]);
  const lb = startUdp([server]);
  const client = new UdpTestClient(lb.port);
  try {
    for (const [size, seed] of [[0, 1], [1, 2], [1400, 3], [9000, 4], [65507, 5]] as const) {
      const sent = seededBytes(size, seed);
      await client.send(sent);
      const [back] = await client.receive();
      assert.equal(back.length, size, `a ${size}-byte datagram came back whole`);
      assert.deepEqual(back, sent);
    }
    const received = server.received.map((d) => d.bytes.length);
    assert.deepEqual(received, [0, 1, 1400, 9000, 65507], "nothing merged or split on the way");
    assert.equal(lb.balancer.activeConnections, 1, "one client, one flow");
  } finally {
    await client.close();
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: flows are placed round robin, and every datagram of a flow goes to its backend", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2")];
  const lb = startUdp(servers);
  const clients = [0, 1, 2, 3].map(() => new UdpTestClient(lb.port));
  try {
    const placed: string[] = [];
    for (const client of clients) placed.push(serverOf(await client.ask("hello")));
    assert.deepEqual(placed, ["1", "2", "1", "2"]);
    for (let round = 0; round < 3; round++) {
      for (const [i, client] of clients.entries()) {
        assert.equal(serverOf(await client.ask(`again ${round}`)), placed[i]);
      }
    }
    // Each backend saw each of its flows from one socket of the balancer's.
    for (const server of servers) {
      const sources = new Set(server.received.map((d) => d.from.port));
      assert.equal(sources.size, 2, "two flows, a socket each");
    }
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await lb.close();
    await Promise.all(servers.map((s) => s.close()));
  }
});

Deno.test("udp: a long-lived flow carries many datagrams each way, replies to the right client", async () => {
  // The backend answers each datagram twice: a flow is not a request and an answer.
  const server = startUdpServer("1", (bytes) => [bytes, bytes]);
  const lb = startUdp([server]);
  const a = new UdpTestClient(lb.port);
  const b = new UdpTestClient(lb.port);
  try {
    for (let i = 0; i < 50; i++) {
      await a.send(`a${i}`);
      await b.send(`b${i}`);
      for (const [client, name] of [[a, "a"], [b, "b"]] as const) {
        assert.equal(text((await client.receive())[0]), `${name}${i}`);
        assert.equal(text((await client.receive())[0]), `${name}${i}`);
      }
    }
    assert.equal(lb.balancer.udp.datagramsIn, 100);
    assert.equal(lb.balancer.udp.datagramsOut, 200);
    assert.equal(lb.balancer.activeConnections, 2);
  } finally {
    await a.close();
    await b.close();
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: a flow quiet for session_idle_ms ends, on the clock, and is counted as idle", async () => {
  const clock = new FakeClock();
  const server = startUdpServer("1");
  const lb = startUdp([server], { clock, settings: { sessionIdleMs: 1000 } });
  const client = new UdpTestClient(lb.port);
  try {
    await client.ask("one");
    await clock.tick(900);
    await client.ask("two"); // activity: the flow's silence starts again
    await clock.tick(900);
    assert.equal(lb.balancer.activeConnections, 1, "not idle yet: 900 ms since its last datagram");
    await clock.tick(400);
    assert.equal(lb.balancer.activeConnections, 0);
    assert.equal(lb.balancer.udp.dropped.idle, 1);
    assert.equal(accessRecords(lb.events)[0]?.end, "idle-timeout");
    // The client's next datagram starts a new flow.
    assert.equal(serverOf(await client.ask("three")), "1");
    assert.equal(lb.balancer.activeConnections, 1);
  } finally {
    await client.close();
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: max_sessions bounds the table; the least recently used flow goes first", async () => {
  const server = startUdpServer("1");
  const lb = startUdp([server], { settings: { maxSessions: 2 } });
  const clients = [0, 1, 2].map(() => new UdpTestClient(lb.port));
  const [a, b, c] = clients as [UdpTestClient, UdpTestClient, UdpTestClient];
  try {
    await a.ask("a");
    await b.ask("b");
    await a.ask("a again"); // now b is the least recently used
    await c.ask("c");
    assert.equal(lb.balancer.activeConnections, 2);
    assert.equal(lb.balancer.udp.dropped["table-full"], 1);
    const [evicted] = accessRecords(lb.events);
    assert.equal(evicted?.end, "table-full");
    assert.equal(evicted?.client, `127.0.0.1:${b.address.port}`);
  } finally {
    await Promise.all(clients.map((cl) => cl.close()));
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: a backend down takes no new flows, and its flows move at their next datagram", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2")];
  const lb = startUdp(servers);
  const client = new UdpTestClient(lb.port);
  try {
    assert.equal(serverOf(await client.ask("x")), "1");
    lb.backends[0]!.adminState = "disabled";
    assert.equal(serverOf(await client.ask("y")), "2", "moved to the backend that is left");
    const [moved] = accessRecords(lb.events);
    assert.equal(moved?.end, "backend-down");
    lb.backends[1]!.adminState = "disabled";
    await client.send("z");
    await until(() => lb.balancer.udp.dropped["no-backend"] === 1, "dropped: no backend");
    assert.equal(lb.balancer.activeConnections, 0);
  } finally {
    await client.close();
    await lb.close();
    await Promise.all(servers.map((s) => s.close()));
  }
});

Deno.test("udp: with send_proxy v2, every datagram to the backend starts with a v2 UDP header naming the client", async () => {
  const server = startUdpServer("1", () => [new TextEncoder().encode("ok")]);
  const lb = startUdp([server], { sendProxy: "v2" });
  const client = new UdpTestClient(lb.port);
  try {
    for (const payload of ["first", "second"]) {
      assert.equal(await client.ask(payload), "ok");
    }
    assert.equal(server.received.length, 2);
    for (const [i, { bytes }] of server.received.entries()) {
      const parsed = parseProxyHeader(bytes);
      assert.equal(parsed.state, "done");
      if (parsed.state !== "done") continue;
      assert.equal(bytes[13], 0x12, "UDP over IPv4");
      assert.deepEqual(parsed.header.source, {
        hostname: "127.0.0.1",
        port: client.address.port,
      });
      assert.deepEqual(parsed.header.destination, { hostname: "127.0.0.1", port: lb.port });
      assert.equal(text(bytes.subarray(parsed.length)), ["first", "second"][i]);
    }
  } finally {
    await client.close();
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: source-hash keeps a client address on one backend across flows", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2"), startUdpServer("3")];
  const lb = startUdp(servers, { balance: "source-hash", settings: { responses: 1 } });
  try {
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const client = new UdpTestClient(lb.port);
      seen.add(serverOf(await client.ask("q")));
      await client.close();
    }
    assert.equal(seen.size, 1, "one client address, one backend, whatever its port");
  } finally {
    await lb.close();
    await Promise.all(servers.map((s) => s.close()));
  }
});

Deno.test("udp: shutdown lets open flows finish within the drain timeout, then cuts the rest", async () => {
  const clock = new FakeClock();
  const server = startUdpServer("1");
  const lb = startUdp([server], { clock });
  const client = new UdpTestClient(lb.port);
  const late = new UdpTestClient(lb.port);
  try {
    await client.ask("open");
    const stopping = lb.balancer.shutdown(5000);
    await late.send("new flow while draining");
    await client.send("old flow goes on");
    assert.equal(text((await client.receive())[0]), "[Server 1] old flow goes on");
    assert.equal(lb.balancer.udp.datagramsIn, 3, "the new client's datagram came in");
    assert.equal(lb.balancer.udp.dropped.draining, 1, "and was dropped: no new flow");
    await clock.tick(5000);
    assert.deepEqual(await stopping, { cut: 1 });
    assert.equal(accessRecords(lb.events)[0]?.end, "drain-timeout");
    assert.equal(
      server.received.filter((d) => text(d.bytes).startsWith("new flow")).length,
      0,
      "no new flow while draining",
    );
  } finally {
    await client.close();
    await late.close();
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: a drain ends as soon as the open flows go idle, not at the drain timeout", async () => {
  const clock = new FakeClock();
  const server = startUdpServer("1");
  const lb = startUdp([server], { clock, settings: { sessionIdleMs: 1000 } });
  const client = new UdpTestClient(lb.port);
  try {
    await client.ask("open");
    let done: { cut: number } | undefined;
    lb.balancer.shutdown(60_000).then((result) => done = result);
    await clock.tick(1500);
    assert.deepEqual(done, { cut: 0 }, "drained when the flow went idle, 1.5 s in");
    assert.equal(accessRecords(lb.events)[0]?.end, "idle-timeout");
  } finally {
    await client.close();
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: a backend that is draining or full keeps its flows; only down or disabled moves them", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2")];
  const lb = startUdp(servers);
  const client = new UdpTestClient(lb.port);
  const other = new UdpTestClient(lb.port);
  try {
    assert.equal(serverOf(await client.ask("a")), "1");
    lb.backends[0]!.adminState = "draining";
    assert.equal(serverOf(await client.ask("b")), "1", "a draining backend keeps its flow");
    assert.equal(serverOf(await other.ask("c")), "2", "and takes no new one");
    lb.backends[0]!.adminState = "enabled";
    lb.backends[0]!.maxConnections = 1; // its one flow fills it
    assert.equal(serverOf(await client.ask("d")), "1", "a full backend keeps its flow");
    const sources = new Set(servers[0]!.received.map((d) => d.from.port));
    assert.equal(sources.size, 1, "one flow, one socket: never reopened");
    assert.equal(accessRecords(lb.events).length, 0, "no flow ended");
    // Both full: a new client's datagram is refused as such (flows do not queue).
    lb.backends[1]!.maxConnections = 1;
    const third = new UdpTestClient(lb.port);
    await third.send("no room");
    await until(() => lb.balancer.udp.dropped.full === 1, "refused: every backend full");
    assert.equal(lb.balancer.udp.dropped["no-backend"], 0);
    await third.close();
  } finally {
    await client.close();
    await other.close();
    await lb.close();
    await Promise.all(servers.map((s) => s.close()));
  }
});

Deno.test("udp: a reload that removes a backend with on_remove: close ends its flows; a smaller table evicts", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2")];
  const lb = startUdp(servers);
  const clients = [0, 1, 2, 3].map(() => new UdpTestClient(lb.port));
  try {
    for (const client of clients) await client.ask("hi");
    assert.equal(lb.balancer.activeConnections, 4);
    const kept = lb.backends[1]!;
    const pool = new Pool({ backends: [kept], settings: { onRemove: "close" } });
    lb.balancer.reconfigure({ pool, settings: { maxSessions: 1 } });
    const ends = accessRecords(lb.events).map((r) => r.end).sort();
    assert.deepEqual(ends, ["backend-removed", "backend-removed", "table-full"]);
    assert.equal(lb.balancer.activeConnections, 1);
    assert.equal(serverOf(await clients[0]!.ask("again")), "2");
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await lb.close();
    await Promise.all(servers.map((s) => s.close()));
  }
});

Deno.test("udp: a bug met on one datagram is reported; the next datagram is served", async () => {
  const server = startUdpServer("1");
  let calls = 0;
  const flaky: Strategy<Backend> = {
    pick(backends) {
      if (calls++ === 0) throw new Error("a strategy's bug");
      return backends[0];
    },
  };
  const lb = startUdp([server], { strategy: flaky });
  const client = new UdpTestClient(lb.port);
  try {
    await client.send("lost");
    await until(
      () => lb.events.some((e) => e.type === "internal-error"),
      "the bug reported as an internal error",
    );
    assert.equal(await client.ask("served"), "[Server 1] served");
  } finally {
    await client.close();
    await lb.close();
    await server.close();
  }
});

Deno.test("udp: an IPv6 client's flow, its log address in brackets, its PROXY v2 header UDP over IPv6", async () => {
  let server: UdpTestServer;
  try {
    server = startUdpServer("6", () => [new TextEncoder().encode("ok")], { hostname: "::1" });
  } catch (error) {
    console.log(`IPv6 loopback not available (${error}): skipped`);
    return;
  }
  const lb = startUdp([server], { sendProxy: "v2", hostname: "::1", settings: { responses: 1 } });
  const client = new UdpTestClient(lb.port, { hostname: "::1", to: "::1" });
  try {
    assert.equal(await client.ask("six"), "ok");
    const bytes = server.received[0]!.bytes;
    assert.equal(bytes[13], 0x22, "UDP over IPv6");
    const parsed = parseProxyHeader(bytes);
    assert.equal(parsed.state, "done");
    if (parsed.state === "done") {
      assert.deepEqual(parsed.header.source, { hostname: "::1", port: client.address.port });
    }
    await until(() => accessRecords(lb.events).length === 1, "the flow ended at its answer");
    assert.equal(accessRecords(lb.events)[0]?.client, `[::1]:${client.address.port}`);
  } finally {
    await client.close();
    await lb.close();
    await server.close();
  }
});

Deno.test({
  name:
    "udp: a closed backend port (ICMP) ends the flow, counts a failed connect; a later reply brings it back",
  // Only a connected socket hears of ICMP errors: the epoll engine's.
  ignore: TEST_ENGINE !== "epoll",
  fn: async () => {
    const clock = new FakeClock();
    const closed = startUdpServer("1");
    const port = closed.port;
    await closed.close();
    const lb = startUdp([{ hostname: "127.0.0.1", port }], {
      clock,
      health: { rise: 1, fall: 1, backoffBaseMs: 1000, backoffMaxMs: 1000, slowStartMs: 0 },
    });
    const client = new UdpTestClient(lb.port);
    let revived: UdpTestServer | undefined;
    try {
      await client.send("anyone?");
      await until(() => accessRecords(lb.events).length === 1, "the flow ended");
      assert.equal(accessRecords(lb.events)[0]?.end, "server-reset");
      const backend = lb.backends[0]!;
      assert.equal(backend.connectFailures, 1);
      assert.equal(backend.health.state, "down", "fall 1: down after one failure");
      await client.send("while down");
      await until(() => lb.balancer.udp.dropped["no-backend"] === 1, "no flow for a down backend");
      // Its port answers again; after the backoff one flow may try it.
      revived = startUdpServer("1", undefined, { port });
      await clock.tick(1000);
      assert.equal(await client.ask("back?"), "[Server 1] back?");
      assert.equal(backend.health.state, "up", "a reply is a connect that worked");
    } finally {
      await client.close();
      await lb.close();
      await revived?.close();
    }
  },
});

Deno.test("udp: a trial flow with no reply and no ICMP error brings its backend back when it ends; its own datagrams stay on it", async () => {
  const clock = new FakeClock();
  // A one-way backend (syslog-like): it takes datagrams and never answers.
  const quiet = startUdpServer("1", () => []);
  const lb = startUdp([quiet], {
    clock,
    settings: { sessionIdleMs: 1000 },
    health: { rise: 1, fall: 1, backoffBaseMs: 500, backoffMaxMs: 500, slowStartMs: 0 },
  });
  const client = new UdpTestClient(lb.port);
  try {
    const backend = lb.backends[0]!;
    backend.recordConnect(false, "refused"); // as an ICMP error would
    assert.equal(backend.health.state, "down");
    await client.send("while down");
    await until(() => lb.balancer.udp.dropped["no-backend"] === 1, "no flow while down");
    await clock.tick(500); // the backoff: one trial flow may go
    await client.send("trial 1");
    await until(() => quiet.received.length === 1, "the trial's first datagram");
    assert.equal(backend.health.trial, true);
    await client.send("trial 2"); // the backend is still down: the trial flow keeps it
    await until(() => quiet.received.length === 2, "the trial's second datagram");
    assert.equal(accessRecords(lb.events).length, 0, "not ended as backend-down");
    await clock.tick(1500); // silence: the flow ends, with no ICMP error
    assert.equal(accessRecords(lb.events)[0]?.end, "idle-timeout");
    assert.equal(backend.health.state, "up", "a quiet trial is a connect that worked");
  } finally {
    await client.close();
    await lb.close();
    await quiet.close();
  }
});

Deno.test("udp: an IPv4 client of a dual-stack listener is named alike on both engines", async () => {
  const server = startUdpServer("1");
  let lb: Running;
  try {
    lb = startUdp([server], { hostname: "::", settings: { responses: 1 } });
  } catch (error) {
    console.log(`no dual-stack [::] socket here (${error}): skipped`);
    await server.close();
    return;
  }
  const client = new UdpTestClient(lb.port);
  try {
    assert.equal(await client.ask("v4"), "[Server 1] v4");
    await until(() => accessRecords(lb.events).length === 1, "the flow ended at its answer");
    assert.equal(accessRecords(lb.events)[0]?.client, `[::ffff:127.0.0.1]:${client.address.port}`);
  } finally {
    await client.close();
    await lb.close();
    await server.close();
  }
});
