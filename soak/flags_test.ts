import assert from "node:assert/strict";
import { parseSoakArgs, UsageError } from "./flags.ts";

const parse = (...args: string[]) => parseSoakArgs(args, "/out", () => 77);

Deno.test("parseSoakArgs(): defaults, --quick, and every flag in both spellings", () => {
  assert.deepEqual(parse(), {
    minutes: 10,
    engine: "epoll",
    seed: 77,
    out: "/out",
    quick: false,
    help: false,
  });
  assert.equal(parse("--quick").minutes, 1);
  assert.deepEqual(
    parse("--minutes", "3", "--engine", "deno", "--seed", "0", "--out", "x"),
    { minutes: 3, engine: "deno", seed: 0, out: "x", quick: false, help: false },
  );
  assert.deepEqual(
    parse("--minutes=1440", "--engine=epoll", "--seed=4294967295", "--out=d"),
    { minutes: 1440, engine: "epoll", seed: 4294967295, out: "d", quick: false, help: false },
  );
  assert.equal(parse("--help").help, true);
});

Deno.test("parseSoakArgs(): a bad value is named with its flag and what was expected", () => {
  const cases: [string[], string][] = [
    [["--minutes", "0"], "--minutes 0: expected a whole number 1-1440"],
    [["--minutes", "1441"], "--minutes 1441: expected a whole number 1-1440"],
    [["--minutes", "2.5"], "--minutes 2.5: expected a whole number 1-1440"],
    [["--minutes=ten"], "--minutes ten: expected a whole number 1-1440"],
    [["--seed", "0x10"], "--seed 0x10: expected a whole number 0-4294967295"],
    [["--seed", "-1"], "--seed -1: expected a whole number 0-4294967295"],
    [["--seed", "1e3"], "--seed 1e3: expected a whole number 0-4294967295"],
    [["--seed", "4294967296"], "--seed 4294967296: expected a whole number 0-4294967295"],
    [["--engine", "uring"], "--engine uring: expected epoll or deno"],
    [
      ["--quick", "--minutes", "10"],
      "--quick and --minutes 10: --quick is a one-minute run; give one or the other",
    ],
    [
      ["--minutes", "10", "--quick"],
      "--quick and --minutes 10: --quick is a one-minute run; give one or the other",
    ],
    [["--seed"], "--seed needs a value (see --help)"],
    [["--seed", "1", "--seed", "2"], "--seed is given twice"],
    [["--quick=yes"], "--quick takes no value: got --quick=yes"],
    [["--out="], '--out "": expected a directory'],
    [
      ["--fast"],
      "unknown flag --fast: expected --quick, --minutes N, --engine E, --seed N or --out DIR",
    ],
    [
      ["10"],
      "unexpected argument 10: expected --quick, --minutes N, --engine E, --seed N or --out DIR",
    ],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parse(...args), (error: unknown) => {
      assert.ok(error instanceof UsageError, args.join(" "));
      assert.equal(error.message, message);
      return true;
    });
  }
});
