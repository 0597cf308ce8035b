/**
 * Property tests for the config file's parser and validator: whatever the
 * text or the parsed value, the answer is a Config or a ConfigError whose
 * every line names the place, and the value found there, on one line.
 * Seeds are printed; `LB_FUZZ_SEED=N` replays one (see fuzzParameters).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { stringify as stringifyYaml } from "yaml";
import {
  type Config,
  ConfigError,
  formatPath,
  parseConfig,
  parseConfigText,
  showValue,
  validateConfig,
} from "./config.ts";
import { fuzzParameters } from "./test_util.ts";

/** What a parser gave: the config, or its ConfigError; anything else thrown fails the property. */
function outcome(run: () => Config): Config | ConfigError {
  try {
    return run();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let value = root;
  for (const key of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

/** The ways a message may show a value from the file. */
function renderings(value: unknown): string[] {
  // Numbers as JavaScript writes them (JSON would write Infinity as null).
  if (typeof value === "number" || typeof value === "boolean" || value === null) {
    return [String(value)];
  }
  // Strings quoted, whole or cut short; structures as showValue() cuts them.
  if (typeof value === "string") return [JSON.stringify(value), showValue(value)];
  return [showValue(value)];
}

/**
 * The laws every ConfigError keeps: one line per problem, none twice; each
 * problem from the schema starts with its path and shows the value there
 * (or says it is missing, or names the unknown keys, which are there).
 */
function assertWellFormed(error: ConfigError, raw: unknown): void {
  assert.ok(error.problems.length > 0, "a ConfigError with no problem");
  assert.equal(error.message, error.problems.join("\n"));
  assert.equal(new Set(error.problems).size, error.problems.length, "a problem said twice");
  for (const problem of error.problems) {
    assert.ok(problem.trim() !== "", "an empty problem");
    assert.doesNotMatch(problem, /[\n\r]/, "a problem on more than one line");
  }
  error.issues.forEach((issue, i) => {
    const place = formatPath(issue.path);
    assert.equal(error.problems[i], `${place}: ${issue.message}`);
    const value = valueAt(raw, issue.path);
    const unknown = /^unknown key\(s\) ((?:"(?:[^"\\]|\\.)*"(?:, )?)+)(?:; expected (.*))?$/
      .exec(issue.message);
    if (unknown) {
      const keys = JSON.parse(`[${unknown[1]}]`) as string[];
      for (const key of keys) assert.ok(Object.hasOwn(value as object, key), key);
      // What it expected instead never includes what it refused.
      const expected = unknown[2]?.split(", ") ?? [];
      for (const key of keys) {
        assert.ok(!expected.includes(key), `${key} both unknown and expected`);
      }
      return;
    }
    if (value === undefined || issue.message.startsWith("missing; ")) {
      assert.ok(
        issue.message.startsWith("missing; ") || issue.path.length > 0,
        `${place}: ${issue.message}`,
      );
      return;
    }
    // A name that is wrong as a key is shown as the key.
    const key = issue.path.at(-1);
    const shown = [...renderings(value), ...(typeof key === "string" ? [JSON.stringify(key)] : [])];
    assert.ok(
      shown.some((text) => issue.message.includes(text)),
      `${place}: ${issue.message} does not show the value ${showValue(value)}`,
    );
  });
}

// --- Valid configs -----------------------------------------------------------

const NAMES = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,12}$/),
  // Names every object has: they must be no more than names here.
  fc.constantFrom("constructor", "toString", "hasOwnProperty", "valueOf", "a", "web"),
);

const ipv4Host = fc.ipV4().filter((host) => host !== "0.0.0.0" && host !== "255.255.255.255");
// Not the wildcard, in any of its spellings (`::`, `0::0`, `::0.0.0.0`).
const ipv6Host = fc.ipV6().map((host) => `[${host}]`).filter((host) =>
  new URL(`http://${host}/`).hostname !== "[::]"
);
const nameHost = fc.domain().filter((host) => host !== "localhost");
// Backends live on ports 1000 and up, listeners and the admin API below: no loop, no overlap.
const backendAddress = fc.tuple(
  fc.oneof(ipv4Host, ipv6Host, nameHost),
  fc.integer({ min: 1000, max: 65535 }),
).map(([host, port]) => `${host}:${port}`);

const backend = fc.record({
  address: backendAddress,
  weight: fc.integer({ min: 1, max: 256 }),
  backup: fc.boolean(),
}, { requiredKeys: ["address"] });

