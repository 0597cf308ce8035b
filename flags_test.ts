import assert from "node:assert/strict";
import { configDefaults, ConfigError } from "./config.ts";
import {
  formatDefault,
  type LoadBalancerFlags,
  parseFlags,
  SETTINGS,
  settingValue,
  usage,
  UsageError,
} from "./flags.ts";
import { resolveConfig } from "./plan.ts";

/** The config the flags describe (no file), or the error's message. */
async function configOf(args: string[]) {
  return await resolveConfig(parseFlags(args));
}

async function messageOf(args: string[]): Promise<string> {
  try {
    const flags: LoadBalancerFlags = parseFlags(args);
    await resolveConfig(flags);
  } catch (error) {
    if (error instanceof UsageError) return error.message;
    throw error;
  }
  throw new Error(`${args.join(" ")} was accepted`);
}

Deno.test("no flags is the lab: 127.0.0.1:5000 → 127.0.0.1:5001, 127.0.0.1:5002", async () => {
  const flags = parseFlags([]);
  assert.deepEqual(flags, {
    settings: [],
    config: undefined,
    check: false,
    watch: false,
    asWorker: false,
    supervisorPid: undefined,
    help: false,
    version: false,
  });
  const config = await resolveConfig(flags);
  assert.equal(config.listeners[0]!.listen, "127.0.0.1:5000");
  assert.deepEqual(config.pools.default!.backends.map((b) => b.address), [
    "127.0.0.1:5001",
    "127.0.0.1:5002",
  ]);
});

Deno.test("--backend replaces the default pool, in order, with its options", async () => {
  const config = await configOf([
    "--listen",
    "[::]:6000",
    "--backend",
    "10.0.0.2:80",
    "--backend=[::1]:81,weight=5",
    "--backend",
    "db.internal:5432,weight=256,backup",
    "--balance",
    "source-hash",
    "--connect-timeout",
    "250",
    "--drain-timeout=10",
  ]);
  assert.equal(config.listeners[0]!.listen, "[::]:6000");
  const pool = config.pools.default!;
  assert.deepEqual(pool.backends, [
    { address: "10.0.0.2:80", weight: 1, backup: false },
    { address: "[::1]:81", weight: 5, backup: false },
    { address: "db.internal:5432", weight: 256, backup: true },
  ]);
  assert.equal(pool.balance, "source-hash");
  assert.equal(pool.timeouts.connect_ms, 250);
  assert.equal(config.drain_timeout_ms, 10);
});

Deno.test("the health flags set the pool's health keys; the check's bytes stay hex until used", async () => {
  const pool = (await configOf([
    "--health-check",
    "send=50494e470a,expect=2b504f4e47",
    "--health-interval",
    "500",
    "--health-timeout",
    "200",
    "--rise",
    "1",
    "--fall",
    "5",
    "--backoff-base",
    "100",
    "--backoff-max",
    "800",
    "--slow-start",
    "10000",
  ])).pools.default!;
  assert.deepEqual(pool.health, {
    check: { send: "50494e470a", expect: "2b504f4e47" },
    interval_ms: 500,
    timeout_ms: 200,
    rise: 1,
    fall: 5,
    backoff_base_ms: 100,
    backoff_max_ms: 800,
    slow_start_ms: 10000,
    on_down: "keep-sessions",
  });
  assert.equal((await configOf(["--health-check", "tcp"])).pools.default!.health.check, "tcp");
});

