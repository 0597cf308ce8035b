import assert from "node:assert/strict";
import { createStrategy, SourceHash } from "./balancer.ts";
import type { Dialer } from "./engine_deno.ts";
import type { Backend } from "./pool.ts";
import {
  accessRecords,
  connectLoopback,
  exchange,
  exchangeFrom,
  FakeClock,
  listenLoopback,
  readAll,
  refusingAddress,
  runScript,
  seededBytes,
  serverOf,
  silentAddress,
  startBalancer,
  startBalancerProcess,
  startEchoServer,
  startServer,
  startTaggedServer,
  writeAll,
} from "./test_util.ts";

/** Which server answered: "1" for "[Server 1] …". */

Deno.test("load balancer: round robin is exact, s1 s2 s3 s1 s2 s3 s1", async () => {
  const servers = ["1", "2", "3"].map(startTaggedServer);
  const lb = startBalancer(servers.map((s) => s.address));
  try {
    const order: string[] = [];
    for (let i = 0; i < 7; i++) order.push(serverOf(await exchange(lb.port, `hello ${i}\n`)));
    assert.deepEqual(order, ["1", "2", "3", "1", "2", "3", "1"]);
  } finally {
    await lb.close();
    await Promise.all(servers.map((s) => s.close()));
  }
});

Deno.test("load balancer: 48 MiB of random bytes, both ways at once, come back identical", async () => {
  const echo = startEchoServer();
  const lb = startBalancer([echo.address]);
  try {
    const data = seededBytes(48 * 1024 * 1024, 42);
    const conn = await connectLoopback(lb.port);
    // Write and read at the same time: the echo sends bytes back while more
    // are still going out, so both directions are busy together.
    const [received] = await Promise.all([
      readAll(conn),
      writeAll(conn, data).then(() => conn.closeWrite()),
    ]);
    conn.close();
    assert.equal(received.length, data.length);
    assert.ok(received.every((byte, i) => byte === data[i]), "echoed bytes differ");
  } finally {
    await lb.close();
    await echo.close();
  }
  const [record] = accessRecords(lb.events);
  assert.equal(record?.bytesIn, 48 * 1024 * 1024);
  assert.equal(record?.bytesOut, 48 * 1024 * 1024);
});

Deno.test("load balancer: a client that half-closes still gets the whole answer", async () => {
  // The backend answers only once it has seen the end of the request.
  const server = startServer(async (conn) => {
    const request = await readAll(conn);
    const answer = `got ${request.length} bytes: ${new TextDecoder().decode(request)}`;
    await writeAll(conn, new TextEncoder().encode(answer));
  });
  const lb = startBalancer([server.address]);
  try {
    assert.equal(await exchange(lb.port, "whole request"), "got 13 bytes: whole request");
  } finally {
    await lb.close();
    await server.close();
  }
  assert.equal(accessRecords(lb.events)[0]?.end, "client-fin");
});

Deno.test("load balancer: a backend that speaks first reaches a client that has sent nothing", async () => {
  const server = startServer(async (conn) => {
    await writeAll(conn, new TextEncoder().encode("220 banner\r\n"));
    await readAll(conn);
  });
  const lb = startBalancer([server.address]);
  try {
    const conn = await connectLoopback(lb.port);
    const buffer = new Uint8Array(64);
    const read = await conn.read(buffer);
    assert.equal(new TextDecoder().decode(buffer.subarray(0, read ?? 0)), "220 banner\r\n");
    await conn.closeWrite();
    assert.equal(await conn.read(buffer), null);
    conn.close();
  } finally {
    await lb.close();
    await server.close();
  }
});

Deno.test("load balancer: a refusing backend is skipped, taken down, and used again once it is back", async () => {
  const down = refusingAddress();
  const up = startTaggedServer("up");
  const clock = new FakeClock();
  const lb = startBalancer([down, up.address], { clock });
  let back;
  try {
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(serverOf(await exchange(lb.port, "x\n")));
    assert.deepEqual(answers, ["up", "up", "up"]);
    const failures = lb.events.filter((e) => e.type === "connect-error");
    assert.equal(failures.length, 3);
    assert.ok(failures.every((e) => e.backend === lb.backends[0]!.name));
    // Three refused connects in a row (--fall 3): it is down, and skipped without trying.
    const states = () => lb.events.filter((e) => e.type === "backend-state");
    assert.deepEqual(states().map((e) => e.type === "backend-state" && `${e.from}->${e.to}`), [
      "up->down",
    ]);
    assert.equal(serverOf(await exchange(lb.port, "x\n")), "up");
    assert.equal(lb.events.filter((e) => e.type === "connect-error").length, 3);

    // It comes back. Once its backoff (1 s) has passed, one client tries it and brings it up.
    back = Deno.listen({ hostname: "127.0.0.1", port: down.port });
    const { serveBackend } = await import("./lab.ts");
    const serving = serveBackend(back, "back");
    await clock.tick(1001);
    const later = [];
    for (let i = 0; i < 4; i++) later.push(serverOf(await exchange(lb.port, "x\n")));
    assert.deepEqual(later.toSorted(), ["back", "back", "up", "up"]);
    assert.deepEqual(states().map((e) => e.type === "backend-state" && `${e.from}->${e.to}`), [
      "up->down",
      "down->up",
    ]);
    back.close();
    await serving;
  } finally {
    await lb.close();
    await up.close();
  }
});

