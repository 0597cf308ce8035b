// Modules of the operator's, in the balancer as a process on the engine under
// test (on epoll, in two data-plane threads): a policy that decides every
// connection, one that throws, one replaced by a reload; a matcher routing
// PostgreSQL and HTTP on one port; a Redis primary check that, with
// shutdown-sessions, moves clients to the new primary after a failover.
import assert from "node:assert/strict";
import { have } from "./test_peers.ts";
import {
  type BalancerProcess,
  checkConfigFile,
  connectLoopback,
  exchange,
  readAll,
  serverOf,
  startBalancerWithAdmin,
  startServer,
  startTaggedServer,
  TEST_ENGINE,
  until,
} from "./test_util.ts";

const ROOT = new URL(".", import.meta.url).pathname;
const PERMISSIONS = ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"];
const THREADS = TEST_ENGINE === "epoll" ? "threads: 2\n" : "";
const haveRedis = await have("redis-server", "redis-server");

const start = (dir: string, config: string) =>
  startBalancerWithAdmin(dir, config + THREADS, { token: "t", permissions: PERMISSIONS });

async function servedBy(port: number, n: number): Promise<string[]> {
  const seen: string[] = [];
  for (let i = 0; i < n; i++) seen.push(serverOf(await exchange(port, "x\n")));
  return seen;
}

