/**
 * The soak's command line:
 * `deno task soak [--quick] [--minutes N] [--engine epoll|deno] [--seed N] [--out DIR]`.
 *
 * @module
 */

import { UsageError } from "../flags.ts";

export { UsageError };

/** What a soak run is asked to do. */
export interface SoakOptions {
  /** How long the load and the faults run. @default 10 (`--quick`: 1) */
  minutes: number;
  /** The balancer's engine. @default "epoll" */
  engine: "epoll" | "deno";
  /** The seed of every schedule: load sizes, faults, their targets. @default a new one */
  seed: number;
  /** Where the report goes. @default "soak/results" */
  out: string;
  /** A one-minute run, as CI does. @default false */
  quick: boolean;
  /** `--help` was asked for: print {@linkcode USAGE} and do nothing else. @default false */
  help: boolean;
}

/** The `--help` text. */
export const USAGE =
  `Usage: deno task soak [--quick] [--minutes N] [--engine epoll|deno] [--seed N] [--out DIR]
  --quick       a one-minute run, as CI does
  --minutes N   how long the load and the faults run, 1-1440 (default 10; --quick: 1)
  --engine E    the balancer's engine: epoll (default) or deno
  --seed N      the load and fault schedule's seed, 0-4294967295 (default: a new one, printed)
  --out DIR     where the report goes (default soak/results)`;

const MAX_MINUTES = 1440;
const MAX_SEED = 0xffffffff;

/**
 * Reads the flags (`--flag value` or `--flag=value`).
 *
 * @throws {UsageError} naming the flag, the value and what was expected
 */
export function parseSoakArgs(
  args: readonly string[],
  defaultOut = new URL("results", import.meta.url).pathname,
  newSeed = () => Math.floor(Math.random() * 2 ** 31),
): SoakOptions {
  const given = new Map<string, string>();
  let quick = false;
  let help = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const [flag, inline] = arg.startsWith("--") && arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined];
    if (flag === "--quick" || flag === "--help" || flag === "-h") {
      if (inline !== undefined) throw new UsageError(`${flag} takes no value: got ${arg}`);
      if (flag === "--quick") quick = true;
      else help = true;
    } else if (["--minutes", "--engine", "--seed", "--out"].includes(flag)) {
      if (given.has(flag)) throw new UsageError(`${flag} is given twice`);
      const value = inline ?? args[++i];
      if (value === undefined) throw new UsageError(`${flag} needs a value (see --help)`);
      given.set(flag, value);
    } else {
      throw new UsageError(
        `${flag.startsWith("-") ? "unknown flag" : "unexpected argument"} ${arg}: ` +
          `expected --quick, --minutes N, --engine E, --seed N or --out DIR`,
      );
    }
  }
  const minutesText = given.get("--minutes");
  if (quick && minutesText !== undefined) {
    throw new UsageError(
      `--quick and --minutes ${minutesText}: --quick is a one-minute run; give one or the other`,
    );
  }
  const minutes = minutesText === undefined
    ? (quick ? 1 : 10)
    : wholeNumber("--minutes", minutesText, 1, MAX_MINUTES);
  const engine = given.get("--engine") ?? "epoll";
  if (engine !== "epoll" && engine !== "deno") {
    throw new UsageError(`--engine ${engine}: expected epoll or deno`);
  }
  const seedText = given.get("--seed");
  const seed = seedText === undefined ? newSeed() : wholeNumber("--seed", seedText, 0, MAX_SEED);
  const out = given.get("--out") ?? defaultOut;
  if (out === "") throw new UsageError(`--out "": expected a directory`);
  return { minutes, engine, seed, out, quick, help };
}

// Decimal digits only: `0x10`, `1e3`, `-1` and `2.5` are refused, not read
// as something else.
function wholeNumber(flag: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^[0-9]+$/.test(text) || value < min || value > max) {
    throw new UsageError(`${flag} ${text}: expected a whole number ${min}-${max}`);
  }
  return value;
}
