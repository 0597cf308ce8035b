/**
 * UDP listeners in the balancer process, on the engine under test: DNS-style
 * queries, a long flow, a flood from many sources with the table bounded,
 * health checked over UDP, metrics, and a reload; `--threads 2` on epoll.
 */

import assert from "node:assert/strict";
import {
  checkConfigFile,
  HAVE_PROMTOOL,
  promtoolCheck,
  serverOf,
  startBalancerWithAdmin,
  startUdpServer,
  TEST_ENGINE,
  udpLoopback,
  UdpTestClient,
  type UdpTestServer,
  until,
} from "./test_util.ts";

const PERMISSIONS = ["--allow-net", "--allow-read", "--allow-env"];
const TOKEN = "udp-test-token";

function udpConfig(
  servers: readonly UdpTestServer[],
  options: { udp?: string; pool?: string; top?: string } = {},
): string {
  return `${options.top ?? ""}listeners:
  - name: dns
    listen: udp://127.0.0.1:0
    pool: dns
${options.udp ? `    udp: ${options.udp}\n` : ""}pools:
  dns:
${options.pool ?? ""}    backends:
${servers.map((s) => `      - { address: 127.0.0.1:${s.port} }`).join("\n")}
`;
}

/** A metric's value from /metrics text, by its name and labels as written. */
function metric(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line === undefined ? NaN : Number(line.slice(series.length + 1));
}

type Running = Awaited<ReturnType<typeof startBalancerWithAdmin>>;

/**
 * A balancer process on `config` (admin API on), handed to `body`; it, the
 * servers and its folder are gone after, whatever happened.
 */
