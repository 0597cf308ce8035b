import assert from "node:assert/strict";
import { moduleProbe } from "./health_check.ts";
import { loadModule, ModulePolicy, moduleUrl, type PolicyCandidate } from "./modules.ts";
import { startServer } from "./test_util.ts";

const ROOT = new URL(".", import.meta.url).pathname;

const candidate = (name: string, extra: Partial<PolicyCandidate> = {}): PolicyCandidate => ({
  name,
  weight: 1,
  backup: false,
  active: 0,
  usable: true,
  state: "up",
  connectMs: undefined,
  ...extra,
});

/** A policy module written for the test, loaded by its URL. */
async function policy(dir: string, source: string): Promise<string> {
  const file = `${dir}/${crypto.randomUUID()}.ts`;
  await Deno.writeTextFile(file, source);
  const url = await moduleUrl(file, dir);
  await loadModule(url, "policy");
  return url;
}

Deno.test("ModulePolicy: what pick() returns decides; a throw or a backend not offered falls back, reported", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const backends = [candidate("127.0.0.1:1"), candidate("127.0.0.1:2"), candidate("127.0.0.1:3")];
    const errors: [string, boolean][] = [];
    let now = 0;
    const make = async (source: string) =>
      new ModulePolicy<PolicyCandidate>(
        await policy(dir, source),
        "web",
        (p, say) => errors.push([p, say]),
        () => now,
      );
    const last = await make(`export const pick = (ctx) => ctx.backends.at(-1);`);
    assert.equal(last.pick(backends, { tried: new Set() }), backends[2]);
    // By address too; and tried backends are never offered.
    const byAddress = await make(`export const pick = (ctx) => ctx.backends[0].address;`);
    assert.equal(byAddress.pick(backends, { tried: new Set([backends[0]!]) }), backends[1]);
    const stranger = await make(`export const pick = () => ({ address: "10.0.0.1:1" });`);
    assert.ok(backends.includes(stranger.pick(backends, { tried: new Set() })!));
    const thrower = await make(`export const pick = () => { throw new Error("boom"); };`);
    assert.ok(backends.includes(thrower.pick(backends, { tried: new Set() })!));
    now = 500;
    thrower.pick(backends, { tried: new Set() });
    now = 1500;
    thrower.pick(backends, { tried: new Set() });
    assert.deepEqual(errors, [
      ["pick() returned an object for 10.0.0.1:1, not one of the 3 backend(s) offered", true],
      ["pick() threw: boom", true],
      ["pick() threw: boom", false],
      ["pick() threw: boom", true],
    ]);
    // Nothing to offer: undefined, and the module is not asked.
    const down = backends.map((b) => ({ ...b, usable: false }));
    assert.equal(thrower.pick(down, { tried: new Set() }), undefined);
    assert.equal(errors.length, 4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ModulePolicy: init(state) once per pool and version; the state outlives a rebuild (a reload)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const source = `export function init(state) { state.inits = (state.inits ?? 0) + 1; }
export function pick(ctx) { ctx.state.picks = (ctx.state.picks ?? 0) + 1; return ctx.backends[0]; }`;
    const url = await policy(dir, source);
    const backends = [candidate("127.0.0.1:1")];
    const first = new ModulePolicy<PolicyCandidate>(url, "kept", () => {}, () => 0);
    first.pick(backends, { tried: new Set() });
    const again = new ModulePolicy<PolicyCandidate>(url, "kept", () => {}, () => 0);
    again.pick(backends, { tried: new Set() });
    const seen = await policy(
      dir,
      `export const pick = (ctx) => ctx.backends.find(() => ctx.state.picks === 2 && ctx.state.inits === 1);`,
    );
    const reader = new ModulePolicy<PolicyCandidate>(seen, "kept", () => {}, () => 0);
    assert.equal(reader.pick(backends, { tried: new Set() }), backends[0]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("examples/policies/least_latency.ts prefers the fastest to connect, weighed by connections in progress", async () => {
  const url = await moduleUrl("examples/policies/least_latency.ts", ROOT);
  await loadModule(url, "policy");
  const policy = new ModulePolicy<PolicyCandidate>(url, "latency", () => {}, () => 0);
  const slow = candidate("127.0.0.1:1", { connectMs: 5 });
  const fast = candidate("127.0.0.1:2", { connectMs: 1 });
  assert.equal(policy.pick([slow, fast], { tried: new Set() }), fast);
  const busy = candidate("127.0.0.1:2", { connectMs: 1, active: 9 });
  assert.equal(policy.pick([slow, busy], { tried: new Set() }), slow);
});

/** An HTTP server answering `status` to each path, and what it was asked. */
function httpServer(statusOf: (path: string) => number) {
  const asked: string[] = [];
  const server = startServer(async (conn) => {
    const buffer = new Uint8Array(4096);
    const read = await conn.read(buffer);
    if (read === null) return;
    const line = new TextDecoder().decode(buffer.subarray(0, read)).split("\r\n")[0]!;
    const path = line.split(" ")[1] ?? "";
    asked.push(path);
    await conn.write(
      new TextEncoder().encode(`HTTP/1.1 ${statusOf(path)} X\r\nContent-Length: 0\r\n\r\n`),
    );
  });
  return { server, asked };
}

Deno.test("checks/http_ok.ts: 2xx passes, others fail; options.port asks another port of the host", async () => {
  const url = await moduleUrl("checks/http_ok.ts", ROOT);
  await loadModule(url, "check");
  const { server, asked } = httpServer((path) => path === "/healthz" ? 204 : 503);
  try {
    const address = server.address;
    assert.equal(await moduleProbe(url, 2000, { path: "/healthz" })(address), undefined);
    assert.equal(await moduleProbe(url, 2000)(address), "the check said down");
    // Patroni style: the backend's own port is not asked; the other one is.
    const other = httpServer(() => 200);
    try {
      assert.equal(
        await moduleProbe(url, 2000, { path: "/primary", port: other.server.port })(address),
        undefined,
      );
      assert.deepEqual(other.asked, ["/primary"]);
    } finally {
      await other.server.close();
    }
    assert.deepEqual(asked, ["/healthz", "/"]);
  } finally {
    await server.close();
  }
});

Deno.test("checks/postgres_primary.ts asks Patroni's /primary: 200 on the leader only", async () => {
  const url = await moduleUrl("checks/postgres_primary.ts", ROOT);
  await loadModule(url, "check");
  let leader = true;
  const patroni = httpServer((path) => path === "/primary" && leader ? 200 : 503);
  const postgres = startServer(async () => {}); // the backend's own port, never spoken to
  try {
    const probe = moduleProbe(url, 2000, { port: patroni.server.port });
    assert.equal(await probe(postgres.address), undefined);
    leader = false;
    assert.equal(await probe(postgres.address), "the check said down");
  } finally {
    await Promise.all([patroni.server.close(), postgres.close()]);
  }
});

Deno.test("a check that throws, answers nonsense or runs out of time fails, saying why", async () => {
  const dir = await Deno.makeTempDir();
  const silent = startServer(async (conn) => {
    await conn.read(new Uint8Array(1)); // until the check gives up
  });
  try {
    const load = async (source: string) => {
      const file = `${dir}/${crypto.randomUUID()}.ts`;
      await Deno.writeTextFile(file, source);
      const url = await moduleUrl(file, dir);
      await loadModule(url, "check");
      return url;
    };
    const thrower = await load(`export async function check() { throw new Error("no"); }`);
    assert.equal(await moduleProbe(thrower, 2000)(silent.address), "check threw: no");
    const odd = await load(`export async function check() { return 42; }`);
    assert.equal(
      await moduleProbe(odd, 2000)(silent.address),
      'the check returned 42, not true, false, "up" or "down"',
    );
    const waits = await load(
      `export async function check(conn) { await conn.read(); return true; }`,
    );
    assert.equal(await moduleProbe(waits, 100)(silent.address), "no answer in 100 ms");
  } finally {
    await silent.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ModulePolicy: a Promise, a sort of the offered list, or a throw of anything falls back, said", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const backends = [candidate("127.0.0.1:1"), candidate("127.0.0.1:2")];
    const errors: string[] = [];
    const make = async (source: string) =>
      new ModulePolicy<PolicyCandidate>(
        await policy(dir, source),
        "odd",
        (p) => errors.push(p),
        () => 0,
      );
    // Not async in name (that is refused at load), but a Promise all the same; it rejects.
    const promising = await make(`export const pick = () => Promise.reject(new Error("late"));`);
    assert.ok(backends.includes(promising.pick(backends, { tried: new Set() })!));
    const sorter = await make(`export const pick = (ctx) => ctx.backends.sort().at(-1);`);
    assert.ok(backends.includes(sorter.pick(backends, { tried: new Set() })!));
    const odd = await make(`export const pick = () => { throw Object.create(null); };`);
    assert.ok(backends.includes(odd.pick(backends, { tried: new Set() })!));
    assert.equal(errors[0], "pick() returned a Promise: pick must decide at once, without await");
    assert.match(
      errors[1]!,
      /^pick\(\) threw: Cannot assign to read only property|^pick\(\) threw: .*read.only/i,
    );
    assert.equal(errors[2], "pick() threw: a value that cannot be shown");
    // Its rejection was caught: give it a turn to surface if it were not.
    await new Promise((resolve) => setTimeout(resolve, 10));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an async pick or match is refused at load; a check that awaits forever is timed out", async () => {
  const dir = await Deno.makeTempDir();
  const silent = startServer(async (conn) => {
    await conn.read(new Uint8Array(1));
  });
  try {
    const write = async (source: string) => {
      const file = `${dir}/${crypto.randomUUID()}.ts`;
      await Deno.writeTextFile(file, source);
      return await moduleUrl(file, dir);
    };
    await assert.rejects(
      loadModule(await write(`export async function pick() {}`), "policy"),
      /pick\(\) is async: a policy must decide at once, without await/,
    );
    await assert.rejects(
      loadModule(await write(`export const match = 5;`), "matcher"),
      /a matcher module must export function match\(\); its match is a number/,
    );
    const forever = await write(`export async function check() { await new Promise(() => {}); }`);
    await loadModule(forever, "check");
    assert.equal(await moduleProbe(forever, 100)(silent.address), "no answer in 100 ms");
  } finally {
    await silent.close();
    await Deno.remove(dir, { recursive: true });
  }
});
