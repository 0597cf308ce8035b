/**
 * The shape of the code, checked: dependencies point one way (no cycle, no
 * module imports an entry point), policy never imports an engine, and the
 * README's module table names every module at the root.
 */

import assert from "node:assert/strict";

/** The modules a user runs; nothing may import them. */
const ENTRY_POINTS = [
  "load_balancer.ts",
  "backend.ts",
  "client.ts",
  "demo.ts",
  "schema.ts",
  "dataplane.ts",
];
/** Implementations of the seam (engine.ts) and what only they may use. */
const ENGINE_ONLY = [
  "engine_deno.ts",
  "engine_deno_udp.ts",
  "engine_epoll.ts",
  "engine_epoll_udp.ts",
  "epoll_loop.ts",
  "bridge.ts",
  "libc.ts",
  "threads.ts",
];
/** Policy: strategies, health, queue, limits, logs, metrics, admin. */
const POLICY = [
  "balancer.ts",
  "health.ts",
  "health_check.ts",
  "queue.ts",
  "pool.ts",
  "proxy.ts",
  "udp_proxy.ts",
  "log.ts",
  "metrics.ts",
  "admin.ts",
  "admin_server.ts",
  "plan.ts",
  "config.ts",
  "runtime.ts",
  "events.ts",
];

const root = new URL(".", import.meta.url);

/** Every local module reachable from the entry points, with what it imports (code and types). */
async function moduleGraph(): Promise<Map<string, Set<string>>> {
  const graph = new Map<string, Set<string>>();
  for (const entry of ENTRY_POINTS) {
    const { stdout, code } = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: root.pathname,
      stdout: "piped",
      stderr: "null",
    }).output();
    assert.equal(code, 0, `deno info ${entry}`);
    const info = JSON.parse(new TextDecoder().decode(stdout)) as {
      modules: {
        specifier: string;
        dependencies?: { code?: { specifier: string }; type?: { specifier: string } }[];
      }[];
    };
    for (const module of info.modules) {
      if (!module.specifier.startsWith(root.href)) continue;
      const name = module.specifier.slice(root.href.length);
      const imports = graph.get(name) ?? new Set<string>();
      for (const dependency of module.dependencies ?? []) {
        for (const target of [dependency.code?.specifier, dependency.type?.specifier]) {
          if (target?.startsWith(root.href)) imports.add(target.slice(root.href.length));
        }
      }
      graph.set(name, imports);
    }
  }
  return graph;
}

function reachable(graph: Map<string, Set<string>>, from: string): Set<string> {
  const seen = new Set<string>();
  const stack = [...(graph.get(from) ?? [])];
  while (stack.length > 0) {
    const next = stack.pop()!;
    if (seen.has(next)) continue;
    seen.add(next);
    stack.push(...(graph.get(next) ?? []));
  }
  return seen;
}

Deno.test("the module graph has no cycle and no import of an entry point", async () => {
  const graph = await moduleGraph();
  assert.ok(graph.size > 20, `read ${graph.size} modules`);
  for (const [module, imports] of graph) {
    for (const entry of ENTRY_POINTS) {
      assert.ok(!imports.has(entry), `${module} imports the entry point ${entry}`);
    }
    assert.ok(!reachable(graph, module).has(module), `${module} is part of an import cycle`);
  }
});

Deno.test("policy never imports an engine, even through another module", async () => {
  const graph = await moduleGraph();
  for (const module of POLICY) {
    assert.ok(graph.has(module), `${module} is in the graph`);
    const reached = reachable(graph, module);
    for (const engine of ENGINE_ONLY) {
      assert.ok(!reached.has(engine), `${module} reaches ${engine}`);
    }
  }
});

Deno.test("the README's module table names every module at the root", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", root));
  const modules = [...Deno.readDirSync(root)]
    .map((entry) => entry.name)
    .filter((name) => name.endsWith(".ts") && !name.endsWith("_test.ts"));
  for (const module of modules) {
    assert.ok(readme.includes(`\`${module}\``), `README.md names ${module}`);
  }
});