Deno.test("a policy module decides every connection; a throwing one falls back, counted; a reload swaps it", async () => {
  const servers = [startTaggedServer("1"), startTaggedServer("2"), startTaggedServer("3")];
  const byPort = [...servers].sort((a, b) => a.port - b.port);
  const id = new Map(servers.map((s, i) => [s.port, String(i + 1)]));
  const dir = await Deno.makeTempDir();
  let lb: BalancerProcess | undefined;
  try {
    const policy = `${dir}/policy.ts`;
    await Deno.copyFile(`${ROOT}examples/policies/lowest_port.ts`, policy);
    // The copy imports the contracts from where it now is.
    await Deno.writeTextFile(
      policy,
      (await Deno.readTextFile(policy)).replace("../../programmable.ts", `${ROOT}programmable.ts`),
    );
    const running = await start(
      dir,
      `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web:
    balance: { module: ./policy.ts }
    backends: [${servers.map((s) => `{ address: "127.0.0.1:${s.port}" }`).join(", ")}]
`,
    );
    lb = running.lb;
    const lowest = id.get(byPort[0]!.port)!;
    assert.deepEqual(new Set(await servedBy(lb.port, 12)), new Set([lowest]));
    // The lowest goes away: the policy is offered the others only.
    await byPort[0]!.close();
    servers.splice(servers.indexOf(byPort[0]!), 1);
    assert.deepEqual(new Set(await servedBy(lb.port, 6)), new Set([id.get(byPort[1]!.port)]));

    // A policy that throws: every client is still served, round robin.
    await Deno.writeTextFile(policy, `export function pick() { throw new Error("boom"); }\n`);
    lb.kill("SIGHUP");
    await lb.waitForLine("stderr", /reloaded \(SIGHUP\)/);
    const fallback = await servedBy(lb.port, 8);
    assert.deepEqual(
      new Set(fallback),
      new Set([id.get(byPort[1]!.port), id.get(byPort[2]!.port)]),
    );
    await lb.waitForLine(
      "stderr",
      /pool web: policy module: pick\(\) threw: boom; such attempts go round robin/,
    );
    // Threads send their counts back in batches: wait for all eight.
    const policyErrors = async () => {
      const metrics = (await running.call("GET", "/metrics")).body as string;
      return Number(/lb_policy_errors_total\{pool="web"\} (\d+)/.exec(metrics)?.[1] ?? 0);
    };
    await until(async () => await policyErrors() >= 8, "eight policy errors counted", 200, 25);

    // A reload with new code: the highest port now.
    await Deno.writeTextFile(
      policy,
      `import type { PickContext } from "${ROOT}programmable.ts";
const port = (a: string) => Number(a.slice(a.lastIndexOf(":") + 1));
export function pick(ctx: PickContext) {
  return ctx.backends.reduce((best, b) => port(b.address) > port(best.address) ? b : best);
}
`,
    );
    lb.kill("SIGHUP");
    await until(
      () => lb!.stderr.filter((line) => /reloaded \(SIGHUP\)/.test(line)).length === 2,
      "the second reload",
      400,
      25,
    );
    assert.deepEqual(new Set(await servedBy(lb.port, 6)), new Set([id.get(byPort[2]!.port)]));
  } finally {
    await lb?.close();
    await Promise.all(servers.map((s) => s.close()));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("matcher modules route PostgreSQL and HTTP clients on one port; others are closed", async () => {
  const db = startServer(async (conn) => {
    const first = new Uint8Array(8);
    if (await conn.read(first) === null) return;
    await conn.write(new TextEncoder().encode("N")); // as PostgreSQL refuses SSL
  });
  const web = startTaggedServer("web");
  const dir = await Deno.makeTempDir();
  let lb: BalancerProcess | undefined;
  try {
    const running = await start(
      dir,
      `listeners:
  - name: mixed
    listen: "127.0.0.1:0"
    peek_timeout_ms: 2000
    routes:
      - { match: { module: ${ROOT}examples/matchers/postgres.ts }, pool: db }
      - { match: { module: ${ROOT}examples/matchers/http.ts }, pool: web }
pools:
  db: { backends: [{ address: "127.0.0.1:${db.port}" }] }
  web: { backends: [{ address: "127.0.0.1:${web.port}" }] }
`,
    );
    lb = running.lb;
    // An SSLRequest, in two pieces: the matcher asks for more, then decides.
    const pg = await connectLoopback(lb.port);
    await pg.write(new Uint8Array([0, 0, 0, 8]));
    await pg.write(new Uint8Array([0x04, 0xd2, 0x16, 0x2f]));
    const answer = new Uint8Array(1);
    assert.equal(await pg.read(answer), 1);
    assert.equal(new TextDecoder().decode(answer), "N");
    pg.close();
    assert.equal(serverOf(await exchange(lb.port, "GET / HTTP/1.1\n")), "web");
    // Neither: closed before any backend is dialled.
    const other = await connectLoopback(lb.port);
    await other.write(new TextEncoder().encode("SSH-2.0-x\r\n"));
    assert.equal((await readAll(other)).length, 0);
    other.close();
    await lb.waitForLine("stdout", /end=no-route/);
  } finally {
    await lb?.close();
    await Promise.all([db.close(), web.close()]);
    await Deno.remove(dir, { recursive: true });
  }
});

/** A fake Redis: `INFO replication` says its role; any other line is answered `+ID`. */
function fakeRedis(id: string, role: { primary: boolean }) {
  return startServer(async (conn) => {
    const buffer = new Uint8Array(1024);
    while (true) {
      const read = await conn.read(buffer);
      if (read === null) return;
      const text = new TextDecoder().decode(buffer.subarray(0, read));
      const reply = /INFO/i.test(text)
        ? (() => {
          const body = `# Replication\r\nrole:${role.primary ? "master" : "slave"}\r\n`;
          return `$${body.length}\r\n${body}\r\n`;
        })()
        : `+${id}\r\n`;
      await conn.write(new TextEncoder().encode(reply));
    }
  });
}

/** Sends a line on a held connection; the reply's first line, or null once it is closed. */
async function ask(conn: Deno.Conn, line: string): Promise<string | null> {
  try {
    await conn.write(new TextEncoder().encode(line));
    const buffer = new Uint8Array(4096);
    const read = await conn.read(buffer);
    return read === null ? null : new TextDecoder().decode(buffer.subarray(0, read));
  } catch {
    return null;
  }
}

/** The same, on a new connection of its own. */
async function askNew(port: number, line: string): Promise<string | null> {
  const conn = await connectLoopback(port);
  try {
    return await ask(conn, line);
  } finally {
    conn.close();
  }
}

const redisPool = (ports: number[]) =>
  `listeners:
  - { name: cache, listen: "127.0.0.1:0", pool: cache }
pools:
  cache:
    balance: first
    backends: [${ports.map((p) => `{ address: "127.0.0.1:${p}" }`).join(", ")}]
    health:
      check: { module: ${ROOT}checks/redis_primary.ts }
      interval_ms: 100
      timeout_ms: 5000
      rise: 1
      fall: 1
      on_down: shutdown-sessions
`;

Deno.test("checks/redis_primary.ts against a fake Redis: after a failover, shutdown-sessions moves the clients", async () => {
  const roles = { a: { primary: true }, b: { primary: false } };
  const a = fakeRedis("a", roles.a);
  const b = fakeRedis("b", roles.b);
  const dir = await Deno.makeTempDir();
  let lb: BalancerProcess | undefined;
  try {
    const running = await start(dir, redisPool([a.port, b.port]));
    lb = running.lb;
    const states = async () => (await running.backends("cache")).map((x) => x.state).join();
    await until(async () => await states() === "up,down", "a primary, b replica", 400, 25);
    const held = await connectLoopback(lb.port);
    assert.equal(await ask(held, "PING\r\n"), "+a\r\n");
    roles.a.primary = false;
    roles.b.primary = true;
    await until(async () => await states() === "down,up", "b promoted", 400, 25);
    await until(
      async () => await ask(held, "PING\r\n") === null,
      "the old primary's client cut",
      200,
      10,
    );
    held.close();
    // The threads hear of the change a moment after the admin API shows it: a
    // client placed in between is cut too, and reconnects, as real ones do.
    await until(
      async () => await askNew(lb!.port, "PING\r\n") === "+b\r\n",
      "a new client reaches b",
      100,
      20,
    );
    await lb.waitForLine(
      "stderr",
      /backend 127\.0\.0\.1:\d+ up -> down: .*last: the check said down/,
    );
  } finally {
    await lb?.close();
    await Promise.all([a.close(), b.close()]);
    await Deno.remove(dir, { recursive: true });
  }
});

/** A real redis-server on a free port, its data nowhere. */
async function redisServer(port: number) {
  const child = new Deno.Command("redis-server", {
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await until(
    async () => {
      try {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        const answer = await ask(conn, "PING\r\n");
        conn.close();
        return answer === "+PONG\r\n";
      } catch {
        return false;
      }
    },
    "redis-server answers",
    200,
    25,
  );
  const command = async (line: string) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      return await ask(conn, line);
    } finally {
      conn.close();
    }
  };
  return {
    command,
    async stop() {
      child.kill("SIGKILL");
      await child.status;
    },
  };
}

Deno.test({
  name:
    "checks/redis_primary.ts against real Redis: REPLICAOF NO ONE promotes the replica; old clients are cut",
  ignore: !haveRedis,
  fn: async () => {
    const ports = await Promise.all([0, 1].map(() => {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = listener.addr.port;
      listener.close();
      return port;
    }));
    const [one, two] = await Promise.all(ports.map(redisServer));
    const dir = await Deno.makeTempDir();
    let lb: BalancerProcess | undefined;
    try {
      await two!.command(`REPLICAOF 127.0.0.1 ${ports[0]}\r\n`);
      const running = await start(dir, redisPool(ports));
      lb = running.lb;
      const states = async () => (await running.backends("cache")).map((x) => x.state).join();
      await until(async () => await states() === "up,down", "one primary", 400, 25);
      const held = await connectLoopback(lb.port);
      assert.equal(await ask(held, "SET k 1\r\n"), "+OK\r\n");
      // Fail over: two becomes the primary, one its replica.
      await two!.command("REPLICAOF NO ONE\r\n");
      await one!.command(`REPLICAOF 127.0.0.1 ${ports[1]}\r\n`);
      await until(async () => await states() === "down,up", "two promoted", 400, 25);
      await until(async () => await ask(held, "PING\r\n") === null, "the old client cut", 200, 10);
      held.close();
      // Writes go to the new primary (once every thread has heard of the change).
      await until(
        async () => await askNew(lb!.port, "SET k 2\r\n") === "+OK\r\n",
        "a write through the balancer",
        100,
        20,
      );
    } finally {
      await lb?.close();
      await Promise.all([one!.stop(), two!.stop()]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("--check loads and type-checks modules: a type error or a missing export names the key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/typo.ts`, `export function pick(): number { return "x"; }\n`);
    await Deno.writeTextFile(`${dir}/none.ts`, `export const nothing = 1;\n`);
    await Deno.writeTextFile(
      `${dir}/lb.yaml`,
      `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web: { balance: { module: ./typo.ts }, backends: [{ address: "127.0.0.1:1" }] }
  api:
    backends: [{ address: "127.0.0.1:2" }]
    health: { check: { module: ./none.ts } }
`,
    );
    const { code, said } = await checkConfigFile(`${dir}/lb.yaml`, ["--allow-run"]);
    assert.equal(code, 1, said);
    assert.match(said, /pools\.web\.balance\.module \.\/typo\.ts: type check failed: .*TS2322/);
    assert.match(
      said,
      /pools\.api\.health\.check\.module \.\/none\.ts: type check failed: .*Property 'check' is missing/,
    );
    // An async policy fits no contract: pick must decide at once.
    await Deno.writeTextFile(
      `${dir}/typo.ts`,
      `export async function pick() { return undefined; }\n`,
    );
    const { said: told } = await checkConfigFile(`${dir}/lb.yaml`);
    assert.match(
      told,
      /pools\.web\.balance\.module \.\/typo\.ts: pick\(\) is async: a policy must decide at once/,
    );
    assert.match(
      told,
      /pools\.api\.health\.check\.module \.\/none\.ts: a check module must export function check\(\); it exports nothing/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("examples/programmable.yaml, which names every kind of module, passes --check", async () => {
  const { code, said } = await checkConfigFile("examples/programmable.yaml", ["--allow-run"]);
  assert.equal(code, 0, said);
  assert.match(said, /web: policy least_latency\.ts over/);
});
