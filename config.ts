/**
 * The configuration file: `--config FILE`, YAML or JSON (YAML reads both).
 *
 * Config flows one way: parse → fill defaults → validate, every message
 * naming the path, the bad value and what was expected
 * (`pools.web.backends[2].address: expected HOST:PORT …: got "x"`) → the
 * typed object goes to the balancer. zod's own messages leave the value out,
 * so every rule here carries its own words.
 *
 * @module
 */

import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { parseHostPort } from "./address.ts";
import { STRATEGY_NAMES } from "./balancer.ts";

const MAX_MS = 2_147_483_647;

function whole(min: number, max: number, fallback: number) {
  const error = `expected a whole number ${min}-${max}`;
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error }).default(
    fallback,
  );
}

function milliseconds(fallback: number, min = 1) {
  return whole(min, MAX_MS, fallback).describe("milliseconds");
}

function address(options: { allowPortZero?: boolean } = {}) {
  return z.string({ error: "expected HOST:PORT" }).superRefine((text, context) => {
    try {
      parseHostPort(text, options);
    } catch (error) {
      context.addIssue({ code: "custom", message: (error as Error).message });
    }
  });
}

const hex = z.string({ error: "expected hex digits" }).regex(/^([0-9a-fA-F]{2})+$/, {
  error: "expected an even number of hex digits",
});

const backendSchema = z.strictObject({
  address: address().describe("HOST:PORT, or [IPv6]:PORT; host names are resolved at each connect"),
  weight: whole(1, 256, 1).describe("share of new connections"),
  backup: z.boolean({ error: "expected true or false" }).default(false).describe(
    "used only when no other backend is left to try",
  ),
});

const healthSchema = z.strictObject({
  check: z.union([
    z.literal("tcp"),
    z.strictObject({ send: hex, expect: hex }),
  ], { error: 'expected "tcp" or { send: HEX, expect: HEX }' }).optional().describe(
    "active checks; none when left out",
  ),
  interval_ms: milliseconds(2000),
  timeout_ms: milliseconds(1000),
  rise: whole(1, 100, 2),
  fall: whole(1, 100, 3),
  backoff_base_ms: milliseconds(1000),
  backoff_max_ms: milliseconds(30000),
  slow_start_ms: milliseconds(0, 0),
});

const poolSchema = z.strictObject({
  balance: z.enum(STRATEGY_NAMES, { error: `expected one of ${STRATEGY_NAMES.join(", ")}` })
    .default("round-robin"),
  backends: z.array(backendSchema, { error: "expected a list of backends" }).min(1, {
    error: "expected at least one backend",
  }),
  health: healthSchema.prefault({}),
  timeouts: z.strictObject({
    connect_ms: milliseconds(5000),
    idle_ms: milliseconds(3_600_000).describe("an hour, so quiet database connections stay"),
    half_closed_ms: milliseconds(60_000),
  }).prefault({}),
  maxconn_per_backend: whole(0, 1_000_000, 0).describe("0 is no limit"),
  queue: z.strictObject({
    max: whole(0, 1_000_000, 1000),
    timeout_ms: milliseconds(5000),
  }).prefault({}),
});

const listenerSchema = z.strictObject({
  name: z.string({ error: "expected a name" }).min(1, { error: "expected a name" }),
  listen: address({ allowPortZero: true }),
  pool: z.string({ error: "expected the name of a pool" }),
  maxconn: whole(1, 1_000_000, 10000),
});