Deno.test("load balancer: a backend that does not answer in --connect-timeout is skipped", async () => {
  const silent = await silentAddress();
  const up = startTaggedServer("up");
  // Long enough that the good backend always answers in time on a busy machine.
  const lb = startBalancer([silent.address, up.address], { connectTimeoutMs: 1000 });
  try {
    // The first client goes to the silent backend first, waits out the timeout, then moves on.
    assert.equal(serverOf(await exchange(lb.port, "x\n")), "up");
    const failure = lb.events.find((e) => e.type === "connect-error");
    assert.ok(failure?.type === "connect-error");
    assert.match(failure.reason, /^TimedOut: no answer in 1000 ms/);
  } finally {
    await lb.close();
    await up.close();
    await silent.close();
  }
});

Deno.test("load balancer: when every backend fails, each is tried once and the client is closed at once", async () => {
  const lb = startBalancer([refusingAddress(), refusingAddress()]);
  try {
    const conn = await connectLoopback(lb.port);
    assert.equal(await conn.read(new Uint8Array(8)), null);
    conn.close();
  } finally {
    await lb.close();
  }
  const failures = lb.events.filter((e) => e.type === "connect-error");
  assert.deepEqual(
    failures.map((e) => e.type === "connect-error" && e.backend),
    lb.backends.map((b) => b.name),
  );
  const [record] = accessRecords(lb.events);
  assert.equal(record?.end, "connect-failed");
  assert.equal(record?.backend, undefined);
});

Deno.test("load balancer: an empty pool closes the client as no-backend", async () => {
  const lb = startBalancer([]);
  try {
    const conn = await connectLoopback(lb.port);
    assert.equal(await conn.read(new Uint8Array(8)), null);
    conn.close();
  } finally {
    await lb.close();
  }
  assert.equal(accessRecords(lb.events)[0]?.end, "no-backend");
});

Deno.test("load balancer: sets TCP_NODELAY on the client and the backend socket", async () => {
  const echo = startEchoServer();
  const calls: string[] = [];
  const spy = (side: string, conn: Deno.TcpConn) => {
    const setNoDelay = conn.setNoDelay.bind(conn);
    conn.setNoDelay = (noDelay?: boolean) => {
      calls.push(`${side}:${noDelay}`);
      setNoDelay(noDelay);
    };
    return conn;
  };
  const real = listenLoopback();
  const listener = {
    addr: real.addr,
    accept: async () => spy("client", await real.accept()),
    close: () => real.close(),
  } as unknown as Deno.TcpListener;
  const dial: Dialer = async (address, signal) =>
    spy("server", await Deno.connect({ ...address, signal }));
  const lb = startBalancer([echo.address], { listener, dial });
  try {
    assert.equal(await exchange(lb.port, "ping"), "ping");
  } finally {
    await lb.close();
    await echo.close();
  }
  assert.deepEqual(calls, ["client:true", "server:true"]);
});

Deno.test("load balancer: source-hash keeps each client address on the backend Maglev gives it", async () => {
  const servers = ["1", "2", "3"].map(startTaggedServer);
  const lb = startBalancer(servers.map((s) => s.address), {
    strategy: createStrategy("source-hash"),
  });
  try {
    // What a Maglev table over the same three backends says for each source.
    const oracle = new SourceHash<Backend>();
    const idOf = (backend: Backend) =>
      String(servers.findIndex((s) => s.port === backend.address.port) + 1);
    for (let host = 2; host <= 9; host++) {
      const source = `127.0.0.${host}`;
      const expected = idOf(oracle.pick(lb.backends, { tried: new Set(), clientAddress: source })!);
      for (let i = 0; i < 3; i++) {
        assert.equal(serverOf(await exchangeFrom(source, lb.port, "x\n")), expected, source);
      }
    }
  } finally {
    await lb.close();
    await Promise.all(servers.map((s) => s.close()));
  }
});