Deno.test("a bad flag value is named with the flag and the text given, in the schema's words", async () => {
  const cases: [string[], string][] = [
    [["--backend", "nonsense"], "--backend nonsense: expected HOST:PORT"],
    [
      ["--backend", "127.0.0.1:70000"],
      '--backend 127.0.0.1:70000: port must be an integer 1-65535: got "70000"',
    ],
    [["--listen", "127.0.0.1:99999"], "--listen 127.0.0.1:99999: port must be an integer 0-65535"],
    [
      ["--connect-timeout", "0"],
      "--connect-timeout 0: expected a whole number 1-2147483647, got 0",
    ],
    [
      ["--drain-timeout", "soon"],
      '--drain-timeout soon: expected a whole number 1-2147483647, got "soon"',
    ],
    [["--workers", "0"], "--workers 0: expected a whole number 1-64, got 0"],
    [
      ["--health-check", "send=0g,expect=00"],
      '--health-check send=0g,expect=00: expected an even number of hex digits, got "0g"',
    ],
    [["--rise", "0"], "--rise 0: expected a whole number 1-100, got 0"],
    [["--maxconn", "0"], "--maxconn 0: expected a whole number 1-1000000, got 0"],
    [["--log-format", "xml"], '--log-format xml: expected text or json, got "xml"'],
    [
      ["--backoff-base", "5000", "--backoff-max", "1000"],
      "--backoff-max 1000: must be at least backoff_base_ms (5000): got 1000",
    ],
    [
      ["--backend", "127.0.0.1:5001,weight=0"],
      "--backend 127.0.0.1:5001,weight=0: expected a whole number 1-256, got 0",
    ],
    [
      ["--backend", "127.0.0.1:5001", "--backend", "127.0.0.1:5002,weight=257"],
      "--backend 127.0.0.1:5002,weight=257: expected a whole number 1-256, got 257",
    ],
    [
      ["--balance", "fastest"],
      "--balance fastest: expected one of round-robin, least-connections, random-two, source-hash, first",
    ],
  ];
  for (const [args, start] of cases) {
    const message = await messageOf(args);
    assert.ok(message.startsWith(start), `${args.join(" ")}: got "${message}", want "${start}…"`);
  }
});

Deno.test("what parseArgs refuses is named too", () => {
  const cases: [string[], string][] = [
    [["--bogus"], "unknown flag --bogus (see --help)"],
    [["--listen"], "--listen needs a value"],
    [["--check=yes"], "--check takes no value"],
    [["--health-check", "http"], "--health-check http: expected tcp or send=HEX,expect=HEX"],
    [
      ["--backend", "127.0.0.1:5001,weight"],
      '--backend 127.0.0.1:5001,weight: unknown option "weight"',
    ],
    [
      ["--backend", "127.0.0.1:5001,spare"],
      '--backend 127.0.0.1:5001,spare: unknown option "spare"; expected weight=N, backup or ' +
      "send-proxy=v1|v2|off",
    ],
    [["--admin", "foo"], "--admin foo: expected PORT or HOST:PORT"],
    [["--watch"], "--watch: needs --config FILE to watch"],
    [["stray"], "unexpected argument stray"],
    [["--as-worker=abc"], '--as-worker: "abc" is not a process id'],
  ];
  for (const [args, start] of cases) {
    assert.throws(
      () => parseFlags(args),
      (error: unknown) => error instanceof UsageError && error.message.startsWith(start),
      `${args.join(" ")} should fail with "${start}…"`,
    );
  }
});

Deno.test("--as-worker=PID: a worker knows its supervisor by pid, not by its parent at start-up", () => {
  const flags = parseFlags(["--as-worker=4321"]);
  assert.equal(flags.asWorker, true);
  assert.equal(flags.supervisorPid, 4321);
});

Deno.test("--help lists every setting with the schema's default, and every flag it lists exists", () => {
  const text = usage();
  const defaults = configDefaults();
  for (const spec of SETTINGS) {
    const at = text.indexOf(`  --${spec.name} ${spec.value}`);
    assert.ok(at >= 0, `--help lists --${spec.name}`);
    const entry = text.slice(at).split(/\n {2}-/)[0]!.replace(/\s+/g, " ");
    const value = settingValue(defaults, spec);
    const shown = value === undefined ? spec.unset! : formatDefault(value);
    assert.ok(entry.includes(`(default ${shown})`), `--${spec.name}: ${entry}`);
  }
  const known = new Set([
    ...SETTINGS.map((s) => s.name),
    "config",
    "check",
    "watch",
    "version",
    "help",
  ]);
  for (const [, flag] of text.matchAll(/^ {2}(?:-h, )?--([a-z-]+)/gm)) {
    assert.ok(known.has(flag!), `--${flag} in --help is a flag`);
  }
});

