import assert from "node:assert/strict";
import { formatAccessLine, LineWriter } from "./log.ts";

Deno.test("formatAccessLine() puts every field in its fixed place", () => {
  assert.equal(
    formatAccessLine({
      time: new Date("2026-11-26T10:00:00.000Z"),
      client: "127.0.0.1:40000",
      backend: undefined,
      bytesIn: 6,
      bytesOut: 0,
      durationMs: 2.4,
      end: "connect-failed",
    }),
    "2026-11-26T10:00:00.000Z client=127.0.0.1:40000 backend=- bytes_in=6 bytes_out=0 " +
      "duration_ms=2 end=connect-failed",
  );
});

Deno.test("LineWriter writes queued lines together, in order, in whole-line chunks", () => {
  const writes: string[] = [];
  const writer = new LineWriter((bytes) => {
    writes.push(new TextDecoder().decode(bytes));
    return bytes.length;
  }, { maxBytes: 24 });
  writer.line("one");
  writer.line("two");
  assert.deepEqual(writes, []);
  writer.flush();
  assert.deepEqual(writes, ["one\ntwo\n"]);
  writes.length = 0;
  writer.line("a line long enough"); // 19 bytes: below 24, waits
  writer.line("to fill it"); // 30 bytes queued: written at once, in two whole-line writes
  assert.deepEqual(writes, ["a line long enough\n", "to fill it\n"]);
  writer.flush(); // nothing left: no empty write
  assert.equal(writes.length, 2);
});

Deno.test("LineWriter keeps writing until the sink has taken every byte", () => {
  let taken = "";
  const writer = new LineWriter((bytes) => {
    const part = bytes.subarray(0, 4); // a sink that takes 4 bytes per call
    taken += new TextDecoder().decode(part);
    return part.length;
  });
  writer.line("0123456789");
  writer.flush();
  assert.equal(taken, "0123456789\n");
});