async function withBalancer(
  config: string,
  servers: readonly UdpTestServer[],
  body: (running: Running & { dir: string }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const running = await startBalancerWithAdmin(dir, config, {
      token: TOKEN,
      permissions: PERMISSIONS,
    });
    try {
      await body({ ...running, dir });
    } finally {
      await running.lb.close();
    }
  } finally {
    await Promise.all(servers.map((s) => s.close()));
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * /metrics once `series` reads `value`: a data-plane thread reports its
 * counts in batches, so the last may come a moment after the datagrams.
 */
async function metricsOnce(
  call: Running["call"],
  series: string,
  value: number,
): Promise<string> {
  let text = "";
  await until(
    async () => {
      text = (await call("GET", "/metrics")).body as string;
      return metric(text, series) === value;
    },
    `${series} ${value}`,
    500,
    20,
  );
  return text;
}

/** A new client's one question, answered: which server answered. */
async function askOnce(port: number, text: string): Promise<string> {
  const client = new UdpTestClient(port);
  try {
    const answer = await client.ask(text);
    assert.ok(answer.endsWith(` ${text}`), `${JSON.stringify(answer)} answers ${text}`);
    return serverOf(answer);
  } finally {
    await client.close();
  }
}

/** A UDP port on 127.0.0.1 that was free a moment ago. */
function freeUdpPort(): number {
  const socket = udpLoopback();
  const port = (socket.addr as Deno.NetAddr).port;
  socket.close();
  return port;
}

const DATAGRAMS_IN = 'lb_udp_datagrams_total{listener="dns",direction="in"}';
const DATAGRAMS_OUT = 'lb_udp_datagrams_total{listener="dns",direction="out"}';

Deno.test("udp process: DNS-style queries alternate between backends, each answered to its client", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2")];
  const config = udpConfig(servers, { udp: "{ responses: 1 }" });
  await withBalancer(config, servers, async ({ lb, call }) => {
    const answers: string[] = [];
    for (let i = 0; i < 6; i++) {
      const client = new UdpTestClient(lb.port);
      const answer = await client.ask(`query ${i}`);
      await client.close();
      assert.match(answer, new RegExp(`^\\[Server \\d\\] query ${i}$`));
      answers.push(serverOf(answer));
    }
    assert.deepEqual(answers, ["1", "2", "1", "2", "1", "2"]);
    const text = await metricsOnce(call, DATAGRAMS_OUT, 6);
    assert.equal(metric(text, DATAGRAMS_IN), 6);
    assert.equal(metric(text, 'lb_udp_bytes_total{listener="dns",direction="in"}'), 6 * 7);
    assert.equal(metric(text, 'lb_udp_flows_dropped_total{listener="dns",cause="no-backend"}'), 0);
    if (HAVE_PROMTOOL) {
      const { code, said } = await promtoolCheck(text);
      assert.equal(code, 0, said);
      assert.equal(said.trim(), "", said);
    }
    const backend1 = `backend="127.0.0.1:${servers[0]!.port}"`;
    assert.equal(
      metric(
        text,
        `lb_udp_backend_datagrams_total{listener="dns",pool="dns",${backend1},direction="in"}`,
      ),
      3,
    );
    // Each flow ended at its one answer, and says so in the access log.
    await metricsOnce(call, 'lb_connections_active{listener="dns",pool="dns"}', 0);
    await until(
      () => lb.stdout.filter((l) => l.includes("end=responses")).length === 6,
      "an access line per flow",
      500,
      20,
    );
  });
});

Deno.test("udp process: a flood from many sources is answered, with the flow table bounded", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2")];
  const config = udpConfig(servers, { udp: "{ max_sessions: 20 }" });
  await withBalancer(config, servers, async ({ lb, call }) => {
    const clients = Array.from({ length: 100 }, () => new UdpTestClient(lb.port));
    try {
      // 100 flows through a table of 20, ten at once: the flows waiting for
      // their answer are always the most recent, so only answered ones go.
      for (let wave = 0; wave < 10; wave++) {
        const group = clients.slice(wave * 10, wave * 10 + 10);
        const answers = await Promise.all(group.map((client, i) => client.ask(`from ${i}`)));
        answers.forEach((answer, i) =>
          assert.match(answer, new RegExp(`^\\[Server \\d\\] from ${i}$`))
        );
      }
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
    const text = await metricsOnce(call, DATAGRAMS_OUT, 100);
    const active = metric(text, 'lb_udp_flows_active{listener="dns"}');
    assert.ok(active <= 20, `at most 20 flows at once, got ${active}`);
    const evicted = metric(text, 'lb_udp_flows_dropped_total{listener="dns",cause="table-full"}');
    assert.equal(active + evicted, 100, "each flow is open or was dropped for room");
  });
});

Deno.test("udp process: a backend that fails its UDP check takes no flows", async () => {
  const encode = (text: string) => new TextEncoder().encode(text);
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  // The check sends "ping" and expects "pong". Server 2 answers it wrongly
  // (not silence: a failure that needs no timeout); both answer data.
  const healthy = startUdpServer(
    "1",
    (bytes) =>
      decode(bytes) === "ping" ? [encode("pong")] : [encode(`[Server 1] ${decode(bytes)}`)],
  );
  const failing = startUdpServer(
    "2",
    (bytes) =>
      decode(bytes) === "ping" ? [encode("nope")] : [encode(`[Server 2] ${decode(bytes)}`)],
  );
  const health = '    health:\n      check: { send: "70696e67", expect: "706f6e67" }\n' +
    "      interval_ms: 50\n      timeout_ms: 2000\n      fall: 1\n      rise: 1\n";
  const config = udpConfig([healthy, failing], { pool: health, udp: "{ responses: 1 }" });
  await withBalancer(config, [healthy, failing], async ({ lb, backends }) => {
    await until(
      async () => {
        const states = (await backends("dns")).map((b) => b.state);
        return states[0] === "up" && states[1] === "down";
      },
      "server 2 marked down by its UDP check",
      1000,
      20,
    );
    // Data-plane threads hear of the change a moment after the main thread.
    await until(async () => await askOnce(lb.port, "first") === "1", "a flow on server 1", 200, 20);
    for (let i = 0; i < 6; i++) assert.equal(await askOnce(lb.port, `q${i}`), "1");
  });
});

Deno.test("udp process: a reload moves new flows to a new backend set and keeps the listener", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2")];
  const config = udpConfig([servers[0]!], { udp: "{ responses: 1 }" });
  await withBalancer(config, servers, async ({ lb, dir }) => {
    assert.equal(await askOnce(lb.port, "before"), "1");
    const file = [...Deno.readDirSync(dir)].find((e) => e.name.startsWith("lb-"))!.name;
    const text = Deno.readTextFileSync(`${dir}/${file}`)
      .replace(`127.0.0.1:${servers[0]!.port}`, `127.0.0.1:${servers[1]!.port}`);
    Deno.writeTextFileSync(`${dir}/${file}`, text);
    lb.kill("SIGHUP");
    await lb.waitForLine("stderr", /reload/);
    await until(
      async () => await askOnce(lb.port, "after") === "2",
      "new flows go to server 2",
      200,
      20,
    );
  });
});

