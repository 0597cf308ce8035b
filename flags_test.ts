import assert from "node:assert/strict";
import { parseFlags, UsageError } from "./flags.ts";

Deno.test("parseFlags() with no flags is the lab: 5000 → 5001, 5002", () => {
  assert.deepEqual(parseFlags([]), {
    listen: { hostname: "127.0.0.1", port: 5000 },
    backends: [
      { address: { hostname: "127.0.0.1", port: 5001 }, weight: 1, backup: false },
      { address: { hostname: "127.0.0.1", port: 5002 }, weight: 1, backup: false },
    ],
    balance: "round-robin",
    connectTimeoutMs: 5000,
    drainTimeoutMs: 30000,
    idleTimeoutMs: 3600000,
    halfClosedTimeoutMs: 60000,
    maxConnections: 10000,
    maxConnectionsPerBackend: 0,
    queueMax: 1000,
    queueTimeoutMs: 5000,
    healthCheck: undefined,
    healthIntervalMs: 2000,
    healthTimeoutMs: 1000,
    health: { rise: 2, fall: 3, backoffBaseMs: 1000, backoffMaxMs: 30000, slowStartMs: 0 },
    workers: 1,
    asWorker: false,
    config: undefined,
    check: false,
    version: false,
    watch: false,
    logFormat: undefined,
    accessLog: undefined,
    admin: undefined,
    adminTokenFile: undefined,
    given: new Set(),
    help: false,
  });
});

Deno.test("parseFlags() replaces the default pool with the --backend flags, in order", () => {
  const flags = parseFlags([
    "--listen",
    "[::]:6000",
    "--backend",
    "10.0.0.2:80",
    "--backend=[::1]:81",
    "--connect-timeout",
    "250",
    "--drain-timeout=10",
    "-h",
  ]);
  assert.deepEqual(flags.listen, { hostname: "::", port: 6000 });
  assert.deepEqual(flags.backends, [
    { address: { hostname: "10.0.0.2", port: 80 }, weight: 1, backup: false },
    { address: { hostname: "::1", port: 81 }, weight: 1, backup: false },
  ]);
  assert.equal(flags.connectTimeoutMs, 250);
  assert.equal(flags.drainTimeoutMs, 10);
  assert.equal(flags.help, true);
});

Deno.test("parseFlags() reads backend options and the strategy", () => {
  const flags = parseFlags([
    "--backend",
    "127.0.0.1:5001,weight=5",
    "--backend",
    "[::1]:5002,backup",
    "--backend",
    "db.internal:5432,weight=256,backup",
    "--balance",
    "source-hash",
  ]);
  assert.deepEqual(flags.backends, [
    { address: { hostname: "127.0.0.1", port: 5001 }, weight: 5, backup: false },
    { address: { hostname: "::1", port: 5002 }, weight: 1, backup: true },
    { address: { hostname: "db.internal", port: 5432 }, weight: 256, backup: true },
  ]);
  assert.equal(flags.balance, "source-hash");
});

Deno.test("parseFlags() reads the health flags", () => {
  const flags = parseFlags([
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
  ]);
  assert.deepEqual(flags.healthCheck, {
    kind: "send-expect",
    send: new TextEncoder().encode("PING\n"),
    expect: new TextEncoder().encode("+PONG"),
  });
  assert.deepEqual(
    [flags.healthIntervalMs, flags.healthTimeoutMs],
    [500, 200],
  );
  assert.deepEqual(flags.health, {
    rise: 1,
    fall: 5,
    backoffBaseMs: 100,
    backoffMaxMs: 800,
    slowStartMs: 10000,
  });
  assert.deepEqual(parseFlags(["--health-check", "tcp"]).healthCheck, { kind: "tcp" });
});

Deno.test("parseFlags() errors name the flag and the value", () => {
  const cases: [string[], string][] = [
    [["--bogus"], "unknown flag --bogus (see --help)"],
    [["--backend", "nonsense"], "--backend nonsense: expected HOST:PORT"],
    [
      ["--backend", "127.0.0.1:70000"],
      '--backend 127.0.0.1:70000: port must be an integer 1-65535: got "70000"',
    ],
    [["--backend", "127.0.0.1:0"], "--backend 127.0.0.1:0: port must be an integer 1-65535"],
    [["--listen", "127.0.0.1:99999"], "--listen 127.0.0.1:99999: port must be an integer 0-65535"],
    [["--connect-timeout", "0"], "--connect-timeout 0: expected a whole number of milliseconds"],
    [["--drain-timeout", "soon"], "--drain-timeout soon: expected a whole number of milliseconds"],
    [["--listen"], "--listen needs a value"],
    [["--workers", "0"], "--workers 0: expected a whole number, 1-64"],
    [["--health-check", "http"], "--health-check http: expected tcp or send=HEX,expect=HEX"],
    [
      ["--health-check", "send=0g,expect=00"],
      '--health-check send=0g,expect=00: expected an even number of hex digits, got "0g"',
    ],
    [["--rise", "0"], "--rise 0: expected a whole number, 1-100"],
    [["--maxconn", "0"], "--maxconn 0: expected a whole number, 1-1000000"],
    [["--log-format", "xml"], "--log-format xml: expected text or json"],
    [
      ["--backoff-base", "5000", "--backoff-max", "1000"],
      "--backoff-max 1000: must be at least --backoff-base (5000)",
    ],
    [
      ["--backend", "127.0.0.1:5001,weight=0"],
      '--backend 127.0.0.1:5001,weight=0: weight must be 1-256, got "0"',
    ],
    [
      ["--backend", "127.0.0.1:5001,weight=257"],
      "--backend 127.0.0.1:5001,weight=257: weight must be 1-256",
    ],
    [
      ["--backend", "127.0.0.1:5001,weight"],
      '--backend 127.0.0.1:5001,weight: unknown option "weight"',
    ],
    [
      ["--backend", "127.0.0.1:5001,spare"],
      '--backend 127.0.0.1:5001,spare: unknown option "spare"; expected weight=N or backup',
    ],
    [
      ["--balance", "fastest"],
      "--balance fastest: expected one of round-robin, least-connections, random-two, source-hash, first",
    ],
    [["--workers", "two"], "--workers two: expected a whole number, 1-64"],
    [["stray"], "unexpected argument stray"],
  ];
  for (const [args, start] of cases) {
    assert.throws(
      () => parseFlags(args),
      (error: unknown) => error instanceof UsageError && error.message.startsWith(start),
      `${args.join(" ")} should fail with "${start}…"`,
    );
  }
});
