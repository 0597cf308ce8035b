import assert from "node:assert/strict";
import process from "node:process";
import {
  ConfigError,
  formatPath,
  jsonSchema,
  parseConfig,
  parseConfigText,
  validateConfig,
} from "./config.ts";
import {
  exchange,
  listenLoopback,
  runScript,
  startBalancerProcess,
  startTaggedServer,
} from "./test_util.ts";

const CONFIG_PERMISSIONS = ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"];

function problems(text: string): string[] {
  try {
    parseConfig(text);
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
  assert.fail("the config was accepted");
}

Deno.test("parseConfig() fills every default, YAML and JSON alike", () => {
  const yaml = parseConfig(`
listeners: [{ name: web, listen: "127.0.0.1:5000", pool: web }]
pools:
  web:
    backends: [{ address: "127.0.0.1:5001" }]
`);
  const json = parseConfig(JSON.stringify({
    listeners: [{ name: "web", listen: "127.0.0.1:5000", pool: "web" }],
    pools: { web: { backends: [{ address: "127.0.0.1:5001" }] } },
  }));
  assert.deepEqual(yaml, json);
  // Pools come back in a null-prototype object: names from the file never meet Object's own.
  assert.equal(Object.getPrototypeOf(yaml.pools), null);
  assert.deepEqual({ ...yaml, pools: { ...yaml.pools } }, {
    listeners: [{
      name: "web",
      listen: "127.0.0.1:5000",
      pool: "web",
      maxconn: 10000,
      accept_proxy: false,
      allow: [],
      deny: [],
      peek_timeout_ms: 5000,
      routes: [],
    }],
    pools: {
      web: {
        balance: "round-robin",
        backends: [{ address: "127.0.0.1:5001", weight: 1, backup: false }],
        send_proxy: "off",
        health: {
          interval_ms: 2000,
          timeout_ms: 1000,
          rise: 2,
          fall: 3,
          backoff_base_ms: 1000,
          backoff_max_ms: 30000,
          slow_start_ms: 0,
          on_down: "keep-sessions",
        },
        timeouts: { connect_ms: 5000, idle_ms: 3600000, half_closed_ms: 60000 },
        maxconn_per_backend: 0,
        on_remove: "drain",
        queue: { max: 1000, timeout_ms: 5000 },
      },
    },
    drain_timeout_ms: 30000,
    engine: "auto",
    threads: 1,
    workers: 1,
  });
});

Deno.test("config errors name the path, the bad value and what was expected", () => {
  assert.deepEqual(
    problems(`
listeners: [{ name: web, listen: "127.0.0.1:5000", pool: web, maxconn: 0 }]
pools:
  web:
    balance: fastest
    backends:
      - { address: "127.0.0.1:5001" }
      - { address: "127.0.0.1:5002", weight: 300 }
      - { address: x }
    timeouts: { idle_mins: 60 }
drain_timeout_ms: "30s"
`),
    [
      "listeners[0].maxconn: expected a whole number 1-1000000, got 0",
      "pools.web.balance: expected one of round-robin, least-connections, random-two, " +
      'source-hash, first, or { module: PATH }, got "fastest"',
      "pools.web.backends[1].weight: expected a whole number 1-256, got 300",
      'pools.web.backends[2].address: expected HOST:PORT (e.g. 127.0.0.1:5001 or [::1]:5001): got "x"',
      'pools.web.timeouts: unknown key(s) "idle_mins"; expected connect_ms, idle_ms, half_closed_ms',
      'drain_timeout_ms: expected a whole number 1-2147483647, got "30s"',
    ],
  );
});

Deno.test("config errors across keys: missing pools, duplicates, backoff order", () => {
  assert.deepEqual(
    problems(`
listeners:
  - { name: a, listen: "127.0.0.1:5000", pool: web }
  - { name: a, listen: "127.0.0.1:5000", pool: api }
pools:
  web:
    backends: [{ address: "127.0.0.1:5001" }]
    health: { backoff_base_ms: 5000, backoff_max_ms: 1000 }
`),
    [
      'listeners[1].pool: no pool named "api"; pools are "web"',
      'listeners[1].name: "a" is already the name of another listener',
      `listeners[1].listen: "127.0.0.1:5000" is already another listener's address`,
      "pools.web.health.backoff_max_ms: must be at least backoff_base_ms (5000): got 1000",
    ],
  );
  assert.deepEqual(problems("listeners: []\npools: {}"), [
    "listeners: expected at least one listener, got []",
  ]);
  assert.deepEqual(problems("{ nope"), [
    problems("{ nope")[0]!,
  ]);
  assert.match(problems("{ nope")[0]!, /^not valid YAML or JSON: /);
});

Deno.test("formatPath() writes keys with dots and indexes in brackets", () => {
  assert.equal(
    formatPath(["pools", "web", "backends", 2, "address"]),
    "pools.web.backends[2].address",
  );
  assert.equal(formatPath([]), "(the file)");
});

Deno.test("config.schema.json is what `deno task schema` generates from the schema", async () => {
  const committed = JSON.parse(
    await Deno.readTextFile(new URL("./config.schema.json", import.meta.url)),
  );
  assert.deepEqual(committed, { title: "TCP load balancer configuration", ...jsonSchema() });
});

Deno.test("--check: the example config is valid (exit 0); a bad file lists its problems (exit 1)", async () => {
  const good = await runScript("load_balancer.ts", ["--config", "lb.example.yaml", "--check"], {
    permissions: CONFIG_PERMISSIONS,
  });
  assert.equal(good.code, 0, good.stderr);
  assert.match(good.stdout, /^load_balancer: lb\.example\.yaml: valid: web on 127\.0\.0\.1:5000/);
  const bad = await Deno.makeTempFile({ suffix: ".yaml" });
  try {
    await Deno.writeTextFile(
      bad,
      "listeners: [{ name: web, listen: nowhere, pool: web }]\npools: {}\n",
    );
    const result = await runScript("load_balancer.ts", ["--config", bad, "--check"], {
      permissions: CONFIG_PERMISSIONS,
    });
    assert.equal(result.code, 1);
    assert.equal(result.stdout, "");
    assert.equal(
      result.stderr,
      `load_balancer: ${bad}: listeners[0].listen: expected HOST:PORT (e.g. 127.0.0.1:5001 or ` +
        `[::1]:5001): got "nowhere"\n` +
        `load_balancer: ${bad}: listeners[0].pool: no pool named "web"; pools are none\n`,
    );
  } finally {
    await Deno.remove(bad);
  }
});

Deno.test("--config: two listeners, each with its own pool; flags override a one-listener file", async () => {
  const [a, b] = [startTaggedServer("a"), startTaggedServer("b")];
  const freePort = () => {
    const listener = listenLoopback();
    const port = listener.addr.port;
    listener.close();
    return port;
  };
  const [portA, portB] = [freePort(), freePort()];
  const file = await Deno.makeTempFile({ suffix: ".yaml" });
  try {
    await Deno.writeTextFile(
      file,
      `listeners:
  - { name: one, listen: "127.0.0.1:${portA}", pool: first }
  - { name: two, listen: "127.0.0.1:${portB}", pool: second }
pools:
  first: { backends: [{ address: "127.0.0.1:${a.port}" }] }
  second: { backends: [{ address: "127.0.0.1:${b.port}" }] }
`,
    );
    const { code, stdout } = await runScript(
      "load_balancer.ts",
      ["--config", file, "--check"],
      { permissions: CONFIG_PERMISSIONS },
    );
    assert.equal(code, 0);
    assert.match(stdout, /one on .* → first; two on .* → second/);
    const both = await startBalancerProcess(["--config", file], {
      permissions: CONFIG_PERMISSIONS,
      listen: false,
    });
    try {
      await both.waitForLine("stderr", new RegExp(`listening on 127\\.0\\.0\\.1:${portB};`));
      assert.match(await exchange(portA, "one\n"), /^\[Server a\] one/);
      assert.match(await exchange(portB, "two\n"), /^\[Server b\] two/);
    } finally {
      await both.close();
    }
    // Flags override a file's keys only when it has one listener.
    const refused = await runScript(
      "load_balancer.ts",
      ["--config", file, "--listen", "127.0.0.1:0"],
      { permissions: CONFIG_PERMISSIONS },
    );
    assert.equal(refused.code, 2);
    assert.match(
      refused.stderr,
      /--listen overrides the file only when it has exactly one listener/,
    );

    // One listener: flags given override the file's keys.
    await Deno.writeTextFile(
      file,
      `listeners: [{ name: web, listen: "127.0.0.1:1", pool: web }]
pools:
  web: { backends: [{ address: "127.0.0.1:${a.port}" }] }
`,
    );
    const lb = await startBalancerProcess(["--config", file, "--backend", `127.0.0.1:${b.port}`], {
      permissions: CONFIG_PERMISSIONS,
    });
    try {
      // --listen (127.0.0.1:0, from the helper) and --backend replaced the file's.
      assert.match(await exchange(lb.port, "hi\n"), /^\[Server b\] hi/);
    } finally {
      await lb.close();
    }
  } finally {
    await Deno.remove(file);
    await a.close();
    await b.close();
  }
});

const ONE_POOL = `
listeners: [{ name: web, listen: "127.0.0.1:5000", pool: web }]
pools:
  web:
    backends: [{ address: "127.0.0.1:5001" }]
`;

Deno.test("config errors show .inf and .nan as they are, not as JSON's null", () => {
  assert.deepEqual(
    problems(`${ONE_POOL}drain_timeout_ms: .inf
workers: .nan
`),
    [
      "drain_timeout_ms: expected a whole number 1-2147483647, got Infinity",
      "workers: expected a whole number 1-64, got NaN",
    ],
  );
  assert.deepEqual(
    problems(`${ONE_POOL}$schema: [1, -.inf]
`),
    [
      '$schema: Invalid input: expected string, received array, got [1,"-Infinity"]',
    ],
  );
});

Deno.test("config errors say each problem once", () => {
  // Past 2^53 a number fails both the whole-number rule and the bound.
  assert.deepEqual(
    problems(`${ONE_POOL}drain_timeout_ms: 9007199254740993
`),
    [
      "drain_timeout_ms: expected a whole number 1-2147483647, got 9007199254740992",
    ],
  );
  // Two listeners alike find the same loop in the pool they share.
  assert.deepEqual(
    problems(`
listeners:
  - { name: a, listen: "127.0.0.1:5001", pool: web }
  - { name: a, listen: "127.0.0.1:5001", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }] }
`),
    [
      'listeners[1].name: "a" is already the name of another listener',
      `listeners[1].listen: "127.0.0.1:5001" is already another listener's address`,
      'pools.web.backends[0].address: "127.0.0.1:5001" is listener a\'s own address ' +
      "(127.0.0.1:5001): every connection would loop back into the balancer",
    ],
  );
});

Deno.test("validateConfig() throws a ConfigError even for a value nested too deep to show", () => {
  const raw = JSON.parse(
    `{"listeners": [], "pools": {}, "$schema": ${"[".repeat(10_000)}${"]".repeat(10_000)}}`,
  );
  assert.throws(() => validateConfig(raw), (error) => {
    assert.ok(error instanceof ConfigError, String(error));
    assert.match(error.message, /^\$schema: .*, got \[\.\.\.\]$/m);
    return true;
  });
});

Deno.test("YAML tags read as the plain values they tag, and the yaml package says nothing on stderr", async () => {
  const warnings: string[] = [];
  const listen = (warning: Error) => warnings.push(warning.message);
  process.on("warning", listen);
  try {
    assert.deepEqual(
      parseConfigText("a: !!binary aGk=\nb: !!set { x }\nc: !!timestamp 2001-01-01\nd: !x y\n"),
      { a: "aGk=", b: { x: null }, c: "2001-01-01", d: "y" },
    );
    // Not a Buffer whose methods read as unknown keys: one short line.
    assert.deepEqual(problems("!!binary aGk="), [
      'expected a mapping with listeners and pools (see lb.example.yaml), got "aGk="',
    ]);
    // The yaml package emits its warnings on the next tick.
    await new Promise((resolve) => setTimeout(resolve, 0));
  } finally {
    process.off("warning", listen);
  }
  assert.deepEqual(warnings, []);
});

Deno.test("a backend may not be the wildcard or broadcast address in any spelling", () => {
  for (
    const host of [
      "[0::0]",
      "[0:0:0:0:0:0:0:0]",
      "[::ffff:0.0.0.0]",
      "000.0.0.0",
      "[::ffff:255.255.255.255]",
    ]
  ) {
    const address = `${host}:5001`;
    assert.deepEqual(
      problems(ONE_POOL.replace('"127.0.0.1:5001"', JSON.stringify(address))),
      [
        `pools.web.backends[0].address: ${JSON.stringify(address)} is not an address to connect ` +
        "to (a wildcard or broadcast address); give the backend's own address",
      ],
      host,
    );
  }
});

Deno.test("discover: each mistake names the key, the value and what was expected", () => {
  const pool = (discover: string) =>
    problems(`
listeners: [{ name: a, listen: "127.0.0.1:5000", pool: web }]
pools:
  web: { discover: ${discover} }
`);
  assert.deepEqual(pool("{ dns: a.test, etcd: http://127.0.0.1:2379, prefix: /x/ }"), [
    'pools.web.discover: expected one source, got both dns "a.test" and etcd ' +
    '"http://127.0.0.1:2379": use one pool for each',
  ]);
  assert.deepEqual(pool("{ port: 80 }"), [
    "pools.web.discover: expected a source, dns: NAME or etcd: URL (with prefix: KEY); got only port",
  ]);
  assert.deepEqual(pool("web.test"), [
    'pools.web.discover: expected { dns: NAME, type, port, resolver } or { etcd: URL, prefix: KEY }, got "web.test"',
  ]);
  assert.deepEqual(pool("{ dns: web.test }"), [
    "pools.web.discover.port: missing; type A needs the backends' port",
  ]);
  assert.deepEqual(pool("{ dns: _x._tcp.web.test, type: SRV, port: 80 }"), [
    "pools.web.discover.port: SRV records carry their own ports: leave port out, got 80",
  ]);
  assert.deepEqual(pool("{ dns: web.test, port: 80, resolver: 'localhost:53' }"), [
    'pools.web.discover.resolver: "localhost:53": expected the name server\'s IP address and ' +
    "port (a name server is not found by name), such as 127.0.0.1:53",
  ]);
  assert.deepEqual(pool("{ dns: web.test, port: 80, interval_ms: 1 }"), [
    "pools.web.discover.interval_ms: expected a whole number 100-2147483647, got 1",
  ]);
  assert.deepEqual(pool("{ etcd: 'http://127.0.0.1:99999', prefix: /x/ }"), [
    'pools.web.discover.etcd: "http://127.0.0.1:99999": expected an etcd v3 endpoint such as ' +
    "http://127.0.0.1:2379 (scheme, host and port only)",
  ]);
  assert.deepEqual(
    pool("{ etcd: 'http://127.0.0.1:2379', prefix: /x/, type: SRV, interval_ms: 500 }"),
    [
      'pools.web.discover.type: is for dns, not etcd (etcd is watched), got "SRV"',
      "pools.web.discover.interval_ms: is for dns, not etcd (etcd is watched), got 500",
    ],
  );
  assert.deepEqual(pool("{ etcd: 'http://127.0.0.1:2379' }"), [
    "pools.web.discover.prefix: missing; etcd needs the key prefix to watch, e.g. /lb/web/",
  ]);
});