const hex = fc.uint8Array({ minLength: 1, maxLength: 8 }).map((bytes) =>
  Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("")
);
const ms = (min = 1) => fc.integer({ min, max: 2_147_483_647 });

const health = fc.record({
  check: fc.oneof(fc.constant("tcp"), fc.record({ send: hex, expect: hex })),
  interval_ms: ms(),
  timeout_ms: ms(),
  rise: fc.integer({ min: 1, max: 100 }),
  fall: fc.integer({ min: 1, max: 100 }),
  backoff_base_ms: ms(),
  backoff_max_ms: ms(),
  slow_start_ms: ms(0),
}, { requiredKeys: [] }).map((health) => {
  // The most must not be under the base.
  const base = health.backoff_base_ms ?? 1000;
  const most = health.backoff_max_ms ?? 30000;
  if (most >= base) return health;
  return { ...health, backoff_base_ms: most, backoff_max_ms: base };
});

const pool = fc.record({
  balance: fc.constantFrom(
    "round-robin",
    "least-connections",
    "random-two",
    "source-hash",
    "first",
  ),
  backends: fc.uniqueArray(backend, {
    minLength: 1,
    maxLength: 4,
    selector: (b) => b.address.toLowerCase(),
  }),
  health,
  timeouts: fc.record({ connect_ms: ms(), idle_ms: ms(), half_closed_ms: ms() }, {
    requiredKeys: [],
  }),
  maxconn_per_backend: fc.integer({ min: 0, max: 1_000_000 }),
  queue: fc.record({ max: fc.integer({ min: 0, max: 1_000_000 }), timeout_ms: ms() }, {
    requiredKeys: [],
  }),
}, { requiredKeys: ["backends"] });

const listenHost = fc.constantFrom(
  "127.0.0.1",
  "0.0.0.0",
  "[::]",
  "[::1]",
  "localhost",
  "[::ffff:127.0.0.1]",
);

/** A raw config the schema accepts: what a person might write in a file. */
const validRaw = fc.uniqueArray(NAMES, { minLength: 1, maxLength: 3 }).chain((poolNames) =>
  fc.record({
    pools: fc.tuple(...poolNames.map(() => pool)).map((pools) =>
      Object.fromEntries(poolNames.map((name, i) => [name, pools[i]]))
    ),
    listeners: fc.uniqueArray(
      fc.record({
        name: NAMES,
        host: listenHost,
        pool: fc.constantFrom(...poolNames),
        maxconn: fc.option(fc.integer({ min: 1, max: 1_000_000 }), { nil: undefined }),
      }),
      { minLength: 1, maxLength: 3, selector: (listener) => listener.name },
    ),
    admin: fc.option(
      fc.record({
        port: fc.oneof(fc.constant(0), fc.integer({ min: 900, max: 999 })),
        bare: fc.boolean(),
      }),
      { nil: undefined },
    ),
    workers: fc.integer({ min: 1, max: 64 }),
    threads: fc.integer({ min: 1, max: 64 }),
    engine: fc.constantFrom("auto", "epoll", "deno", undefined),
    drain_timeout_ms: fc.option(ms(), { nil: undefined }),
    log_format: fc.constantFrom("text", "json", undefined),
    access_log: fc.option(fc.string({ minLength: 1 }), { nil: undefined }),
  })
).map((made) => {
  const raw: Record<string, unknown> = {
    // Each listener its own port under 900 (the admin API takes 900-999).
    listeners: made.listeners.map((listener, i) => ({
      name: listener.name,
      listen: `${listener.host}:${i + 1}`,
      pool: listener.pool,
      ...(listener.maxconn === undefined ? {} : { maxconn: listener.maxconn }),
    })),
    pools: made.pools,
  };
  if (made.admin !== undefined) {
    raw.admin = { listen: made.admin.bare ? made.admin.port : `127.0.0.1:${made.admin.port}` };
  }
  // One worker unless the file allows more: one listener and no admin API.
  if (made.admin === undefined && made.listeners.length === 1) raw.workers = made.workers;
  if (made.engine !== undefined) raw.engine = made.engine;
  if (made.engine !== "deno") raw.threads = made.threads;
  for (const key of ["drain_timeout_ms", "log_format", "access_log"] as const) {
    if (made[key] !== undefined) raw[key] = made[key];
  }
  return raw;
});

// --- Changes that may break them -------------------------------------------