Deno.test("the docs' flag table gives each setting the schema's default", async () => {
  const docs = await Deno.readTextFile(new URL("docs/configuration.md", import.meta.url));
  const defaults = configDefaults();
  for (const spec of SETTINGS) {
    const row = docs.split("\n").find((line) =>
      new RegExp(`^\\| \`--${spec.name}[\` ]`).test(line)
    );
    assert.ok(row !== undefined, `docs/configuration.md has a row for --${spec.name}`);
    const value = settingValue(defaults, spec);
    const cell = row.split(/(?<!\\)\|/)[2]!.trim();
    if (value !== undefined) {
      assert.equal(cell.replace(/`/g, ""), formatDefault(value), `--${spec.name}`);
    }
  }
});

Deno.test("flags over a file with two listeners are refused, naming them", async () => {
  const file = await Deno.makeTempFile({ suffix: ".yaml" });
  await Deno.writeTextFile(
    file,
    `listeners:
  - { name: a, listen: "127.0.0.1:0", pool: p }
  - { name: b, listen: "127.0.0.1:0", pool: p }
pools: { p: { backends: [{ address: "127.0.0.1:5001" }] } }
`,
  );
  try {
    await assert.rejects(
      () => resolveConfig(parseFlags(["--config", file, "--connect-timeout", "5"])),
      (error: ConfigError) =>
        /--connect-timeout overrides the file only when it has exactly one listener/.test(
          error.message,
        ),
    );
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("what parseArgs refuses is named as it was given", () => {
  const cases: [string[], string][] = [
    // node names it '-h, --help'.
    [["--help=x"], "--help takes no value (see --help)"],
    [["--config"], "--config needs a value (see --help)"],
    // `-h=3` reads as -h -= -3.
    [["-h=3"], "unknown flag -= in -h=3 (see --help)"],
    [["--it's"], "unknown flag --it's (see --help)"],
    [["'"], "unexpected argument ': every setting is a flag (see --help)"],
    [["it's. here"], "unexpected argument it's. here: every setting is a flag (see --help)"],
    // After `--`, nothing is a flag: a negative number is not joined to one.
    [["--", "--connect-timeout", "-5"], "unexpected argument --connect-timeout: every setting"],
  ];
  for (const [args, message] of cases) {
    assert.throws(
      () => parseFlags(args),
      (error: unknown) => error instanceof UsageError && error.message.startsWith(message),
      `${JSON.stringify(args)} should fail with "${message}…"`,
    );
  }
});

Deno.test("a flag that set part of a key a listener refuses is named, not the key's config path", async () => {
  const udp = ["--listen", "udp://127.0.0.1:5353"];
  assert.equal(
    await messageOf([...udp, "--tls-cert", "c.pem", "--tls-key", "k.pem"]),
    "--tls-cert c.pem: tls is for TCP listeners; a UDP listener (udp://127.0.0.1:5353) " +
      "does not take it yet",
  );
  assert.match(
    await messageOf([...udp, "--per-source-maxconn", "5"]),
    /^--per-source-maxconn 5: per_source is for TCP listeners/,
  );
});

Deno.test("a mistake in an object the file has stays the file's, whatever flag set a key in it", async () => {
  const file = await Deno.makeTempFile({ suffix: ".yaml" });
  await Deno.writeTextFile(
    file,
    `listeners: [{ name: web, listen: "127.0.0.1:0", pool: web }]
pools:
  web:
    timeouts: { conect_ms: 5 }
    backends: [{ address: "127.0.0.1:5001" }]
`,
  );
  try {
    await assert.rejects(
      () => resolveConfig(parseFlags(["--config", file, "--connect-timeout", "100"])),
      (error: Error) =>
        error instanceof ConfigError && /pools\.web\.timeouts: .*conect_ms/.test(error.message),
    );
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("a flag that takes one value, given twice, is refused rather than the first dropped", () => {
  assert.throws(
    () => parseFlags(["--listen", "127.0.0.1:5000", "--listen=127.0.0.1:6000"]),
    (error: Error) =>
      error instanceof UsageError &&
      error.message === "--listen: given more than once; it takes one value " +
          "(for more listeners, use --config FILE)",
  );
  // Repeatable ones repeat.
  assert.equal(
    parseFlags(["--backend", "127.0.0.1:1", "--backend", "127.0.0.1:2"]).settings[0]!.texts.length,
    2,
  );
});