/** The whole file. */
export const configSchema = z.strictObject({
  $schema: z.string().optional(),
  listeners: z.array(listenerSchema, { error: "expected a list of listeners" }).min(1, {
    error: "expected at least one listener",
  }),
  pools: z.record(z.string(), poolSchema, { error: "expected pools by name" }),
  drain_timeout_ms: milliseconds(30000),
  workers: whole(1, 64, 1),
  admin: z.strictObject({
    listen: address({ allowPortZero: true }).describe("where the admin API listens"),
    token_file: z.string({ error: "expected a file path" }).optional().describe(
      "a file holding the bearer token changes need; none means changes are refused",
    ),
  }).optional(),
}).superRefine((config, context) => {
  const names = new Set<string>();
  const addresses = new Set<string>();
  config.listeners.forEach((listener, i) => {
    if (!(listener.pool in config.pools)) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "pool"],
        message: `no pool named ${JSON.stringify(listener.pool)}; pools are ${
          Object.keys(config.pools).map((name) => JSON.stringify(name)).join(", ") || "none"
        }`,
      });
    }
    if (names.has(listener.name)) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "name"],
        message: `${JSON.stringify(listener.name)} is already the name of another listener`,
      });
    }
    if (addresses.has(listener.listen)) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "listen"],
        message: `${JSON.stringify(listener.listen)} is already another listener's address`,
      });
    }
    names.add(listener.name);
    addresses.add(listener.listen);
  });
  for (const [name, pool] of Object.entries(config.pools)) {
    if (pool.health.backoff_max_ms < pool.health.backoff_base_ms) {
      context.addIssue({
        code: "custom",
        path: ["pools", name, "health", "backoff_max_ms"],
        message:
          `must be at least backoff_base_ms (${pool.health.backoff_base_ms}): got ${pool.health.backoff_max_ms}`,
      });
    }
  }
});

/** A validated configuration, defaults filled in. */
export type Config = z.output<typeof configSchema>;
/** One pool of a {@linkcode Config}. */
export type PoolConfig = Config["pools"][string];

/** A file that cannot be used; `problems` has one line per thing to fix. */
export class ConfigError extends Error {
  override name = "ConfigError";
  readonly problems: string[];
  constructor(problems: string[]) {
    super(problems.join("\n"));
    this.problems = problems;
  }
}

/** `listeners[0].pool`, `pools.web.backends[2].address`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let text = "";
  for (const key of path) {
    if (typeof key === "number") text += `[${key}]`;
    else text += text === "" ? String(key) : `.${String(key)}`;
  }
  return text || "(the file)";
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let value = root;
  for (const key of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

function describeIssue(issue: z.core.$ZodIssue, raw: unknown): string {
  const path = formatPath(issue.path);
  if (issue.code === "unrecognized_keys") {
    return `${path}: unknown key(s) ${issue.keys.map((key) => JSON.stringify(key)).join(", ")}`;
  }
  // Our custom rules already name the value.
  if (issue.code === "custom") return `${path}: ${issue.message}`;
  const value = valueAt(raw, issue.path);
  if (value === undefined) return `${path}: missing; ${issue.message}`;
  return `${path}: ${issue.message}, got ${JSON.stringify(value)}`;
}

/** Validates a parsed file (or one built from flags), filling defaults. @throws {ConfigError} */
export function validateConfig(raw: unknown): Config {
  const result = configSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(result.error.issues.map((i) => describeIssue(i, raw)));
  return result.data;
}

/** Parses a config file's text, YAML or JSON, without validating it. @throws {ConfigError} */
export function parseConfigText(text: string): unknown {
  try {
    return parseYaml(text);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) {
      // The yaml package reads two debug switches from the environment.
      throw new ConfigError([
        "reading YAML needs --allow-env=LOG_TOKENS,LOG_STREAM (the yaml package's debug switches)",
      ]);
    }
    throw new ConfigError([`not valid YAML or JSON: ${(error as Error).message.split("\n")[0]}`]);
  }
}

/** Parses and validates a config file's text. @throws {ConfigError} */
export function parseConfig(text: string): Config {
  return validateConfig(parseConfigText(text));
}

/** Reads a config file and parses it, without validating it. @throws {ConfigError} */
export async function readConfigFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new ConfigError([`cannot read it: ${(error as Error).message}`]);
  }
  return parseConfigText(text);
}

/** The JSON Schema of the file, for editors (`deno task schema`). */
export function jsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(configSchema, { io: "input" }) as Record<string, unknown>;
}
