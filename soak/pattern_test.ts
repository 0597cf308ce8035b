import assert from "node:assert/strict";
import {
  checkPattern,
  fillPattern,
  formatDone,
  formatHeader,
  parseDone,
  parseHeader,
  patternByte,
} from "./pattern.ts";

Deno.test("fillPattern() agrees with patternByte() from any offset, and checkPattern() finds the first wrong byte", () => {
  for (const offset of [0, 1, 2, 3, 4, 65_535, 65_536, 1_000_003]) {
    const bytes = new Uint8Array(200_000);
    fillPattern(7, offset, bytes);
    for (const i of [0, 1, 2, 3, 4, 5, 199_999]) assert.equal(bytes[i], patternByte(7, offset + i));
    assert.equal(checkPattern(7, offset, bytes), -1);
    bytes[123_456] = bytes[123_456]! ^ 1;
    assert.equal(checkPattern(7, offset, bytes), offset + 123_456);
  }
});

Deno.test("patterns differ between seeds and along a stream (a repeat or a swap shows)", () => {
  const a = new Uint8Array(4096);
  const b = new Uint8Array(4096);
  fillPattern(1, 0, a);
  fillPattern(2, 0, b);
  assert.notDeepEqual(a, b);
  // The second half is not the first again: a repeated block would be caught.
  fillPattern(1, 2048, b.subarray(0, 2048));
  assert.notDeepEqual(a.subarray(0, 2048), b.subarray(0, 2048));
  assert.equal(checkPattern(1, 2048, a.subarray(0, 2048)) >= 2048, true);
});

Deno.test("the header line reads back, backend-first or not; anything else is refused", () => {
  const header = { seed: 4294967295, up: 123, down: 8 << 20 };
  assert.deepEqual(parseHeader(formatHeader(header).trimEnd()), header);
  const first = { seed: 7, up: 1, down: 2, backendFirst: true };
  assert.equal(formatHeader(first), "SOAK 7 1 2 backend-first\n");
  assert.deepEqual(parseHeader(formatHeader(first).trimEnd()), first);
  for (
    const bad of [
      "",
      "SOAK",
      "SOAK 1 2",
      "SOAK -1 2 3",
      "SOAK 4294967296 1 1",
      "soak 1 2 3",
      "SOAK 1 2 3 backend-last",
      "SOAK 1 2 3 ",
    ]
  ) {
    assert.equal(parseHeader(bad), undefined, bad);
  }
});

Deno.test("DONE lines read back; a verdict this protocol does not know reads as undefined", () => {
  assert.equal(formatDone(9, { ok: true, count: 100 }), "DONE 9 OK 100");
  assert.equal(formatDone(9, { ok: false, at: 3 }), "DONE 9 BAD 3");
  assert.deepEqual(parseDone("DONE 9 OK 100"), { seed: 9, verdict: { ok: true, count: 100 } });
  assert.deepEqual(parseDone("DONE 9 BAD 3"), { seed: 9, verdict: { ok: false, at: 3 } });
  for (const unknown of ["DONE 9 OK", "DONE 9 GOOD 1", "DONE 9 OK -1", "DONE 9 "]) {
    assert.deepEqual(parseDone(unknown), { seed: 9, verdict: undefined }, unknown);
  }
  for (const notDone of ["", "DONE", "DONE x OK 1", "done 9 OK 1", "DONE 4294967296 OK 1"]) {
    assert.equal(parseDone(notDone), undefined, notDone);
  }
});
