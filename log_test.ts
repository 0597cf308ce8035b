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

Deno.test("LineWriter writes queued lines together, in order, when flushed or full", () => {
  const writes: string[] = [];
  const writer = new LineWriter((bytes) => {
    // Take at most 10 bytes per call, as a pipe may: the writer must loop.
    writes.push(new TextDecoder().decode(bytes.subarray(0, 10)));
    return Math.min(bytes.length, 10);
  }, { maxBytes: 24 });
  writer.line("one");
  writer.line("two");
  assert.deepEqual(writes, []);
  writer.flush();
  assert.equal(writes.join(""), "one\ntwo\n");
  writes.length = 0;
  writer.line("a line long enough"); // 19 bytes: still below 24
  writer.line("to fill it"); // now past 24: written at once
  assert.equal(writes.join(""), "a line long enough\nto fill it\n");
  writer.flush(); // nothing left; no empty write
  assert.equal(writes.join(""), "a line long enough\nto fill it\n");
});
