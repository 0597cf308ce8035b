import assert from "node:assert/strict";
import fc from "fast-check";
import { AccessLog, formatAccessJson, formatAccessLine, isoTime, LineWriter } from "./log.ts";
import { exchange, startBalancerProcess, startEchoServer, until } from "./test_util.ts";

const record = {
  time: new Date("2026-11-26T10:00:00.000Z"),
  listener: "web",
  client: "127.0.0.1:40000",
  backend: undefined,
  bytesIn: 6,
  bytesOut: 0,
  durationMs: 2.4,
  end: "connect-failed" as const,
};

Deno.test("formatAccessLine() puts every field in its fixed place", () => {
  assert.equal(
    formatAccessLine(record),
    "2026-11-26T10:00:00.000Z listener=web client=127.0.0.1:40000 backend=- bytes_in=6 " +
      "bytes_out=0 duration_ms=2 end=connect-failed",
  );
});

Deno.test("formatAccessJson() has the same fields, backend null when none", () => {
  assert.deepEqual(JSON.parse(formatAccessJson(record)), {
    time: "2026-11-26T10:00:00.000Z",
    listener: "web",
    client: "127.0.0.1:40000",
    backend: null,
    bytes_in: 6,
    bytes_out: 0,
    duration_ms: 2,
    end: "connect-failed",
  });
});

Deno.test("isoTime() writes exactly what toISOString() does, in any order of times", () => {
  // Times near each other (the cached second) and far apart, in any order,
  // including the years toISOString() writes with a sign.
  const times = fc.array(
    fc.oneof(
      fc.integer({ min: 1_700_000_000_000, max: 1_700_000_003_000 }),
      fc.integer({ min: -62_198_755_200_000, max: 253_402_300_799_999 }),
      fc.integer({ min: -8.64e15, max: 8.64e15 }),
    ),
    { minLength: 1, maxLength: 50 },
  );
  fc.assert(fc.property(times, (list) => {
    for (const ms of list) assert.equal(isoTime(new Date(ms)), new Date(ms).toISOString());
  }));
  assert.equal(isoTime(new Date("2026-11-26T10:00:00.007Z")), "2026-11-26T10:00:00.007Z");
  assert.equal(isoTime(new Date("2026-11-26T10:00:00.070Z")), "2026-11-26T10:00:00.070Z");
  assert.equal(isoTime(new Date("2026-11-26T10:00:01.700Z")), "2026-11-26T10:00:01.700Z");
});

Deno.test("AccessLog appends to its file, and reopen() starts a new one after rotation", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const log = new AccessLog({ path: `${dir}/access.log` });
    assert.equal(log.format, "json"); // not a terminal
    log.write(record);
    log.flush();
    await Deno.rename(`${dir}/access.log`, `${dir}/access.log.1`); // what logrotate does
    log.write({ ...record, listener: "after" });
    log.reopen(); // flushes into the moved file, then opens a new one
    log.write({ ...record, listener: "new" });
    log.flush();
    const lines = async (path: string) =>
      (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l).listener);
    assert.deepEqual(await lines(`${dir}/access.log.1`), ["web", "after"]);
    assert.deepEqual(await lines(`${dir}/access.log`), ["new"]);
    log.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
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

Deno.test("load_balancer.ts --access-log FILE: JSON lines, reopened on SIGUSR2 after rotation", async () => {
  const echo = startEchoServer();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/access.log`;
  const lb = await startBalancerProcess(
    ["--backend", `127.0.0.1:${echo.port}`, "--access-log", path, "--log-format", "json"],
    { permissions: ["--allow-net", `--allow-write=${dir}`] },
  );
  const lines = async (file: string) =>
    (await Deno.readTextFile(file)).trim().split("\n").map((line) => JSON.parse(line));
  const has = (file: string, count: number) => async () =>
    (await lines(file).catch(() => [])).length === count;
  try {
    assert.equal(await exchange(lb.port, "one"), "one");
    await until(has(path, 1), "the first access line written", 1000, 20);
    await Deno.rename(path, `${path}.1`);
    lb.kill("SIGUSR2");
    await lb.waitForLine("stderr", /SIGUSR2: reopened the access log/);
    assert.equal(await exchange(lb.port, "two!"), "two!");
    await until(has(path, 1), "the second access line, in the new file", 1000, 20);
    const [before] = await lines(`${path}.1`);
    const [after] = await lines(path);
    assert.equal(before.bytes_in, 3);
    assert.equal(after.bytes_in, 4);
    assert.equal(after.listener, "default");
    assert.equal(after.end, "client-fin");
  } finally {
    await lb.close();
    await echo.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an access line quotes a value that could forge a field or a line; JSON escapes line breaks too", () => {
  const odd = {
    ...record,
    listener: "web\n2026-11-26T10:00:00.000Z listener=forged",
    client: 'a "b"',
    backend: "-",
    end: "x\u2028y\u007f" as typeof record.end,
  };
  assert.equal(
    formatAccessLine(odd),
    '2026-11-26T10:00:00.000Z listener="web\\n2026-11-26T10:00:00.000Z listener=forged" ' +
      'client="a \\"b\\"" backend="-" bytes_in=6 bytes_out=0 duration_ms=2 end="x\\u2028y\\u007f"',
  );
  const json = formatAccessJson(odd);
  assert.doesNotMatch(json, /[\n\u2028\u007f]/);
  assert.equal(JSON.parse(json).end, "x\u2028y\u007f");
  // Names and addresses are left as they are.
  assert.match(formatAccessLine({ ...record, client: "[::1]:40000" }), / client=\[::1\]:40000 /);
});