Deno.test("udp process: a UDP listener a reload removes closes at once, and the next reload can bind its port again", async () => {
  const servers = [startUdpServer("1")];
  const port = freeUdpPort();
  const withListener = udpConfig(servers).replace("udp://127.0.0.1:0", `udp://127.0.0.1:${port}`);
  // The TCP listener keeps the process up while the UDP one comes and goes.
  const tcpOnly = `listeners:\n  - { name: t, listen: "127.0.0.1:0", pool: t }\n` +
    `pools:\n  t: { backends: [{ address: "127.0.0.1:9" }] }\n`;
  const both = withListener.replace(
    "listeners:\n",
    `listeners:\n  - { name: t, listen: "127.0.0.1:0", pool: t }\n`,
  )
    .replace("pools:\n", `pools:\n  t: { backends: [{ address: "127.0.0.1:9" }] }\n`);
  await withBalancer(both + "drain_timeout_ms: 60000\n", servers, async ({ lb, dir }) => {
    const file = [...Deno.readDirSync(dir)].find((e) => e.name.startsWith("lb-"))!.name;
    const admin = (await Deno.readTextFile(`${dir}/${file}`)).split("\n").filter((l) =>
      l.startsWith("admin:")
    ).join("\n");
    const client = new UdpTestClient(port);
    assert.equal(serverOf(await client.ask("open")), "1");
    await Deno.writeTextFile(`${dir}/${file}`, `${tcpOnly}drain_timeout_ms: 60000\n${admin}\n`);
    lb.kill("SIGHUP");
    await lb.waitForLine("stderr", /reloaded/);
    await Deno.writeTextFile(`${dir}/${file}`, `${both}drain_timeout_ms: 60000\n${admin}\n`);
    lb.kill("SIGHUP");
    await until(
      () => lb.stderr.filter((l) => /reloaded/.test(l)).length === 2,
      "the second reload",
    );
    assert.ok(!lb.stderr.some((l) => /EADDRINUSE|in use/.test(l)), lb.stderr.join("\n"));
    assert.equal(serverOf(await client.ask("again")), "1", "served on the same port again");
    await client.close();
  });
});

Deno.test("udp process: the admin API adds and removes UDP backends; a host name is refused, saying why", async () => {
  const servers = [startUdpServer("1"), startUdpServer("2")];
  const config = udpConfig([servers[0]!], { udp: "{ responses: 1 }" });
  await withBalancer(config, servers, async ({ lb, call }) => {
    assert.equal(await askOnce(lb.port, "first"), "1"); // server 1 has counts now
    const named = await call("POST", "/api/pools/dns/backends", { address: "localhost:5301" });
    assert.equal(named.status, 400);
    assert.match(named.body.error, /a UDP backend needs an IP address/);
    const added = await call("POST", "/api/pools/dns/backends", {
      address: `127.0.0.1:${servers[1]!.port}`,
    });
    assert.equal(added.status, 200, JSON.stringify(added.body));
    const removed = await call(
      "DELETE",
      `/api/pools/dns/backends/${encodeURIComponent(`127.0.0.1:${servers[0]!.port}`)}`,
    );
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    await until(async () => await askOnce(lb.port, "now") === "2", "flows go to server 2", 200, 20);
    // A backend that left the pool is no longer shown per backend; the one in it is.
    const series = (port: number) =>
      `lb_udp_backend_datagrams_total{listener="dns",pool="dns",backend="127.0.0.1:${port}",direction="in"}`;
    await until(
      async () => {
        const text = (await call("GET", "/metrics")).body as string;
        return metric(text, series(servers[1]!.port)) >= 1 &&
          Number.isNaN(metric(text, series(servers[0]!.port)));
      },
      "server 2's series shown, server 1's gone",
      500,
      20,
    );
  });
});

Deno.test({
  name: "udp process: with --threads 2, every client's flow is answered on its own backend",
  ignore: TEST_ENGINE !== "epoll",
  fn: async () => {
    const servers = [startUdpServer("1"), startUdpServer("2")];
    const config = udpConfig(servers, { top: "threads: 2\n" });
    await withBalancer(config, servers, async ({ lb, call }) => {
      const clients = Array.from({ length: 40 }, () => new UdpTestClient(lb.port));
      try {
        const first = await Promise.all(clients.map((c, i) => c.ask(`hello ${i}`)));
        for (let round = 0; round < 3; round++) {
          const again = await Promise.all(clients.map((c, i) => c.ask(`again ${i}`)));
          again.forEach((answer, i) => {
            assert.equal(serverOf(answer), serverOf(first[i]!), "a flow stays on its backend");
            assert.ok(answer.endsWith(`again ${i}`));
          });
        }
      } finally {
        await Promise.all(clients.map((c) => c.close()));
      }
      await metricsOnce(call, DATAGRAMS_IN, 160); // both threads' counts, summed
    });
  },
});