Deno.test("load_balancer.ts: weights and backups from the command line", async () => {
  const servers = ["1", "2", "3"].map(startTaggedServer);
  const lb = await startBalancerProcess([
    "--backend",
    `127.0.0.1:${servers[0]!.port},weight=2`,
    "--backend",
    `127.0.0.1:${servers[1]!.port}`,
    "--backend",
    `127.0.0.1:${servers[2]!.port},backup`,
  ]);
  try {
    const order = [];
    for (let i = 0; i < 6; i++) order.push(serverOf(await exchange(lb.port, "x\n")));
    // Smooth weighted round robin over {2, 1}; the backup gets nothing.
    assert.deepEqual(order, ["1", "2", "1", "1", "2", "1"]);
    // Both regular backends go away: the backup takes over.
    await servers[0]!.close();
    await servers[1]!.close();
    assert.equal(serverOf(await exchange(lb.port, "x\n")), "3");
    assert.match(
      lb.stderr[0]!,
      /backends 127\.0\.0\.1:\d+ \(weight 2\), 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+ \(backup\)$/,
    );
  } finally {
    await lb.close();
    await servers[2]!.close();
  }
});

Deno.test("load_balancer.ts: bad input is one line naming the flag and value, exit 2", async () => {
  const busy = listenLoopback();
  try {
    const cases: [string[], RegExp][] = [
      [["--frobnicate"], /^load_balancer: unknown flag --frobnicate \(see --help\)$/],
      [["--backend", "nonsense"], /^load_balancer: --backend nonsense: expected HOST:PORT/],
      [["--backend", "127.0.0.1:0"], /^load_balancer: --backend 127.0.0.1:0: port must be/],
      [["--backend", "127.0.0.1:65536"], /^load_balancer: --backend 127.0.0.1:65536: port must/],
      [
        ["--backend", "127.0.0.1:5001,weight=0"],
        /^load_balancer: --backend 127.0.0.1:5001,weight=0: expected a whole number 1-256, got 0$/,
      ],
      [["--balance", "fastest"], /^load_balancer: --balance fastest: expected one of round-robin,/],
      [
        ["--listen", `127.0.0.1:${busy.addr.port}`],
        new RegExp(
          `^load_balancer: --listen 127.0.0.1:${busy.addr.port}: EADDRINUSE: Address already in use`,
        ),
      ],
    ];
    for (const [args, message] of cases) {
      const { code, stdout, stderr } = await runScript("load_balancer.ts", args);
      assert.equal(code, 2, args.join(" "));
      assert.equal(stdout, "");
      const lines = stderr.trimEnd().split("\n");
      assert.equal(lines.length, 1, `one line for ${args.join(" ")}: ${stderr}`);
      assert.match(lines[0]!, message);
    }
  } finally {
    busy.close();
  }
});

Deno.test("load_balancer.ts --help prints the flags and exits 0", async () => {
  const { code, stdout } = await runScript("load_balancer.ts", ["--help"]);
  assert.equal(code, 0);
  for (const flag of ["--listen", "--backend", "--connect-timeout", "--drain-timeout"]) {
    assert.ok(stdout.includes(flag), flag);
  }
});

Deno.test("load balancer: an IPv6 listener in front of IPv6 and IPv4 backends, bytes exact both ways", async () => {
  const v6 = Deno.listen({ hostname: "::1", port: 0 });
  const v4 = startEchoServer();
  // An echo on ::1 that tags its answers, so both backends are seen.
  const serving = (async () => {
    for await (const conn of v6) {
      const data = await readAll(conn);
      await writeAll(conn, new Uint8Array([...new TextEncoder().encode("v6:"), ...data]));
      conn.close();
    }
  })();
  const lb = await startBalancerProcess(
    [
      "--listen",
      "[::1]:0",
      "--backend",
      `[::1]:${v6.addr.port}`,
      "--backend",
      `127.0.0.1:${v4.port}`,
    ],
    { listen: false },
  );
  try {
    const answers: string[] = [];
    for (const text of ["one", "two"]) {
      const conn = await Deno.connect({ hostname: "::1", port: lb.port });
      await writeAll(conn, new TextEncoder().encode(text));
      await conn.closeWrite();
      answers.push(new TextDecoder().decode(await readAll(conn)));
      conn.close();
    }
    assert.deepEqual(answers.sort(), ["two", "v6:one"].sort());
  } finally {
    await lb.close();
    v6.close();
    await serving.catch(() => {});
    await v4.close();
  }
});
