/**
 * The front door, end to end on a balancer process (both engines): PROXY
 * headers accepted and sent, source ACLs, per-source limits, and routes by
 * SNI, ALPN, source and prefix.
 */

import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { Buffer } from "node:buffer";
import { parseProxyHeader } from "./proxy_protocol.ts";
import {
  closeQuietly,
  exchange,
  exchangeFrom,
  runScript,
  startBalancerProcess,
  startServer,
  startTaggedServer,
  type TestServer,
  writeAll,
} from "./test_util.ts";

const encoder = new TextEncoder();

/**
 * Waits until `check` holds: the balancer's counts and access lines follow a
 * connection by up to a batch (100 ms with data-plane threads). Bounded.
 */
async function eventually(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`never saw ${what}`);
}
const decoder = new TextDecoder();
const PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-env=LB_ADMIN_TOKEN,LOG_TOKENS,LOG_STREAM",
];

/** A balancer on `yaml` (listeners on port 0); the ports in the listeners' order. */
async function balancerOn(yaml: string) {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/lb.yaml`, yaml);
  const lb = await startBalancerProcess(["--config", `${dir}/lb.yaml`, "--admin", "0"], {
    permissions: PERMISSIONS,
    listen: false,
  });
  const count = yaml.match(/listen: "127\.0\.0\.1:0"/g)!.length;
  await eventually(
    () => lb.stderr.filter((line) => / listening on /.test(line)).length >= count,
    "every listener",
  );
  await lb.waitForLine("stderr", /admin API on /);
  const ports = lb.stderr.filter((line) => / listening on /.test(line)).map((line) =>
    Number(/:(\d+);/.exec(line)![1])
  );
  const admin = /(http:\/\/\S+) /.exec(lb.stderr.find((l) => /admin API on /.test(l))!)![1]!;
  return {
    lb,
    ports,
    /** Rewrites the file and reloads it; resolves once the reload is applied. */
    async reload(next: string): Promise<void> {
      const before = lb.stderr.filter((line) => /reloaded \(SIGHUP\)/.test(line)).length;
      await Deno.writeTextFile(`${dir}/lb.yaml`, next);
      lb.kill("SIGHUP");
      await eventually(
        () => lb.stderr.filter((line) => /reloaded \(SIGHUP\)/.test(line)).length > before,
        "the reload applied",
      );
    },
    async metric(pattern: RegExp): Promise<string[]> {
      const text = await (await fetch(`${admin}/metrics`)).text();
      return text.split("\n").filter((line) => pattern.test(line));
    },
    async close() {
      await lb.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/**
 * A backend that reads a PROXY header, answers `source=… destination=…
 * rest=…` with what followed it, and closes.
 */
function proxyReadingServer(): TestServer {
  return startServer(async (conn) => {
    const buffer = new Uint8Array(4096);
    let filled = 0;
    while (true) {
      const n = await conn.read(buffer.subarray(filled));
      if (n === null) break;
      filled += n;
    }
    const parsed = parseProxyHeader(buffer.subarray(0, filled));
    const answer = parsed.state !== "done" ? `no header (${parsed.state})` : [
      `v${parsed.header.version}`,
      `source=${parsed.header.source?.hostname}:${parsed.header.source?.port}`,
      `destination=${parsed.header.destination?.hostname}:${parsed.header.destination?.port}`,
      `rest=${decoder.decode(buffer.subarray(parsed.length, filled))}`,
    ].join(" ");
    await writeAll(conn, encoder.encode(answer));
  });
}

/** A backend that answers its `id` to the first bytes it gets, then closes. */
function firstBytesServer(id: string): TestServer {
  return startServer(async (conn) => {
    await conn.read(new Uint8Array(65536));
    await writeAll(conn, encoder.encode(id));
  });
}

/** Sends raw `bytes` (without half-closing) and returns all that comes back. */
async function sendRaw(port: number, bytes: Uint8Array): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(conn, bytes);
    const chunks: Uint8Array[] = [];
    const buffer = new Uint8Array(4096);
    while (true) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) break;
      chunks.push(buffer.slice(0, n));
    }
    return decoder.decode(Buffer.concat(chunks));
  } finally {
    closeQuietly(conn);
  }
}

/** The ClientHello a real TLS client (node:tls) sends for `servername`, offering `alpn`. */
async function clientHello(servername: string, alpn: string[]): Promise<Uint8Array> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = tls.connect({
    host: "127.0.0.1",
    port: listener.addr.port,
    servername,
    ALPNProtocols: alpn,
  });
  const closed = new Promise((resolve) => client.once("close", resolve));
  client.on("error", () => {});
  const conn = await listener.accept();
  const buffer = new Uint8Array(16384);
  const n = (await conn.read(buffer)) ?? 0;
  conn.close();
  listener.close();
  client.destroy();
  await closed;
  return buffer.slice(0, n);
}

/** Holds a connection from `localAddress` that the backend has answered. */
function holdFrom(localAddress: string, port: number): Promise<net.Socket | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress });
    socket.once("data", () => resolve(socket));
    socket.once("close", () => resolve(undefined));
    socket.on("error", () => {});
    socket.once("connect", () => socket.write("hi\n"));
  });
}

Deno.test("PROXY headers: v1 and v2 accepted, the real client sent on as v2; a bad or missing one is closed and counted", async () => {
  const backend = proxyReadingServer();
  const lb = await balancerOn(`
listeners:
  - { name: edge, listen: "127.0.0.1:0", pool: p, accept_proxy: true, peek_timeout_ms: 300 }
pools:
  p: { send_proxy: v2, backends: [{ address: "127.0.0.1:${backend.port}" }] }
`);
  try {
    const [port] = lb.ports as [number];
    const v1 = await exchange(port, "PROXY TCP4 192.0.2.1 198.51.100.7 5555 443\r\nhello");
    assert.equal(v1, "v2 source=192.0.2.1:5555 destination=198.51.100.7:443 rest=hello");
    const v6 = await exchange(port, "PROXY TCP6 2001:db8::1 2001:db8::2 40000 8443\r\nbye");
    assert.equal(v6, "v2 source=2001:db8::1:40000 destination=2001:db8::2:8443 rest=bye");
    // Nothing reaches a backend for these: closed at once, or at the peek timeout.
    assert.equal(await exchange(port, "GET / HTTP/1.1\r\n\r\n"), "");
    assert.equal(await sendRaw(port, encoder.encode("PROXY TCP4 1.2")), "");
    await eventually(
      async () => (await lb.metric(/^lb_rejected_total\{.*"proxy-header"\} 2$/)).length === 1,
      "two proxy-header rejections counted",
    );
    await eventually(
      () => lb.lb.stdout.filter((line) => /end=proxy-header/.test(line)).length === 2,
      "two access lines with end=proxy-header",
    );
    // Said on stderr with why, once a second at most (the second waits for the next).
    await lb.lb.waitForLine(
      "stderr",
      /listener edge: closed 1 client\(s\) before any dial: proxy-header; the last, 127\.0\.0\.1:\d+: not a PROXY header \(starts "GET /,
    );
    await eventually(
      () => lb.lb.stdout.some((l) => /client=192\.0\.2\.1:5555 .*end=client-fin/.test(l)),
      "the access line naming the client from its PROXY header",
    );
  } finally {
    await lb.close();
    await backend.close();
  }
});

Deno.test("send_proxy v1 per backend: the client's own address, and the address it connected to", async () => {
  const backend = proxyReadingServer();
  const lb = await balancerOn(`
listeners:
  - { name: plain, listen: "127.0.0.1:0", pool: p }
pools:
  p: { backends: [{ address: "127.0.0.1:${backend.port}", send_proxy: v1 }] }
`);
  try {
    const [port] = lb.ports as [number];
    const answer = await exchangeFrom("127.0.0.7", port, "data");
    assert.match(
      answer,
      new RegExp(`^v1 source=127\\.0\\.0\\.7:\\d+ destination=127\\.0\\.0\\.1:${port} rest=data$`),
    );
  } finally {
    await lb.close();
    await backend.close();
  }
});

Deno.test("allow, deny and per-source maxconn decide before any dial, by source address", async () => {
  const backend = startTaggedServer("1");
  const lb = await balancerOn(`
listeners:
  - name: guarded
    listen: "127.0.0.1:0"
    pool: p
    allow: [127.0.0.0/8]
    deny: [127.0.0.3/32]
    per_source: { maxconn: 2 }
pools:
  p: { backends: [{ address: "127.0.0.1:${backend.port}" }] }
`);
  const held: net.Socket[] = [];
  try {
    const [port] = lb.ports as [number];
    assert.equal(await exchangeFrom("127.0.0.3", port, "x\n"), "");
    for (let i = 0; i < 2; i++) {
      const socket = await holdFrom("127.0.0.2", port);
      assert.ok(socket, `held connection ${i + 1} answered`);
      held.push(socket);
    }
    assert.equal(await exchangeFrom("127.0.0.2", port, "x\n"), "");
    assert.equal(await exchangeFrom("127.0.0.4", port, "x\n"), "[Server 1] x\n");
    await eventually(
      async () =>
        (await lb.metric(
          /^lb_rejected_total\{listener="guarded",reason="(acl|per-source-maxconn)"\} 1$/,
        )).length === 2,
      "one acl and one per-source-maxconn rejection counted",
    );
    const counts = await lb.metric(
      /^lb_rejected_total\{listener="guarded",reason="(acl|per-source-maxconn)"\}/,
    );
    assert.deepEqual(counts.map((l) => l.split(" ")[1]).sort(), ["1", "1"]);
    // One ends: that source may connect again.
    held.pop()!.destroy();
    await eventually(
      async () => (await exchangeFrom("127.0.0.2", port, "y\n")) === "[Server 1] y\n",
      "room again for 127.0.0.2",
    );
  } finally {
    for (const socket of held) socket.destroy();
    await lb.close();
    await backend.close();
  }
});

Deno.test("per-source rate: a burst, then refused until the bucket refills", async () => {
  const backend = startTaggedServer("1");
  const lb = await balancerOn(`
listeners:
  - { name: rated, listen: "127.0.0.1:0", pool: p, per_source: { rate_per_s: 1, burst: 2 } }
pools:
  p: { backends: [{ address: "127.0.0.1:${backend.port}" }] }
`);
  try {
    const [port] = lb.ports as [number];
    // Three at once, so all three arrive inside the bucket's one second
    // even on a busy machine: two are served, one refused.
    const answers = await Promise.all(
      ["a\n", "a\n", "a\n"].map((text) => exchangeFrom("127.0.0.8", port, text)),
    );
    assert.deepEqual(answers.sort(), ["", "[Server 1] a\n", "[Server 1] a\n"]);
    // Another source has its own bucket.
    assert.equal(await exchangeFrom("127.0.0.9", port, "d\n"), "[Server 1] d\n");
    await eventually(
      () => lb.lb.stdout.some((line) => /client=127\.0\.0\.8:\d+ .*end=per-source-rate/.test(line)),
      "an access line with end=per-source-rate",
    );
  } finally {
    await lb.close();
    await backend.close();
  }
});

Deno.test("routes: by SNI (exact and *.), ALPN, source and prefix, first match wins; bytes arrive unchanged", async () => {
  const names = ["api", "web", "h2", "internal", "ssh", "fallback"];
  const servers = names.map((name) => firstBytesServer(name));
  const pools = names.map((name, i) =>
    `  ${name}: { backends: [{ address: "127.0.0.1:${servers[i]!.port}" }] }`
  ).join("\n");
  const lb = await balancerOn(`
listeners:
  - name: mixed
    listen: "127.0.0.1:0"
    pool: fallback
    routes:
      - { match: { sni: api.example.com }, pool: api }
      - { match: { sni: "*.example.com" }, pool: web }
      - { match: { alpn: h2 }, pool: h2 }
      - { match: { source: [127.0.0.5/32] }, pool: internal }
      - { match: { prefix: "SSH-" }, pool: ssh }
  - name: strict
    listen: "127.0.0.1:0"
    routes:
      - { match: { prefix: "SSH-" }, pool: ssh }
pools:
${pools}
`);
  try {
    const [mixed, strict] = lb.ports as [number, number];
    assert.equal(await sendRaw(mixed, await clientHello("api.example.com", ["h2"])), "api");
    assert.equal(await sendRaw(mixed, await clientHello("www.example.com", ["h2"])), "web");
    // One label only: a.b.example.com is not *.example.com.
    assert.equal(await sendRaw(mixed, await clientHello("a.b.example.com", ["h2"])), "h2");
    assert.equal(await sendRaw(mixed, await clientHello("other.test", ["http/1.1"])), "fallback");
    assert.equal(await exchangeFrom("127.0.0.5", mixed, "anything"), "internal");
    assert.equal(await sendRaw(mixed, encoder.encode("SSH-2.0-test\r\n")), "ssh");
    assert.equal(await sendRaw(mixed, encoder.encode("GET / HTTP/1.1\r\n\r\n")), "fallback");
    // No pool of its own: what no route matches is closed.
    assert.equal(await sendRaw(strict, encoder.encode("SSH-2.0-x\r\n")), "ssh");
    assert.equal(await sendRaw(strict, encoder.encode("HELO\r\n")), "");
    await eventually(
      async () =>
        (await lb.metric(/^lb_rejected_total\{listener="strict",reason="no-route"\} 1$/)).length ===
          1,
      "no-route counted",
    );
  } finally {
    await lb.close();
    await Promise.all(servers.map((server) => server.close()));
  }
});

Deno.test("examples/edge.yaml, which uses every key, passes --check", async () => {
  const { code, stdout, stderr } = await runScript("load_balancer.ts", [
    "--config",
    "examples/edge.yaml",
    "--check",
  ], { permissions: ["--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"] });
  assert.equal(code, 0, stderr);
  assert.match(
    stdout + stderr,
    /valid: edge on 127\.0\.0\.1:8443 → api \| web \| ssh; behind-lb on 127\.0\.0\.1:8444 → web/,
  );
});

Deno.test("bad edge keys are named with the value and what was expected", async () => {
  const { code, stderr } = await runScript("load_balancer.ts", [
    "--allow",
    "10.0.0.1/8",
    "--send-proxy",
    "v3",
    "--check",
  ], { permissions: ["--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"] });
  assert.equal(code, 2, stderr);
  assert.match(stderr, /--allow 10\.0\.0\.1\/8: .*host bits are set beyond the \/8 prefix/);
  assert.match(stderr, /--send-proxy v3: expected off, v1 or v2/);
});

Deno.test("accept_proxy_from: only the peers named may send a PROXY header; others are closed", async () => {
  const backend = proxyReadingServer();
  const lb = await balancerOn(`
listeners:
  - name: edge
    listen: "127.0.0.1:0"
    pool: p
    accept_proxy: true
    accept_proxy_from: [127.0.0.2/32]
pools:
  p: { send_proxy: v1, backends: [{ address: "127.0.0.1:${backend.port}" }] }
`);
  try {
    const [port] = lb.ports as [number];
    const header = "PROXY TCP4 203.0.113.9 198.51.100.1 4000 443\r\nx";
    assert.equal(
      await exchangeFrom("127.0.0.2", port, header),
      "v1 source=203.0.113.9:4000 destination=198.51.100.1:443 rest=x",
    );
    assert.equal(await exchangeFrom("127.0.0.3", port, header), "");
    await eventually(
      async () =>
        (await lb.metric(/^lb_rejected_total\{listener="edge",reason="proxy-not-allowed"\} 1$/))
          .length === 1,
      "one proxy-not-allowed rejection counted",
    );
  } finally {
    await lb.close();
    await backend.close();
  }
});

Deno.test("a reload applies new ACLs to new clients at once", async () => {
  const backend = startTaggedServer("1");
  const yaml = (deny: string) => `
listeners:
  - { name: l, listen: "127.0.0.1:0", pool: p, deny: [${deny}] }
pools:
  p: { backends: [{ address: "127.0.0.1:${backend.port}" }] }
`;
  const lb = await balancerOn(yaml("192.0.2.0/24"));
  try {
    const [port] = lb.ports as [number];
    assert.equal(await exchangeFrom("127.0.0.4", port, "a\n"), "[Server 1] a\n");
    await lb.reload(yaml("192.0.2.0/24, 127.0.0.4/32"));
    assert.equal(await exchangeFrom("127.0.0.4", port, "b\n"), "");
    assert.equal(await exchangeFrom("127.0.0.5", port, "c\n"), "[Server 1] c\n");
  } finally {
    await lb.close();
    await backend.close();
  }
});

Deno.test("accept_proxy_from without accept_proxy, a route without match, and one TLS flag alone are named", async () => {
  const dir = await Deno.makeTempDir();
  const permissions = ["--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"];
  const check = async (listener: string) => {
    await Deno.writeTextFile(
      `${dir}/lb.yaml`,
      `listeners:\n  - ${listener}\npools:\n  p: { backends: [{ address: "127.0.0.1:5001" }] }\n`,
    );
    return await runScript("load_balancer.ts", ["--config", `${dir}/lb.yaml`, "--check"], {
      permissions,
    });
  };
  try {
    const proxyFrom = await check(
      `{ name: a, listen: "127.0.0.1:0", pool: p, accept_proxy_from: [127.0.0.0/8] }`,
    );
    assert.equal(proxyFrom.code, 1, proxyFrom.stderr);
    assert.match(
      proxyFrom.stderr,
      /listeners\[0\]\.accept_proxy_from: given without accept_proxy: true/,
    );
    const noMatch = await check(
      `{ name: b, listen: "127.0.0.1:0", pool: p, routes: [{ pool: p }] }`,
    );
    assert.equal(noMatch.code, 1, noMatch.stderr);
    assert.match(
      noMatch.stderr,
      /listeners\[0\]\.routes\[0\]\.match: .*expected \{ sni, alpn, source, prefix or module \}/,
    );
    const flag = await runScript("load_balancer.ts", ["--tls-cert", "c.pem", "--check"], {
      permissions,
    });
    assert.equal(flag.code, 2, flag.stderr);
    assert.match(flag.stderr, /--tls-cert: needs --tls-key FILE too/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
