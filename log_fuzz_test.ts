/**
 * Property tests for the access-log formats: whatever a record holds (line
 * breaks, quotes, `key=value` look-alikes, control characters, any Unicode,
 * huge numbers), it is written as exactly one line that reads back to the
 * record: no field can forge another field or another line. Seeds are
 * printed; `LB_FUZZ_SEED=N` replays one (see fuzzParameters).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import type { AccessRecord } from "./events.ts";
import { formatAccessJson, formatAccessLine } from "./log.ts";
import { fuzzParameters } from "./test_util.ts";

/** Strings a log line must not carry raw: C0 and C1 controls, DEL, and the Unicode line breaks. */
// deno-lint-ignore no-control-regex -- control characters are what it looks for
const LINE_BREAKING = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

const oddText = fc.oneof(
  fc.constantFrom(
    "",
    "-",
    " ",
    "web",
    "127.0.0.1:40000",
    "[::1]:5001",
    "a\nb",
    "a\r\nb",
    "\u2028",
    "\u0085",
    "\u001b[31mred",
    '"',
    "\\",
    "x end=client-fin",
    "x\n2026-11-26T10:00:00.000Z listener=forged",
    "\ud800",
    "🦕",
  ),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: fc.constantFrom("a", " ", "=", '"', "\\", "\n", "\t", "\u007f", "-") }),
);

const bigNumber = fc.oneof(
  fc.nat(),
  fc.maxSafeNat(),
  fc.constantFrom(0, 2 ** 53, 1e21, Number.MAX_VALUE),
);

const record: fc.Arbitrary<AccessRecord> = fc.record({
  time: fc.date({ noInvalidDate: true }),
  listener: oddText,
  client: oddText,
  backend: fc.option(oddText, { nil: undefined }),
  bytesIn: bigNumber,
  bytesOut: bigNumber,
  durationMs: fc.oneof(bigNumber, fc.double({ min: 0, max: 1e300, noNaN: true })),
  end: oddText,
}) as fc.Arbitrary<AccessRecord>;

/** Reads a text access line back into its time and fields, in their order. */
function readLine(line: string): { time: string; fields: [string, string][] } {
  const space = line.indexOf(" ");
  const fields: [string, string][] = [];
  const field = / ([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)/y;
  field.lastIndex = space;
  while (field.lastIndex < line.length) {
    const match = field.exec(line);
    assert.ok(match, `unreadable from ${field.lastIndex}: ${JSON.stringify(line)}`);
    const [, key, value] = match as unknown as [string, string, string];
    fields.push([key, value.startsWith('"') ? JSON.parse(value) : value]);
  }
  return { time: line.slice(0, space), fields };
}

Deno.test("formatAccessLine(): any record is one line whose fields read back as they were", () => {
  fc.assert(
    fc.property(record, (record) => {
      const line = formatAccessLine(record);
      assert.doesNotMatch(line, LINE_BREAKING);
      const { time, fields } = readLine(line);
      assert.equal(time, record.time.toISOString());
      assert.deepEqual(fields, [
        ["listener", record.listener],
        ["client", record.client],
        ["backend", record.backend ?? "-"],
        ["bytes_in", String(record.bytesIn)],
        ["bytes_out", String(record.bytesOut)],
        ["duration_ms", String(Math.round(record.durationMs))],
        ["end", record.end],
      ]);
      // `-` alone means no backend; a backend named `-` is quoted.
      if (record.backend === "-") assert.match(line, / backend="-" /);
    }),
    fuzzParameters("formatAccessLine(record)"),
  );
});

Deno.test("formatAccessJson(): any record is one JSON line holding the record's values", () => {
  fc.assert(
    fc.property(record, (record) => {
      const line = formatAccessJson(record);
      assert.doesNotMatch(line, LINE_BREAKING);
      assert.deepEqual(JSON.parse(line), {
        time: record.time.toISOString(),
        listener: record.listener,
        client: record.client,
        backend: record.backend ?? null,
        bytes_in: record.bytesIn,
        bytes_out: record.bytesOut,
        duration_ms: Math.round(record.durationMs),
        end: record.end,
      });
    }),
    fuzzParameters("formatAccessJson(record)"),
  );
});