/** Values a file could hold where another was expected. */
const oddValue = fc.oneof(
  fc.constantFrom(
    null,
    true,
    false,
    0,
    -0,
    -1,
    0.5,
    2 ** 31,
    2 ** 53,
    1e21,
    Infinity,
    -Infinity,
    NaN,
    "",
    " ",
    "tcp",
    "0",
    "127.0.0.1:0",
    "0.0.0.0:80",
    "[::]:80",
    "[::1]",
    "::1:80",
    "127.0.0.1:5000",
    "localhost:1000",
    "__proto__",
    "constructor",
    "a\nb",
    "\u0000",
    "\u2028",
    [],
    {},
    [1, 2],
    { __proto__: null, x: 1 },
  ),
  fc.integer({ min: -10, max: 70_000 }),
  fc.double(),
  fc.string({ maxLength: 80 }),
  fc.string({ unit: "binary", maxLength: 20 }),
  fc.jsonValue({ maxDepth: 3 }),
);

/** Every path to a value inside `raw` (not the root). */
function pathsIn(raw: unknown, path: PropertyKey[] = []): PropertyKey[][] {
  if (raw === null || typeof raw !== "object") return [];
  const keys: PropertyKey[] = Array.isArray(raw) ? raw.map((_, i) => i) : Object.keys(raw);
  return keys.flatMap((key) => {
    const inner = [...path, key];
    return [inner, ...pathsIn((raw as Record<PropertyKey, unknown>)[key], inner)];
  });
}

type Change = { kind: "set" | "delete" | "add"; at: number; value: unknown; key: string };

const change: fc.Arbitrary<Change> = fc.record({
  kind: fc.constantFrom("set", "set", "set", "delete", "add"),
  at: fc.nat(),
  value: oddValue,
  key: fc.oneof(fc.constantFrom("__proto__", "constructor", "wieght", "$schema"), fc.string()),
});

