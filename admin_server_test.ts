/** The admin API's own HTTP server: limits, deadlines, and what each refusal looks like. */

import assert from "node:assert/strict";
import { AdminServer, type AdminServerOptions } from "./admin_server.ts";
import { createAdminHandler } from "./admin.ts";
import {
  connectLoopback,
  listenLoopback,
  readAll,
  startBalancer,
  startTaggedServer,
  until,
  writeAll,
} from "./test_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function startAdmin(options: Partial<AdminServerOptions> = {}): AdminServer {
  return new AdminServer({
    listener: listenLoopback(),
    handler: (request, peer) =>
      new Response(`${request.method} ${new URL(request.url).pathname} from ${peer}\n`),
    ...options,
  });
}

/** Sends `request` as raw bytes and reads the whole answer. */
async function raw(port: number, request: string | Uint8Array): Promise<string> {
  const conn = await connectLoopback(port);
  try {
    await writeAll(conn, typeof request === "string" ? encoder.encode(request) : request);
    // Sent: what the server reads after this is the end of the request.
    await conn.closeWrite();
    return decoder.decode(await readAll(conn));
  } finally {
    conn.close();
  }
}

/** Resolves once the server has closed `conn` (a read ends or fails). */
async function closedByServer(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(1024);
  try {
    while ((await conn.read(buffer)) !== null) {
      // Drain whatever it sent first.
    }
  } catch {
    // A reset counts as closed.
  }
}