Deno.test("udp config: what a UDP listener cannot take is named, with what to do instead", async () => {
  const cases: [string, RegExp][] = [
    [
      "listeners: [{ name: a, listen: 'udp://127.0.0.1:5353', pool: p, tls: { cert: c, key: k } }]\n" +
      "pools: { p: { backends: [{ address: 127.0.0.1:5301 }] } }\n",
      /listeners\[0\]\.tls: tls is for TCP listeners/,
    ],
    [
      "listeners: [{ name: a, listen: '127.0.0.1:5353', pool: p, udp: { responses: 1 } }]\n" +
      "pools: { p: { backends: [{ address: 127.0.0.1:5301 }] } }\n",
      /listeners\[0\]\.udp: udp settings on a TCP listener/,
    ],
    [
      "listeners: [{ name: a, listen: 'udp://127.0.0.1:5353', pool: p }]\n" +
      "pools: { p: { send_proxy: v1, backends: [{ address: 127.0.0.1:5301 }] } }\n",
      /pools\.p\.send_proxy: PROXY v1 has no UDP form/,
    ],
    [
      "listeners: [{ name: a, listen: 'udp://127.0.0.1:5353', pool: p }]\n" +
      "pools: { p: { health: { check: tcp }, backends: [{ address: 127.0.0.1:5301 }] } }\n",
      /pools\.p\.health\.check: a UDP pool is checked over UDP/,
    ],
    [
      "listeners:\n  - { name: a, listen: 'udp://127.0.0.1:5353', pool: p }\n" +
      "  - { name: b, listen: '127.0.0.1:5353', pool: p }\n" +
      "pools: { p: { backends: [{ address: 127.0.0.1:5301 }] } }\n",
      /listeners\[1\]\.pool: pool p already serves UDP listener a/,
    ],
    [
      "listeners: [{ name: a, listen: 'udp://127.0.0.1:5353', pool: p }]\n" +
      "pools: { p: { backends: [{ address: localhost:5301 }] } }\n",
      /pools\.p\.backends\[0\]\.address: a UDP backend needs an IP address/,
    ],
    [
      "listeners: [{ name: a, listen: 'udp://127.0.0.1:5353', pool: p, udp: { max_sessions: 0 } }]\n" +
      "pools: { p: { backends: [{ address: 127.0.0.1:5301 }] } }\n",
      /listeners\[0\]\.udp\.max_sessions: expected a whole number 1-10000000/,
    ],
    [
      "listeners: [{ name: a, listen: 'udp://127.0.0.1:5353', pool: p, maxconn: 5 }]\n" +
      "pools: { p: { backends: [{ address: 127.0.0.1:5301 }] } }\n",
      /listeners\[0\]\.maxconn: maxconn is for TCP listeners/,
    ],
    [
      "listeners: [{ name: a, listen: 'udp://127.0.0.1:5353', pool: p }]\n" +
      "pools: { p: { timeouts: { connect_ms: 100 }, backends: [{ address: 127.0.0.1:5301 }] } }\n",
      /pools\.p\.timeouts\.connect_ms: timeouts\.connect_ms is for TCP connections; pool p serves UDP/,
    ],
  ];
  const dir = await Deno.makeTempDir();
  const check = async (config: string) => {
    const file = `${dir}/${crypto.randomUUID()}.yaml`;
    await Deno.writeTextFile(file, config);
    return await checkConfigFile(file);
  };
  for (const [config, expected] of cases) {
    const { code, said } = await check(config);
    assert.equal(code, 1, said);
    assert.match(said, expected);
  }
  // A TCP and a UDP listener on the same port are two sockets, and fine.
  const both = "listeners:\n  - { name: a, listen: 'udp://127.0.0.1:5353', pool: u }\n" +
    "  - { name: b, listen: '127.0.0.1:5353', pool: t }\n" +
    "pools:\n  u: { backends: [{ address: 127.0.0.1:5301 }] }\n" +
    "  t: { backends: [{ address: 127.0.0.1:5301 }] }\n";
  const { code, said } = await check(both);
  assert.equal(code, 0, said);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("examples/udp.yaml passes --check", async () => {
  const { code, said } = await checkConfigFile("examples/udp.yaml");
  assert.equal(code, 0, said);
  assert.match(said, /dns on udp:\/\/127\.0\.0\.1:5353/);
});
