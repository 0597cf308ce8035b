/**
 * Property tests for the admin API: the handler, called directly with any
 * request, always answers with a documented status and a JSON error that
 * names what was wrong, and changes nothing without the token; the server,
 * sent any bytes over a real loopback socket, answers with a valid status
 * line or closes, within its deadlines, and goes on serving. Seeds are
 * printed; `LB_FUZZ_SEED=N` replays one (see fuzzParameters).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { type AdminView, createAdminHandler, type ListenerStats } from "./admin.ts";
import { AdminServer } from "./admin_server.ts";
import { DURATION_BUCKETS, Histogram } from "./metrics.ts";
import { Backend, Pool } from "./pool.ts";
import { connectLoopback, FakeClock, fuzzParameters, listenLoopback, until } from "./test_util.ts";

const TOKEN = "s3cret-token";
const ADDRESSES = ["127.0.0.1:5001", "[::1]:5001", "db.internal:5432"];

/** Two pools, not started (no timers, no sockets), and a listener on each. */
function makeView(): AdminView {
  const pools = ["default", "web.1:x"].map((name) =>
    new Pool({
      name,
      backends: ADDRESSES.map((address) => {
        const [, host, port] = /^\[?(.*?)\]?:(\d+)$/.exec(address)!;
        return new Backend({ hostname: host!, port: Number(port) });
      }),
    })
  );
  const listeners: ListenerStats[] = pools.map((pool) => ({
    name: `to-${pool.name}`,
    pool,
    activeConnections: 0,
    durations: new Histogram(DURATION_BUCKETS),
    rejected: new Map(),
  }));
  return { listeners: () => listeners, pools: () => pools, reloads: 0, reloadFailures: 0 };
}

/** What a backend's admin-visible state is: compared before and after a refused change. */
function snapshot(view: AdminView): string {
  return JSON.stringify(
    view.pools().map((pool) => pool.backends.map((b) => [b.state, b.configuredWeight])),
  );
}

// --- Requests ----------------------------------------------------------------

const segment = fc.oneof(
  fc.constantFrom(
    "api",
    "backends",
    "metrics",
    "logs",
    "reopen",
    "default",
    "web.1%3Ax",
    "web.1:x",
    "nopool",
    "drain",
    "enable",
    "disable",
    "weight",
    ...ADDRESSES.map(encodeURIComponent),
    "127.0.0.1:5001",
    "%",
    "%ZZ",
    "%E0%A4%A",
    "%00",
    "%2F",
    "..",
    ".",
    "",
    "METRICS",
  ),
  fc.string({ maxLength: 12 }).map(encodeURIComponent),
  fc.string({ maxLength: 12 }),
);

const routes = fc.oneof(
  fc.constantFrom("/metrics", "/api/backends", "/api/logs/reopen"),
  fc.tuple(
    fc.constantFrom("default", "web.1%3Ax", "nopool", "%E0%A4%A"),
    fc.constantFrom(...ADDRESSES.map(encodeURIComponent), "127.0.0.1%3A9", "%ZZ"),
    fc.constantFrom("drain", "enable", "disable", "weight", "reboot"),
  ).map((parts) => `/api/backends/${parts.join("/")}`),
);

const path = fc.oneof(
  { weight: 6, arbitrary: routes },
  {
    weight: 2,
    arbitrary: fc.array(segment, { maxLength: 6 }).map((parts) => `/${parts.join("/")}`),
  },
).chain((path) =>
  fc.oneof(
    { weight: 4, arbitrary: fc.constant(path) },
    { weight: 1, arbitrary: fc.constantFrom(`${path}?x=1`, `${path}#frag`, `${path}/`) },
  )
);