Deno.test("admin server: answers one request per connection, with its length, then closes", async () => {
  const server = startAdmin();
  try {
    const answer = await raw(server.addr.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(answer, /\r\nconnection: close\r\n/);
    const [, body] = answer.split("\r\n\r\n");
    assert.match(body!, /^GET \/metrics from 127\.0\.0\.1:\d+\n$/);
    assert.match(answer, new RegExp(`\r\ncontent-length: ${body!.length}\r\n`));
  } finally {
    await server.close();
  }
});

Deno.test("admin server: HEAD gets GET's headers and length, and no body", async () => {
  const server = startAdmin();
  try {
    const answer = await raw(server.addr.port, "HEAD /metrics HTTP/1.1\r\n\r\n");
    const [head, body] = answer.split("\r\n\r\n");
    assert.match(head!, /^HTTP\/1\.1 200 OK/);
    assert.match(head!, /content-length: [1-9]\d*/);
    assert.equal(body, "");
  } finally {
    await server.close();
  }
});

Deno.test("admin server: a client that dribbles its headers is closed at the header deadline", async () => {
  const server = startAdmin({ headerTimeoutMs: 300 });
  const conn = await connectLoopback(server.addr.port);
  try {
    // One byte, then nothing more: the server, not the client, ends it.
    await writeAll(conn, encoder.encode("G"));
    await closedByServer(conn);
    assert.equal(server.connections, 0);
  } finally {
    conn.close();
    await server.close();
  }
});

Deno.test("admin server: a body shorter than its Content-Length is closed at the body deadline, no trace", async () => {
  const server = startAdmin({ bodyTimeoutMs: 300 });
  const conn = await connectLoopback(server.addr.port);
  try {
    await writeAll(conn, encoder.encode("POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"));
    await closedByServer(conn);
  } finally {
    conn.close();
    await server.close();
  }
});

Deno.test("admin server: past the connection cap, 503 at once; half-sent requests do not pile up", async () => {
  const server = startAdmin({ maxConnections: 3, headerTimeoutMs: 60_000 });
  const held = await Promise.all([1, 2, 3].map(() => connectLoopback(server.addr.port)));
  try {
    for (const conn of held) await writeAll(conn, encoder.encode("GET /"));
    // The three are in; the fourth is refused without being read.
    await until(() => server.connections === 3, "the server holds all three", 2000, 10);
    const answer = await raw(server.addr.port, "GET /metrics HTTP/1.1\r\n\r\n");
    assert.match(answer, /^HTTP\/1\.1 503 Service Unavailable\r\n/);
  } finally {
    for (const conn of held) conn.close();
    await server.close();
  }
});

Deno.test("admin server: a body over the limit is 413, unread and never echoed", async () => {
  const server = startAdmin({ maxBodyBytes: 1024 });
  try {
    const answer = await raw(
      server.addr.port,
      `POST /api/backends/p/a/weight HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n${
        "x".repeat(2000)
      }`,
    );
    assert.match(answer, /^HTTP\/1\.1 413 Content Too Large\r\n/);
    assert.ok(answer.length < 400, `short: ${answer.length} bytes`);
    assert.doesNotMatch(answer, /xxxx/);
  } finally {
    await server.close();
  }
});

Deno.test("admin server: malformed requests are 400, over-long headers 431, chunked bodies 501", async () => {
  const server = startAdmin({ maxHeaderBytes: 256 });
  try {
    const cases: [string, RegExp][] = [
      ["NOT HTTP\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["GET /x HTTP/1.1\r\nno colon here\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", /^HTTP\/1\.1 400 /],
      [`GET /x HTTP/1.1\r\nX-Long: ${"a".repeat(400)}\r\n\r\n`, /^HTTP\/1\.1 431 /],
      ["POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", /^HTTP\/1\.1 501 /],
    ];
    for (const [request, status] of cases) {
      assert.match(await raw(server.addr.port, request), status, JSON.stringify(request));
    }
  } finally {
    await server.close();
  }
});

Deno.test("admin over the server: 'bearer' in any case, audit lines with the peer, 404 for unknown actions", async () => {
  const one = startTaggedServer("1");
  const lb = startBalancer([one.address]);
  const audit: string[] = [];
  const handler = createAdminHandler({
    view: { listeners: () => [lb.balancer], pools: () => [lb.pool], reloads: 0, reloadFailures: 0 },
    token: "t0k3n",
    audit: (line) => audit.push(line),
  });
  const server = startAdmin({ handler });
  const base = `http://127.0.0.1:${server.addr.port}`;
  const backend = encodeURIComponent(lb.backends[0]!.name);
  try {
    const post = async (path: string, authorization: string, body?: string) => {
      const response = await fetch(`${base}${path}`, {
        method: "POST",
        headers: { authorization },
        ...(body === undefined ? {} : { body }),
      });
      await response.body?.cancel();
      return response.status;
    };
    assert.equal(await post(`/api/backends/default/${backend}/drain`, "bearer t0k3n"), 200);
    assert.equal(await post(`/api/backends/default/${backend}/enable`, "BEARER  t0k3n"), 200);
    assert.equal(
      await post(`/api/backends/default/${backend}/weight`, "Bearer t0k3n", '{"weight":4}'),
      200,
    );
    assert.equal(await post(`/api/backends/default/${backend}/reboot`, "Bearer t0k3n"), 404);
    assert.equal(await post(`/api/backends/default/${backend}/drain`, "Basic t0k3n"), 401);
    const get = await fetch(`${base}/api/backends/default/${backend}/drain`);
    await get.body?.cancel();
    assert.equal(get.status, 405);
    assert.equal(get.headers.get("allow"), "POST");
    const head = await fetch(`${base}/api/backends`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(audit.length, 3, audit.join("\n"));
    const name = lb.backends[0]!.name.replace(/\./g, "\\.");
    assert.match(
      audit[0]!,
      new RegExp(
        `^admin: drain backend ${name} of pool default: up -> draining \\(by 127\\.0\\.0\\.1:\\d+\\)$`,
      ),
    );
    assert.match(audit[1]!, /enable .*: draining -> up \(by 127\.0\.0\.1:\d+\)$/);
    assert.match(
      audit[2]!,
      /^admin: weight of backend .* in pool default: 1 -> 4 \(by 127\.0\.0\.1:\d+\)$/,
    );
  } finally {
    await server.close();
    await lb.close();
    await one.close();
  }
});

Deno.test("admin: a bad weight body is named, cut short, never echoed whole", async () => {
  const one = startTaggedServer("1");
  const lb = startBalancer([one.address]);
  const handler = createAdminHandler({
    view: { listeners: () => [lb.balancer], pools: () => [lb.pool], reloads: 0, reloadFailures: 0 },
    token: "t",
  });
  try {
    const response = await handler(
      new Request(
        `http://admin/api/backends/default/${encodeURIComponent(lb.backends[0]!.name)}/weight`,
        {
          method: "POST",
          headers: { authorization: "Bearer t" },
          body: "y".repeat(50_000),
        },
      ),
    );
    assert.equal(response.status, 400);
    const text = await response.text();
    assert.ok(text.length < 200, `${text.length} bytes`);
    assert.equal(
      JSON.parse(text).error,
      `body must be JSON like {"weight": 5}, got "${"y".repeat(61)}..."`,
    );
  } finally {
    await lb.close();
    await one.close();
  }
});

Deno.test("POST /api/logs/reopen reopens the access log, with the token", async () => {
  let reopened = 0;
  const handler = createAdminHandler({
    view: { listeners: () => [], pools: () => [], reloads: 0, reloadFailures: 0 },
    token: "t",
    reopenLogs: () => (reopened++, "/var/log/lb/access.log"),
  });
  const post = (authorization?: string) =>
    handler(
      new Request("http://admin/api/logs/reopen", {
        method: "POST",
        headers: authorization === undefined ? {} : { authorization },
      }),
    );
  assert.equal((await post()).status, 401);
  assert.equal(reopened, 0);
  const response = await post("Bearer t");
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), { reopened: "/var/log/lb/access.log" });
  assert.equal(reopened, 1);
});

Deno.test("admin server: not HTTP at all is 400 at once; bare-LF lines are read; a short body is 400", async () => {
  const server = startAdmin();
  try {
    // A TLS ClientHello starts with 0x16: no need to wait for the header deadline.
    const tls = await raw(server.addr.port, new Uint8Array([0x16, 0x03, 0x01, 0x00, 0x05]));
    assert.match(tls, /^HTTP\/1\.1 400 Bad Request\r\n/);
    assert.match(
      await raw(server.addr.port, "GET /metrics HTTP/1.1\nHost: x\n\n"),
      /^HTTP\/1\.1 200 /,
    );
    // raw() half-closes after writing: the body ended short of its length.
    const short = await raw(server.addr.port, "POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    assert.match(short, /^HTTP\/1\.1 400 [^]*before its Content-Length/);
    const twice = await raw(
      server.addr.port,
      "POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert.match(twice, /^HTTP\/1\.1 400 [^]*expected one Content-Length header/);
  } finally {
    await server.close();
  }
});

Deno.test("admin: an unknown pool is named as such; weight bodies are strict; audit lines use the states", async () => {
  const one = startTaggedServer("1");
  const lb = startBalancer([one.address]);
  const audit: string[] = [];
  const handler = createAdminHandler({
    view: { listeners: () => [lb.balancer], pools: () => [lb.pool], reloads: 0, reloadFailures: 0 },
    token: "t",
    audit: (line) => audit.push(line),
    reopenLogs: () => {
      throw new Deno.errors.NotFound("No such file or directory (os error 2)");
    },
  });
  const post = (path: string, body?: string) =>
    handler(
      new Request(`http://admin${path}`, {
        method: "POST",
        headers: { authorization: "Bearer t" },
        ...(body === undefined ? {} : { body }),
      }),
      "127.0.0.1:4000",
    );
  const backend = encodeURIComponent(lb.backends[0]!.name);
  try {
    const noPool = await post(`/api/backends/nopool/${backend}/drain`);
    assert.equal(noPool.status, 404);
    assert.deepEqual(await noPool.json(), { error: 'no pool "nopool"' });
    const cases: [string, RegExp][] = [
      ['{"weight": 2, "wieght": 3}', /^unknown key\(s\) \["wieght"\]/],
      ['{"weight": 1e400}', /^weight: expected a whole number 1-256, got Infinity$/],
      ["[]", /^body must be JSON like \{"weight": 5\}, got \[\]$/],
    ];
    for (const [body, message] of cases) {
      const response = await post(`/api/backends/default/${backend}/weight`, body);
      assert.equal(response.status, 400, body);
      assert.match((await response.json()).error, message, body);
    }
    assert.equal((await post(`/api/backends/default/${backend}/drain`)).status, 200);
    assert.match(audit.at(-1)!, /: up -> draining \(by 127\.0\.0\.1:4000\)$/);
    const reopen = await post("/api/logs/reopen");
    assert.equal(reopen.status, 500);
    assert.match(
      audit.at(-1)!,
      /^admin: could not reopen the access log: NotFound: .* \(by 127\.0\.0\.1:4000\)$/,
    );
  } finally {
    await lb.close();
    await one.close();
  }
});

Deno.test("admin server: a client dribbling its headers a byte every 100 ms does not hold up another's answer", async () => {
  const server = startAdmin();
  const slow = await connectLoopback(server.addr.port);
  const request = encoder.encode("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  const most = 20; // bytes dribbled at most: short of the whole request
  let sent = 0;
  let stop = false;
  const firstByte = Promise.withResolvers<void>();
  const dribbling = (async () => {
    while (sent < most && !stop) {
      await writeAll(slow, request.subarray(sent, sent + 1));
      sent++;
      if (sent === 1) firstByte.resolve();
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  try {
    await firstByte.promise;
    await until(() => server.connections === 1, "the server holds the dribbling client");
    const answer = await raw(server.addr.port, "GET /api/backends HTTP/1.1\r\n\r\n");
    const sentWhenAnswered = sent;
    stop = true;
    await dribbling;
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nGET \/api\/backends from /);
    assert.ok(sentWhenAnswered < most, `answered after ${sentWhenAnswered} of ${most} bytes`);
    // The slow client was kept all along: the rest of its request is answered too.
    await writeAll(slow, request.subarray(sent));
    assert.match(decoder.decode(await readAll(slow)), /^HTTP\/1\.1 200 OK\r\n[^]*GET \/metrics /);
  } finally {
    stop = true;
    await dribbling;
    slow.close();
    await server.close();
  }
});

Deno.test("admin: every documented route answers every other method with 405 and an Allow header", async () => {
  const one = startTaggedServer("1");
  const lb = startBalancer([one.address]);
  const handler = createAdminHandler({
    view: { listeners: () => [lb.balancer], pools: () => [lb.pool], reloads: 0, reloadFailures: 0 },
    token: "t",
    reopenLogs: () => "(stdout)",
  });
  const server = startAdmin({ handler });
  const backend = `/api/backends/default/${encodeURIComponent(lb.backends[0]!.name)}`;
  const routes: [path: string, allow: string][] = [
    ["/metrics", "GET, HEAD"],
    ["/api/backends", "GET, HEAD"],
    [`${backend}/drain`, "POST"],
    [`${backend}/disable`, "POST"],
    [`${backend}/enable`, "POST"],
    [`${backend}/weight`, "POST"],
    ["/api/logs/reopen", "POST"],
  ];
  const methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
  try {
    for (const [path, allow] of routes) {
      for (const method of methods.filter((m) => !allow.split(", ").includes(m))) {
        const answer = await raw(
          server.addr.port,
          `${method} ${path} HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 0\r\n\r\n`,
        );
        const what = `${method} ${path}`;
        assert.match(answer, /^HTTP\/1\.1 405 Method Not Allowed\r\n/, what);
        assert.equal(/\r\nallow: ([^\r]*)\r\n/.exec(answer)?.[1], allow, what);
      }
    }
    assert.equal(lb.backends[0]!.state, "up", "no method but POST changed anything");
  } finally {
    await server.close();
    await lb.close();
    await one.close();
  }
});

Deno.test("admin server: the head ends at the first empty line, CRLF and bare LF in any mix", async () => {
  const server = startAdmin({
    handler: async (request) =>
      new Response(
        `${request.method} ${new URL(request.url).pathname} ${
          JSON.stringify(await request.text())
        }\n`,
      ),
  });
  try {
    // A bare-LF header line, then a CRLF empty line: no answer came before.
    assert.match(
      await raw(server.addr.port, "GET /metrics HTTP/1.1\r\nHost: x\n\r\n"),
      /^HTTP\/1\.1 200 [^]*\r\n\r\nGET \/metrics ""\n$/,
    );
    // A bare-LF head whose body holds CRLF CRLF: the body is not read as headers.
    assert.match(
      await raw(server.addr.port, "POST /x HTTP/1.1\nContent-Length: 6\n\nab\r\n\r\n"),
      /^HTTP\/1\.1 200 [^]*\r\n\r\nPOST \/x "ab\\r\\n\\r\\n"\n$/,
    );
  } finally {
    await server.close();
  }
});

Deno.test("admin server: a target starting with // is a path, not a host", async () => {
  const server = startAdmin();
  try {
    const answer = await raw(server.addr.port, "GET //x/metrics HTTP/1.1\r\n\r\n");
    assert.match(answer, /^HTTP\/1\.1 200 [^]*\r\n\r\nGET \/\/x\/metrics from /);
    // Once read as a host, these were 400s.
    assert.match(await raw(server.addr.port, "GET // HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 200 /);
    assert.match(await raw(server.addr.port, "GET //a%3Ab HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 200 /);
  } finally {
    await server.close();
  }
});
