/**
 * Property tests for the command line: any argv built from the real flags
 * and odd values either parses, or is refused with a UsageError naming the
 * flag (and the text given with it). Seeds are printed; `LB_FUZZ_SEED=N`
 * replays one (see fuzzParameters).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { ConfigError } from "./config.ts";
import { parseFlags, SETTINGS, UsageError } from "./flags.ts";
import { resolveConfig } from "./plan.ts";
import { fuzzParameters } from "./test_util.ts";

const MODES = ["config", "check", "watch", "as-worker", "help", "version"];

const flagName = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...SETTINGS.map((spec) => spec.name)) },
  { weight: 2, arbitrary: fc.constantFrom(...MODES) },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.constantFrom("bogus", "Listen", "__proto__", "constructor", "toString", "h", ""),
      fc.stringMatching(/^[a-z][a-z-]{0,11}$/),
    ),
  },
);

/** Values that are right for some flag, wrong for most, or odd for all. */
const flagValue = fc.oneof(
  fc.constantFrom(
    "",
    " ",
    "0",
    "-0",
    "1",
    "-1",
    "-5",
    "-1.5",
    "-.5",
    "-x",
    "-",
    "--",
    "1e3",
    "0x10",
    " 5",
    "5 ",
    "2147483647",
    "2147483648",
    "99999999999999999999",
    "NaN",
    "Infinity",
    "tcp",
    "send=00,expect=00",
    "send=,expect=",
    "send=zz,expect=0",
    "round-robin",
    "source-hash",
    "__proto__",
    "toString",
    "json",
    "text",
    "deno",
    "epoll",
    "auto",
    "9000",
    "127.0.0.1:0",
    "127.0.0.1:5000",
    "127.0.0.1:5001",
    "[::1]:5001",
    "::1",
    "0.0.0.0:80",
    "db.internal:5432",
    "127.0.0.1:5003,weight=5",
    "127.0.0.1:5003,backup",
    "127.0.0.1:5003,weight=0,backup",
    "127.0.0.1:5003,weight",
    "127.0.0.1:5003,weight=1,weight=2",
    "127.0.0.1:5003,backup=yes",
    "127.0.0.1:5003,,",
    "a\nb",
    "é:1",
  ),
  fc.integer({ min: -10, max: 3_000_000_000 }).map(String),
  fc.string({ maxLength: 30 }),
);

/** One or two argv entries: a flag with its value, a bare flag, a stray word. */
const argument = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(flagName, flagValue).map(([n, v]) => [`--${n}`, v]) },
  { weight: 3, arbitrary: fc.tuple(flagName, flagValue).map(([n, v]) => [`--${n}=${v}`]) },
  { weight: 2, arbitrary: flagName.map((n) => [`--${n}`]) },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.constantFrom("-h", "-hh", "-h=3", "-x", "-", "--", "---x", "--="),
      flagValue,
    ).map((a) => [a]),
  },
);

const argv = fc.array(argument, { maxLength: 6 }).map((parts) => parts.flat());

/** Each flag as given, and the text that came with it (the next entry, or after `=`). */
function givenPairs(args: readonly string[]): [string, string][] {
  return args.flatMap((arg, i): [string, string][] => {
    if (!arg.startsWith("--")) return [];
    const equals = arg.indexOf("=");
    if (equals > 0) return [[arg.slice(0, equals), arg.slice(equals + 1)]];
    const next = args[i + 1];
    return next === undefined ? [] : [[arg, next]];
  });
}

/** The flags as written: `--name` of `--name=value`, or a short `-x` group. */
function givenFlags(args: readonly string[]): string[] {
  return args.filter((arg) => arg.startsWith("-")).map((arg) =>
    arg.startsWith("--") && arg.indexOf("=") > 0 ? arg.slice(0, arg.indexOf("=")) : arg
  );
}

/**
 * A refusal names what was given: a flag as written (and, when it speaks of
 * a value, the text given with it), or the stray argument.
 */
function assertNamesInput(message: string, args: readonly string[]): void {
  const flags = givenFlags(args);
  const unknown = /^unknown flag (\S+)/.exec(message);
  if (unknown) {
    assert.ok(
      flags.some((flag) => flag.startsWith(unknown[1]!)) || args.some((a) => message.includes(a)),
      `${message} names no flag given in ${JSON.stringify(args)}`,
    );
    return;
  }
  const stray = /^unexpected argument ([^]*?): every setting is a flag/.exec(message);
  if (stray) {
    assert.ok(args.includes(stray[1]!), `${message} names no argument given`);
    return;
  }
  const flag = /^(--[a-z-]+)/.exec(message)?.[1];
  assert.ok(flag !== undefined, `${message} starts with no flag`);
  assert.ok(
    flags.some((given) => given === flag || given.startsWith(`${flag}=`)),
    `${message} names ${flag}, which was not given in ${JSON.stringify(args)}`,
  );
  // `--backend TEXT: ...`: the text must be what came with the flag.
  const valued = /^(--[a-z-]+) ([^]*?): /.exec(message);
  if (valued && !/^--[a-z-]+ (needs a value|takes no value)/.test(message)) {
    assert.ok(
      givenPairs(args).some(([name, text]) => name === valued[1] && text === valued[2]),
      `${message}: ${JSON.stringify(valued[2])} is not the text given with ${valued[1]}`,
    );
  }
}

Deno.test("parseFlags(): any argv parses, or is refused with a UsageError naming the flag", () => {
  fc.assert(
    fc.property(argv, (args) => {
      try {
        parseFlags(args);
      } catch (error) {
        assert.ok(error instanceof UsageError, `${args}: threw ${error}`);
        assert.notEqual(error.message, "");
        assertNamesInput(error.message, args);
      }
    }),
    fuzzParameters("parseFlags(argv)"),
  );
});

Deno.test("resolveConfig(): flags without a file give a Config, or each problem names the flag and its text", async () => {
  // No --config: the property must not read files named at random.
  const noFile = argv.filter((args) => !args.some((arg) => arg.startsWith("--config")));
  await fc.assert(
    fc.asyncProperty(noFile, async (args) => {
      let flags;
      try {
        flags = parseFlags(args);
      } catch (error) {
        if (error instanceof UsageError) return; // the property above
        throw error;
      }
      try {
        await resolveConfig(flags);
      } catch (error) {
        if (error instanceof ConfigError) {
          // A fault between keys the flags set and keys they left at the defaults.
          for (const problem of error.problems) assert.match(problem, /^[a-z_$][\w.[\]$]*: \S/);
          return;
        }
        assert.ok(error instanceof UsageError, `${args}: threw ${error}`);
        const pairs = givenPairs(args);
        // Every problem line starts with a flag and its text, or names the place.
        let rest = error.message;
        while (rest !== "") {
          const pair = pairs.find(([name, text]) => rest.startsWith(`${name} ${text}: `));
          if (pair === undefined) {
            assert.match(rest, /^command line: /, `${JSON.stringify(rest)} in ${args}`);
          }
          const skip = pair === undefined ? 0 : `${pair[0]} ${pair[1]}: `.length;
          const end = rest.indexOf("\n", skip);
          rest = end < 0 ? "" : rest.slice(end + 1);
        }
      }
    }),
    fuzzParameters("resolveConfig(flags)"),
  );
});