/** `raw` with each change made to a copy; a change may touch a key a former one added. */
function mutate(raw: unknown, changes: readonly Change[]): unknown {
  const copy = structuredClone(raw) as Record<PropertyKey, unknown>;
  for (const { kind, at, value, key } of changes) {
    const paths = pathsIn(copy);
    if (paths.length === 0) break;
    const path = paths[at % paths.length]!;
    const parent = valueAt(copy, path.slice(0, -1)) as Record<PropertyKey, unknown>;
    const last = path.at(-1)!;
    const target = parent[last];
    if (kind === "delete") {
      if (Array.isArray(parent)) parent.splice(Number(last), 1);
      else delete parent[last];
    } else if (
      kind === "add" && target !== null && typeof target === "object" && !Array.isArray(target)
    ) {
      // (A file cannot give a list a named key, so only mappings get one.)
      // defineProperty, so `__proto__` is a key like any other (as JSON.parse makes it).
      Object.defineProperty(target, key, {
        value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
    } else {
      parent[last] = structuredClone(value);
    }
  }
  return copy;
}

// --- Texts -------------------------------------------------------------------

/** Pieces of YAML and JSON, so random texts get past the first character. */
const yamlPiece = fc.constantFrom(
  "listeners:",
  "pools:",
  "web:",
  "backends:",
  "- ",
  "  ",
  "\n",
  "\r\n",
  "\t",
  "{",
  "}",
  "[",
  "]",
  ",",
  ": ",
  "&a ",
  "*a",
  "<<: *a",
  "!!str ",
  "!!binary ",
  "!!set ",
  "!!map ",
  "!foo ",
  "---",
  "...",
  "# note",
  "'",
  '"',
  "? ",
  "|",
  ">",
  "%YAML 1.2\n",
  "~",
  "null",
  ".inf",
  "-.inf",
  ".nan",
  "0x1F",
  "0o17",
  "1e400",
  "-0",
  "__proto__: ",
  "name: web",
  "listen: 127.0.0.1:5000",
  "pool: web",
  "address: 127.0.0.1:5001",
  "weight: 5",
  '"\\u0000"',
  "é",
  "\u2028",
  "\ufeff",
);

const configText = fc.oneof(
  fc.string({ maxLength: 200 }),
  fc.string({ unit: "binary", maxLength: 200 }),
  fc.array(yamlPiece, { maxLength: 60 }).map((pieces) => pieces.join("")),
  fc.jsonValue({ maxDepth: 4 }).map((value) => JSON.stringify(value)),
);

// --- Properties --------------------------------------------------------------

Deno.test("parseConfig(): any text gives a Config or a ConfigError of one-line problems", () => {
  fc.assert(
    fc.property(configText, (text) => {
      const result = outcome(() => parseConfig(text));
      if (result instanceof ConfigError) {
        let raw: unknown;
        try {
          raw = parseConfigText(text);
        } catch {
          raw = undefined; // the text itself is the problem
        }
        assertWellFormed(result, raw);
      }
    }),
    fuzzParameters("parseConfig(text)"),
  );
});

Deno.test("validateConfig(): a changed valid config is valid, or each problem names its place and value", () => {
  fc.assert(
    fc.property(validRaw, fc.array(change, { minLength: 1, maxLength: 3 }), (raw, changes) => {
      const changed = mutate(raw, changes);
      const result = outcome(() => validateConfig(changed));
      if (result instanceof ConfigError) assertWellFormed(result, changed);
    }),
    fuzzParameters("validateConfig(changed config)"),
  );
});

Deno.test("parseConfig(): a changed config written as YAML or JSON is read as validateConfig() reads it", () => {
  fc.assert(
    fc.property(validRaw, fc.array(change, { minLength: 1, maxLength: 3 }), (raw, changes) => {
      // JSON has no NaN or Infinity, and drops what it cannot hold: compare with what it kept.
      const json = JSON.stringify(mutate(raw, changes));
      const kept = JSON.parse(json);
      const expected = outcome(() => validateConfig(kept));
      for (const text of [json, stringifyYaml(kept)]) {
        const got = outcome(() => parseConfig(text));
        if (expected instanceof ConfigError) {
          assert.ok(got instanceof ConfigError, text);
          assert.deepEqual(got.problems, expected.problems, text);
        } else {
          assert.deepEqual(got, expected, text);
        }
      }
    }),
    fuzzParameters("parseConfig(changed config as YAML and JSON)", 100),
  );
});

Deno.test("parseConfig(): a valid config, and the config it gives, read back the same from YAML and JSON", () => {
  fc.assert(
    fc.property(validRaw, (raw) => {
      const config = validateConfig(raw);
      for (const source of [raw, config]) {
        for (const text of [JSON.stringify(source), stringifyYaml(source)]) {
          assert.deepEqual(parseConfig(text), config, text);
        }
        assert.deepEqual(validateConfig(JSON.parse(JSON.stringify(source))), config);
      }
    }),
    fuzzParameters("parseConfig(valid config round trip)", 100),
  );
});

/** The unspecified (wildcard) and broadcast addresses, spelled the ways a person or tool might. */
const notToConnectTo = fc.oneof(
  // `::` as eight groups of zeros, some of them run together as `::`.
  fc.tuple(
    fc.array(fc.constantFrom("0", "00", "000", "0000"), { minLength: 8, maxLength: 8 }),
    fc.nat(8),
    fc.nat(8),
  ).map(([groups, from, to]) => {
    const [start, end] = [Math.min(from, to), Math.max(from, to)];
    if (start === end) return `[${groups.join(":")}]`;
    return `[${groups.slice(0, start).join(":")}::${groups.slice(end).join(":")}]`;
  }),
  fc.constantFrom("[::0.0.0.0]", "[::ffff:0.0.0.0]", "[::ffff:255.255.255.255]"),
  fc.tuple(fc.constantFrom("0", "00", "000"), fc.constantFrom("0", "00", "000")).map(
    ([a, b]) => `${a}.${b}.0.0`,
  ),
  fc.constant("255.255.255.255"),
).chain((host) => fc.integer({ min: 1, max: 65535 }).map((port) => `${host}:${port}`));

Deno.test("validateConfig(): a wildcard or broadcast backend address is refused in any spelling", () => {
  fc.assert(
    fc.property(validRaw, notToConnectTo, fc.nat(), (raw, address, at) => {
      const pools = raw.pools as Record<string, { backends: { address: string }[] }>;
      const [name, pool] = Object.entries(pools)[at % Object.keys(pools).length]!;
      const i = at % pool.backends.length;
      pool.backends[i] = { address };
      const result = outcome(() => validateConfig(raw));
      assert.ok(result instanceof ConfigError, `${address} was accepted`);
      assert.ok(
        result.problems.includes(
          `pools.${name}.backends[${i}].address: ${JSON.stringify(address)} is not an address ` +
            `to connect to (a wildcard or broadcast address); give the backend's own address`,
        ),
        result.message,
      );
    }),
    fuzzParameters("validateConfig(wildcard backend)"),
  );
});