// fetch's Request refuses CONNECT, TRACE and TRACK: the server's tests cover those.
const method = fc.oneof(
  { weight: 4, arbitrary: fc.constant("POST") },
  {
    weight: 2,
    arbitrary: fc.constantFrom("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "get", "post"),
  },
  { weight: 1, arbitrary: fc.stringMatching(/^[A-Za-z!#$%&'*+.^_`|~-]{1,10}$/) },
).filter((name) => !["CONNECT", "TRACE", "TRACK"].includes(name.toUpperCase()));

const authorization = fc.oneof(
  { weight: 3, arbitrary: fc.constant(`Bearer ${TOKEN}`) },
  fc.constantFrom(
    undefined,
    `bearer  ${TOKEN}`,
    `BEARER ${TOKEN} `,
    `Bearer ${TOKEN}x`,
    `Bearer  `,
    "Bearer",
    `Basic ${TOKEN}`,
    TOKEN,
    `Bearer ${TOKEN} extra`,
    `Bearer ${"x".repeat(5000)}`,
  ),
  fc.string({ maxLength: 40 }).map((text) => text.replace(/[\0\r\n]/g, "").trim()),
);

const weightBody = fc.oneof(
  fc.constantFrom(
    '{"weight": 5}',
    '{"weight": 1}',
    '{"weight": 256}',
    '{"weight": 0}',
    '{"weight": 257}',
    '{"weight": -0}',
    '{"weight": 1.5}',
    '{"weight": 1e400}',
    '{"weight": "5"}',
    '{"weight": null}',
    '{"weight": [5]}',
    '{"weight": 5, "__proto__": 1}',
    '{"weight": 5, "wieght": 3}',
    "{}",
    "[]",
    "null",
    "5",
    "",
    "{",
    "[".repeat(100_000),
    '"\u2028"',
  ),
  fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value)),
  fc.record({ weight: fc.oneof(fc.integer(), fc.double(), fc.string()) }).map((body) =>
    JSON.stringify(body)
  ),
  fc.string({ maxLength: 80 }),
);

const body = fc.oneof(
  fc.constant(undefined),
  weightBody,
  fc.uint8Array({ maxLength: 200 }),
);

const request = fc.record({
  method,
  path,
  authorization,
  contentType: fc.constantFrom(undefined, "application/json", "text/plain", "x/\u00ff"),
  body,
});

type RequestParts = typeof request extends fc.Arbitrary<infer T> ? T : never;

/** The Request for `parts`, or undefined when fetch itself refuses to build it. */
function build(parts: RequestParts): Request | undefined {
  const headers = new Headers();
  try {
    if (parts.authorization !== undefined) headers.set("authorization", parts.authorization);
    if (parts.contentType !== undefined) headers.set("content-type", parts.contentType);
    const canHaveBody = !["GET", "HEAD"].includes(parts.method.toUpperCase());
    return new Request(`http://admin${parts.path}`, {
      method: parts.method,
      headers,
      ...(canHaveBody && parts.body !== undefined ? { body: parts.body } : {}),
    });
  } catch {
    return undefined;
  }
}

/** The statuses the admin API documents. */
const STATUSES = new Set([200, 400, 401, 403, 404, 405]);

Deno.test("admin handler: any request gets a documented status and a JSON error naming the problem", async () => {
  await fc.assert(
    fc.asyncProperty(
      request,
      fc.constantFrom<"token" | "function" | "none">("token", "function", "none"),
      async (parts, tokenKind) => {
        const request = build(parts);
        fc.pre(request !== undefined);
        const view = makeView();
        const audit: string[] = [];
        const handler = createAdminHandler({
          view,
          token: tokenKind === "token" ? TOKEN : tokenKind === "function" ? () => TOKEN : undefined,
          audit: (line) => audit.push(line),
          reopenLogs: () => "/var/log/lb/access.log",
        });
        const before = snapshot(view);
        const response = await handler(request!, "127.0.0.1:4000");
        assert.ok(response instanceof Response);
        assert.ok(STATUSES.has(response.status), `status ${response.status}`);
        const url = new URL(request!.url);
        if (response.status === 200 && url.pathname === "/metrics") {
          assert.match(await response.text(), /^# HELP /);
          return;
        }
        assert.equal(response.headers.get("content-type"), "application/json");
        const json = await response.json();
        if (response.status !== 200) {
          assert.equal(typeof json.error, "string");
          const error: string = json.error;
          assert.ok(error.length > 0 && error.length < 400, error);
          const cut = (text: string) => text.length > 64 ? text.slice(0, 61) : text;
          switch (response.status) {
            case 404:
              assert.match(error, /^no (route|pool|backend|access log)/);
              if (error.startsWith("no route")) {
                assert.ok(error.includes(request!.method), error);
                assert.ok(error.includes(cut(url.pathname)), error);
              }
              break;
            case 405:
              assert.ok(error.includes(cut(url.pathname)), error);
              assert.match(response.headers.get("allow") ?? "", /^(GET, HEAD|POST)$/);
              break;
            case 400:
              assert.match(error, /^(weight: |body must be JSON|unknown key|pool and address)/);
              break;
            case 401:
              assert.equal(response.headers.get("www-authenticate"), 'Bearer realm="lb-admin"');
              break;
          }
        }
        // A change is made with the token, and only with it; each is one audit line.
        const authorized = tokenKind !== "none" &&
          /^bearer +(\S+) *$/i.exec(parts.authorization ?? "")?.[1] === TOKEN;
        if (!(authorized && response.status === 200 && request!.method === "POST")) {
          assert.equal(snapshot(view), before, "a change without the token");
          assert.deepEqual(audit, []);
        }
        // deno-lint-ignore no-control-regex -- control characters are what it looks for
        for (const line of audit) assert.doesNotMatch(line, /[\u0000-\u001f\u007f]/);
      },
    ),
    fuzzParameters("admin handler(request)"),
  );
});

// --- Raw bytes to the server ---------------------------------------------------

const CRLF = fc.constantFrom("\r\n", "\r\n", "\n");

const headerLine = fc.oneof(
  fc.tuple(
    fc.constantFrom(
      "Host",
      "Content-Length",
      "content-length",
      "Transfer-Encoding",
      "Authorization",
      "Content-Type",
      "Connection",
      "X-Odd",
    ),
    fc.oneof(
      fc.constantFrom(
        "0",
        "5",
        "-1",
        "1,1",
        " 3",
        "99999999999999999999",
        "chunked",
        `Bearer ${TOKEN}`,
        "x\u00ff",
        "",
      ),
      fc.string({ maxLength: 20 }),
    ),
  ).map(([name, value]) => `${name}: ${value}`),
  fc.constantFrom("no colon here", ": no name", " folded: line", "Bad Name: x", "\u0000: x"),
);

const rawRequest = fc.oneof(
  // Shaped like HTTP, with odd parts.
  fc.record({
    method: fc.oneof(
      fc.constantFrom("GET", "HEAD", "POST", "PUT", "CONNECT", "TRACE", "get"),
      fc.stringMatching(/^[A-Z]{1,8}$/),
    ),
    target: fc.oneof(path, fc.constantFrom("*", "http://admin/metrics", "", "/ x", "//x/metrics")),
    version: fc.constantFrom("HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 ", "http/1.1"),
    eol: CRLF,
    headers: fc.array(headerLine, { maxLength: 5 }),
    body: fc.oneof(weightBody.filter((text) => text.length < 2000), fc.constant("ab\r\n\r\ncd")),
  }).map(({ method, target, version, eol, headers, body }) =>
    new TextEncoder().encode(
      `${method} ${target} ${version}${eol}${
        headers.map((h) => `${h}${eol}`).join("")
      }${eol}${body}`,
    )
  ),
  // Anything at all.
  fc.uint8Array({ maxLength: 3000 }),
).chain((bytes) =>
  // Cut short anywhere, or whole.
  fc.oneof(fc.constant(bytes), fc.nat(bytes.length).map((end) => bytes.subarray(0, end)))
);

/** Reads until the server closes (or resets); returns what came first. */
async function readUntilClosed(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(65536);
  try {
    while (true) {
      const read = await conn.read(buffer);
      if (read === null) break;
      chunks.push(buffer.slice(0, read));
    }
  } catch {
    // A reset: the server closed with bytes of ours unread.
  }
  const all = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  return all;
}

const SERVER_STATUSES = new Set([...STATUSES, 413, 431, 501, 503]);
const DEADLINE_MS = 1000;

/** The answer's status, checked: a status line, headers, and a body of the length said. */
function checkAnswer(bytes: Uint8Array): number | undefined {
  if (bytes.length === 0) return undefined; // closed without a word: allowed
  const text = new TextDecoder().decode(bytes);
  const head = /^HTTP\/1\.1 (\d{3}) [^\r\n]+\r\n((?:[a-z0-9-]+: [^\r\n]*\r\n)*)\r\n/.exec(text);
  assert.ok(head, `not an HTTP answer: ${JSON.stringify(text.slice(0, 200))}`);
  const status = Number(head[1]);
  assert.ok(SERVER_STATUSES.has(status), `status ${status}`);
  assert.match(head[2]!, /(^|\r\n)connection: close\r\n/);
  const length = Number(/(?:^|\r\n)content-length: (\d+)\r\n/.exec(head[2]!)?.[1]);
  const bodyBytes = bytes.length - new TextEncoder().encode(head[0]).length;
  // A HEAD answer says the length of the body it leaves out.
  assert.ok(bodyBytes === length || bodyBytes === 0, `${bodyBytes} body bytes, said ${length}`);
  return status;
}

Deno.test("admin server: any bytes get a valid answer or a close within the deadlines, and it serves on", async () => {
  const clock = new FakeClock();
  const server = new AdminServer({
    listener: listenLoopback(),
    handler: createAdminHandler({ view: makeView(), token: TOKEN }),
    headerTimeoutMs: DEADLINE_MS,
    bodyTimeoutMs: DEADLINE_MS,
    writeTimeoutMs: DEADLINE_MS,
    maxHeaderBytes: 2048,
    maxBodyBytes: 1024,
    clock,
  });
  const port = server.addr.port;
  const send = async (
    bytes: Uint8Array,
    options: { halfClose: boolean; tick: boolean },
  ): Promise<Uint8Array> => {
    const conn = await connectLoopback(port);
    try {
      let answered = false;
      const answer = readUntilClosed(conn).finally(() => answered = true);
      try {
        let written = 0;
        while (written < bytes.length) written += await conn.write(bytes.subarray(written));
        if (options.halfClose) await conn.closeWrite();
      } catch {
        // The server closed first (it refused the start of it): its answer, if any, is read.
      }
      // Time passes only when told: each deadline (headers, body, answer) at
      // most once; past them all the connection must be over.
      for (let i = 0; i < 4 && options.tick && !answered; i++) {
        await until(() => answered || server.connections > 0, "the server to take the connection");
        if (!answered) await clock.tick(DEADLINE_MS);
      }
      await until(() => answered, "an answer or a close within the deadlines");
      return await answer;
    } finally {
      conn.close();
    }
  };
  try {
    await fc.assert(
      fc.asyncProperty(rawRequest, fc.boolean(), async (bytes, halfClose) => {
        checkAnswer(await send(bytes, { halfClose, tick: true }));
        await until(() => server.connections === 0, "the connection to be let go");
        // And it serves a plain request afterwards.
        const normal = new TextEncoder().encode("GET /api/backends HTTP/1.1\r\nHost: x\r\n\r\n");
        assert.equal(checkAnswer(await send(normal, { halfClose: true, tick: false })), 200);
      }),
      fuzzParameters("admin server(raw bytes)", 50),
    );
  } finally {
    await server.close();
  }
});

/** A request any HTTP/1.1 client could send, each line ended by CRLF or (as some send) LF. */
const wellFormed = fc.record({
  method: fc.constantFrom("GET", "HEAD", "POST", "POST", "PUT", "DELETE"),
  path: fc.oneof(
    routes,
    fc.array(segment.map(encodeURIComponent), { maxLength: 5 }).map((parts) =>
      `/${parts.join("/")}`
    ),
  ),
  authorization: fc.constantFrom(undefined, `Bearer ${TOKEN}`, `bearer  ${TOKEN}`, "Bearer x"),
  body: fc.oneof(
    fc.constantFrom("", "ab\r\n\r\ncd", '{"weight":\n\n5}'),
    weightBody.filter((text) => text.length < 1000),
  ),
  eols: fc.array(CRLF, { minLength: 5, maxLength: 5 }),
});

Deno.test("admin server: a well-formed request gets over the socket the status the handler gives it", async () => {
  const server = new AdminServer({
    listener: listenLoopback(),
    handler: createAdminHandler({ view: makeView(), token: TOKEN }),
  });
  try {
    await fc.assert(
      fc.asyncProperty(wellFormed, async ({ method, path, authorization, body, eols }) => {
        const bytes = new TextEncoder().encode(body);
        const hasBody = method !== "GET" && method !== "HEAD";
        const headers: [string, string][] = [["Host", "admin"]];
        if (authorization !== undefined) headers.push(["Authorization", authorization]);
        if (hasBody) headers.push(["Content-Length", String(bytes.length)]);
        const [first, ...rest] = eols as [string, ...string[]];
        const head = `${method} ${path} HTTP/1.1${first}` +
          headers.map(([name, value], i) => `${name}: ${value}${rest[i]}`).join("") + rest.at(-1);
        const direct = await createAdminHandler({ view: makeView(), token: TOKEN })(
          new Request(`http://admin${path}`, {
            method,
            headers,
            ...(hasBody ? { body: bytes } : {}),
          }),
        );
        await direct.body?.cancel();
        const conn = await connectLoopback(server.addr.port);
        try {
          const request = new TextEncoder().encode(head);
          await conn.write(hasBody ? new Uint8Array([...request, ...bytes]) : request);
          await conn.closeWrite();
          const status = checkAnswer(await readUntilClosed(conn));
          assert.equal(status, direct.status, JSON.stringify(head));
        } finally {
          conn.close();
        }
      }),
      fuzzParameters("admin server(well-formed request)", 50),
    );
  } finally {
    await server.close();
  }
});
