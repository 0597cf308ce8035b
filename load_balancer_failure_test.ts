/**
 * What peers can do to the balancer, and what must still hold: resets at any
 * moment, clients that never read, descriptor exhaustion, thousands of
 * short connections. All on loopback.
 */

import assert from "node:assert/strict";
import net from "node:net";
import type { Dialer } from "./engine_deno.ts";
import {
  accessRecords,
  connectLoopback,
  exchange,
  FakeClock,
  readAll,
  roundTrip,
  startBalancer,
  startBalancerProcess,
  startEchoServer,
  startServer,
  type TestServer,
  until,
  writeAll,
} from "./test_util.ts";
import { resetConnection } from "./libc.ts";

/** Connects with node:net and resets (RST) as soon as `afterConnect` is done. */
function resettingClient(
  port: number,
  afterConnect: (socket: net.Socket) => Promise<void> = () => Promise.resolve(),
): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    socket.on("error", () => {}); // The reset is ours; nothing to report.
    socket.on("close", () => resolve());
    socket.once("connect", () => {
      afterConnect(socket).then(() => socket.resetAndDestroy(), reject);
    });
  });
}

/** Resolves with the next `count` bytes a node:net socket receives. */
function receive(socket: net.Socket, count: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      total += chunk.length;
      if (total >= count) {
        socket.off("data", onData);
        resolve(Buffer.concat(chunks));
      }
    };
    socket.on("data", onData);
  });
}

/**
 * A backend that reports when each connection it served has ended, so a test
 * can see that the balancer closed the backend side of a failed client.
 */
function startWatchedEcho(): TestServer & { ended: Promise<void>[] } {
  const ended: Promise<void>[] = [];
  const server = startServer((conn) => {
    const done = (async () => {
      const buffer = new Uint8Array(65536);
      try {
        while (true) {
          const read = await conn.read(buffer);
          if (read === null) break;
          await writeAll(conn, buffer.subarray(0, read));
        }
      } catch {
        // Reset by the balancer: ended all the same.
      }
    })();
    ended.push(done);
    return done;
  });
  return Object.assign(server, { ended });
}

/** A connection kept open across a test, proving other traffic is unaffected. */
async function bystander(port: number) {
  const conn = await connectLoopback(port);
  const check = (text: string) => roundTrip(conn, text);
  await check("before");
  return {
    check,
    async finish() {
      await conn.closeWrite();
      assert.equal((await readAll(conn)).length, 0);
      conn.close();
    },
  };
}

Deno.test("clients that reset before they are accepted do not stop the accept loop", async () => {
  const echo = startEchoServer();
  const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`]);
  try {
    // Freeze the balancer so the resets land while the clients wait in the
    // kernel's accept queue; Deno's accept() then throws NotConnected.
    lb.kill("SIGSTOP");
    await Promise.all(Array.from({ length: 20 }, () => resettingClient(lb.port)));
    lb.kill("SIGCONT");
    assert.equal(await exchange(lb.port, "still serving"), "still serving");
    assert.equal(await exchange(lb.port, "and again"), "and again");
    await lb.waitForLine("stdout", /bytes_in=9 .* end=client-fin$/);
  } finally {
    await lb.close();
    await echo.close();
  }
  // The reset clients never reached a backend: Deno's accept() drops them;
  // accept4() hands them over, and the first read reports the reset.
  const ends = lb.stdout.filter((line) => / end=/.test(line));
  const good = ends.filter((line) => / end=client-fin$/.test(line));
  assert.equal(good.length, 2, lb.stdout.join("\n"));
  for (const line of ends.filter((line) => !good.includes(line))) {
    assert.match(line, / backend=- bytes_in=0 bytes_out=0 .* end=client-reset$/);
  }
});

Deno.test("out of descriptors: accept backs off, says so once, and serves again", async () => {
  const echo = startEchoServer();
  // A fresh balancer holds about 25 descriptors; 40 leaves room for a few clients.
  const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`], {
    maxOpenFiles: 40,
  });
  const held: Deno.TcpConn[] = [];
  try {
    const exhausted = lb.waitForLine("stderr", /accept failed: EMFILE/);
    let full = false;
    exhausted.then(() => full = true, () => {});
    for (let i = 0; i < 40 && !full; i++) {
      held.push(await connectLoopback(lb.port));
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await exhausted;
    for (const conn of held.splice(0)) conn.close();
    // Accepting resumes by itself once descriptors are free again.
    assert.equal(
      await exchange(lb.port, "after the shortage"),
      "after the shortage",
      [...lb.stderr, ...lb.stdout].join("\n"),
    );
    await lb.waitForLine("stderr", /accepting again after \d+ failed accept/);
    const warnings = lb.stderr.filter((line) => line.includes("accept failed"));
    assert.equal(warnings.length, 1, warnings.join("\n"));
  } finally {
    for (const conn of held) conn.close();
    await lb.close();
    await echo.close();
  }
});

Deno.test("a backend connect with no descriptor to spare waits for one, and the backend is not blamed", async () => {
  const echo = startEchoServer();
  // The first four connects fail as Deno.connect does when the process is out
  // of descriptors (code EMFILE): one more than --fall; the fifth gets through.
  let attempts = 0;
  const dial: Dialer = async (address, signal) => {
    if (++attempts <= 4) {
      throw Object.assign(new Error("Too many open files (os error 24)"), { code: "EMFILE" });
    }
    return await Deno.connect({ ...address, signal });
  };
  const lb = startBalancer([echo.address], { dial });
  try {
    assert.equal(await exchange(lb.port, "waited"), "waited");
  } finally {
    await lb.close();
    await echo.close();
  }
  const shortages = lb.events.filter((event) => event.type === "descriptor-shortage");
  assert.deepEqual(shortages.map((event) => event.type === "descriptor-shortage" && event.waitMs), [
    10,
    20,
    40,
    80,
  ]);
  assert.equal(lb.events.filter((event) => event.type === "connect-error").length, 0);
  assert.equal(lb.backends[0]!.connectFailures, 0);
  assert.equal(lb.events.filter((event) => event.type === "backend-state").length, 0);
  assert.deepEqual(accessRecords(lb.events).map((record) => record.end), ["client-fin"]);
});

Deno.test("a client reset mid-stream closes its backend connection; others go on", async () => {
  const echo = startWatchedEcho();
  const lb = startBalancer([echo.address]);
  try {
    const other = await bystander(lb.port);
    await resettingClient(lb.port, async (socket) => {
      socket.write("half a request");
      await receive(socket, 14);
    });
    // The backend side of the reset client is closed by the balancer.
    await echo.ended[1];
    await other.check("after the reset");
    await other.finish();
  } finally {
    await lb.close();
    await echo.close();
  }
  const ends = accessRecords(lb.events).map((record) => record.end);
  assert.deepEqual(ends, ["client-reset", "client-fin"]);
});

Deno.test("a client that resets while its backend is dialled: the dial is abandoned, nothing is sent", async () => {
  // A backend that counts what it is sent.
  let received = 0;
  const counting = startServer(async (conn) => {
    const buffer = new Uint8Array(1024);
    try {
      for (let read; (read = await conn.read(buffer)) !== null;) received += read;
    } catch {
      // Reset: counted all the same.
    }
  });
  // A dial that waits for the test, unless the balancer abandons it first.
  let openGate!: () => void;
  const gate = new Promise<void>((resolve) => openGate = resolve);
  const abandoned = Promise.withResolvers<void>();
  const dial: Dialer = async (address, signal) => {
    signal.addEventListener("abort", () => abandoned.resolve(), { once: true });
    await Promise.race([gate, abandoned.promise]);
    return await Deno.connect({ ...address, signal });
  };
  const lb = startBalancer([counting.address], { dial });
  try {
    await resettingClient(lb.port, async (socket) => {
      await new Promise<void>((resolve) => socket.write("data", () => resolve()));
    });
    await abandoned.promise;
    openGate();
    // The client's connection is over, and reported.
    while (lb.balancer.activeConnections > 0) await new Promise((r) => setTimeout(r, 5));
  } finally {
    openGate();
    await lb.close();
    await counting.close();
  }
  const records = accessRecords(lb.events);
  assert.deepEqual(records.map((r) => [r.end, r.bytesIn, r.backend]), [
    ["client-reset", 0, undefined],
  ]);
  assert.equal(received, 0, "the backend was sent nothing");
  assert.equal(lb.backends[0]!.connectFailures, 0, "the client's reset is not the backend's fault");
});

Deno.test({
  name:
    "with reset on (--allow-ffi), a backend's reset reaches the client as a reset, after its bytes",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const resetting = net.createServer((socket) => {
      socket.on("error", () => {});
      socket.once("data", () => socket.write("partial", () => socket.resetAndDestroy()));
    });
    await new Promise<void>((resolve) => resetting.listen(0, "127.0.0.1", resolve));
    const port = (resetting.address() as net.AddressInfo).port;
    const lb = startBalancer([{ hostname: "127.0.0.1", port }], { reset: resetConnection });
    try {
      const conn = await connectLoopback(lb.port);
      await writeAll(conn, new TextEncoder().encode("go"));
      const received: number[] = [];
      const buffer = new Uint8Array(64);
      const ending = await (async () => {
        try {
          for (let read; (read = await conn.read(buffer)) !== null;) {
            received.push(...buffer.subarray(0, read));
          }
          return "clean end";
        } catch (error) {
          return error instanceof Deno.errors.ConnectionReset ? "reset" : String(error);
        }
      })();
      conn.close();
      assert.equal(new TextDecoder().decode(new Uint8Array(received)), "partial");
      assert.equal(ending, "reset", "a cut-short answer must not look complete");
    } finally {
      await lb.close();
      await new Promise((resolve) => resetting.close(resolve));
    }
    assert.deepEqual(accessRecords(lb.events).map((r) => r.end), ["server-reset"]);
  },
});

Deno.test({
  name: "with reset on, connections cut at the drain timeout are reset, not ended cleanly",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const echo = startEchoServer();
    const lb = startBalancer([echo.address], { reset: resetConnection });
    try {
      const conn = await connectLoopback(lb.port);
      await roundTrip(conn, "held open");
      await lb.balancer.shutdown(0);
      await assert.rejects(() => conn.read(new Uint8Array(16)), Deno.errors.ConnectionReset);
      conn.close();
    } finally {
      await lb.close();
      await echo.close();
    }
    assert.deepEqual(accessRecords(lb.events).map((r) => r.end), ["drain-timeout"]);
  },
});

Deno.test("a backend reset mid-stream closes the client; others go on", async () => {
  const echo = startEchoServer();
  // A backend that answers the first chunk with a part, then resets.
  const resetting = net.createServer((socket) => {
    socket.on("error", () => {});
    socket.once("data", () => socket.write("partial", () => socket.resetAndDestroy()));
  });
  await new Promise<void>((resolve) => resetting.listen(0, "127.0.0.1", resolve));
  const resettingPort = (resetting.address() as net.AddressInfo).port;
  const lb = startBalancer([echo.address, { hostname: "127.0.0.1", port: resettingPort }]);
  try {
    const other = await bystander(lb.port); // round robin: the echo backend
    const conn = await connectLoopback(lb.port); // the resetting backend
    await writeAll(conn, new TextEncoder().encode("go"));
    const received: number[] = [];
    const buffer = new Uint8Array(64);
    try {
      while (true) {
        const read = await conn.read(buffer);
        if (read === null) break;
        received.push(...buffer.subarray(0, read));
      }
    } catch (error) {
      assert.ok(error instanceof Deno.errors.ConnectionReset, String(error));
    }
    conn.close();
    assert.equal(new TextDecoder().decode(new Uint8Array(received)), "partial");
    await other.check("after the backend reset");
    await other.finish();
  } finally {
    await lb.close();
    await echo.close();
    await new Promise((resolve) => resetting.close(resolve));
  }
  const ends = accessRecords(lb.events).map((record) => record.end);
  assert.deepEqual(ends, ["server-reset", "client-fin"]);
});

Deno.test("a client that never reads holds back a fast backend: memory stays bounded", async () => {
  // The backend writes as fast as it can until a write has waited 500 ms:
  // the balancer must stop reading from it once the client's side is full,
  // rather than queue what the client does not take.
  const chunk = new Uint8Array(65536);
  let written = 0;
  let stalled = false;
  const limit = 64 * 1024 * 1024;
  const flood = startServer(async (conn) => {
    while (written < limit) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const wait = new Promise<"stalled">((resolve) => {
        timer = setTimeout(() => resolve("stalled"), 500);
      });
      const write = conn.write(chunk);
      const outcome = await Promise.race([write, wait]);
      clearTimeout(timer);
      if (outcome === "stalled") {
        stalled = true;
        await write.catch(() => {}); // Finishes (or fails) once the client goes.
        break;
      }
      written += outcome;
    }
  });
  const lb = startBalancer([flood.address]);
  try {
    const client = await connectLoopback(lb.port);
    while (!stalled && written < limit) await new Promise((resolve) => setTimeout(resolve, 50));
    client.close();
  } finally {
    await lb.close();
    await flood.close();
  }
  assert.ok(stalled, `the backend wrote ${written} bytes without being held back`);
  // What is in flight: the kernel's socket buffers on loopback (a few MiB
  // each way) plus at most one 256 KiB buffer in the balancer — never the whole stream.
  assert.ok(written < 32 * 1024 * 1024, `${written} bytes in flight`);
});

Deno.test("thousands of short connections leave no descriptor behind", async () => {
  const echo = startEchoServer();
  const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`]);
  // The balancer's own descriptors. (Deno reads /proc/PID/fd only with --allow-all; ls may.)
  const descriptors = async () => {
    const { stdout } = await new Deno.Command("ls", { args: [`/proc/${lb.pid}/fd`] }).output();
    return new TextDecoder().decode(stdout).trim().split("\n").sort();
  };
  // An access line is written once both of a connection's sockets are closed.
  const logged = async (count: number) => {
    for (let wait = 0; wait < 1000 && lb.stdout.length < count; wait++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal(lb.stdout.length, count);
  };
  try {
    assert.equal(await exchange(lb.port, "warm up"), "warm up");
    await logged(1);
    const before = await descriptors();
    let next = 0;
    await Promise.all(Array.from({ length: 20 }, async () => {
      while (next < 2000) {
        const text = `short ${next++}`;
        assert.equal(await exchange(lb.port, text), text);
      }
    }));
    await logged(2001);
    assert.deepEqual(await descriptors(), before);
  } finally {
    await lb.close();
    await echo.close();
  }
  assert.ok(lb.stdout.every((line) => line.endsWith(" end=client-fin")));
});

Deno.test("a connection with no byte either way for the idle timeout is closed as idle-timeout", async () => {
  const clock = new FakeClock();
  const echo = startEchoServer();
  const lb = startBalancer([echo.address], { idleTimeoutMs: 100, clock });
  try {
    const busy = await connectLoopback(lb.port);
    const quiet = await connectLoopback(lb.port);
    await roundTrip(quiet, "hello"); // joined; quiet from now on
    // The busy one talks every 30 ms for 300 ms: three idle timeouts' worth, never idle.
    for (let i = 0; i < 10; i++) {
      await roundTrip(busy, `tick ${i}`);
      await clock.tick(30);
    }
    // By now the quiet one has been closed by the balancer.
    assert.equal(await quiet.read(new Uint8Array(8)), null);
    quiet.close();
    await roundTrip(busy, "still here");
    busy.close();
    await until(() => accessRecords(lb.events).length === 2, "both connections reported");
  } finally {
    await lb.close();
    await echo.close();
  }
  const ends = accessRecords(lb.events).map((record) => record.end);
  assert.equal(ends[0], "idle-timeout");
  assert.notEqual(ends[1], "idle-timeout");
});

Deno.test("a half-closed connection with no byte for the half-closed timeout is closed", async () => {
  const clock = new FakeClock();
  // A backend that reads the request to its end, then neither answers nor closes.
  const requestRead = Promise.withResolvers<void>();
  const released = Promise.withResolvers<void>();
  const mute = startServer(async (conn) => {
    await readAll(conn);
    requestRead.resolve();
    await released.promise; // silent, and open, until the test is over
  });
  const lb = startBalancer([mute.address], {
    halfClosedTimeoutMs: 100,
    idleTimeoutMs: 60_000,
    clock,
  });
  try {
    const conn = await connectLoopback(lb.port);
    await writeAll(conn, new TextEncoder().encode("request"));
    await conn.closeWrite();
    await requestRead.promise; // the client's end has reached the backend: half-closed
    await clock.tick(99);
    assert.equal(accessRecords(lb.events).length, 0, "still open before the timeout");
    await clock.tick(50);
    assert.equal(await conn.read(new Uint8Array(8)), null);
    conn.close();
  } finally {
    released.resolve();
    await lb.close();
    await mute.close();
  }
  assert.deepEqual(accessRecords(lb.events).map((record) => record.end), ["half-closed-timeout"]);
});

Deno.test("--maxconn: at the limit the balancer stops accepting until a connection ends", async () => {
  const echo = startEchoServer();
  const lb = startBalancer([echo.address], { maxConnections: 2 });
  try {
    const [a, b] = [await connectLoopback(lb.port), await connectLoopback(lb.port)];
    await roundTrip(a, "a");
    await roundTrip(b, "b");
    // Two joined: the accept loop is parked, so the third stays in the kernel's backlog.
    assert.equal(lb.balancer.paused, true);
    const c = await connectLoopback(lb.port);
    await writeAll(c, new TextEncoder().encode("c"));
    const early = c.read(new Uint8Array(8));
    assert.equal(lb.balancer.activeConnections, 2);
    a.close();
    assert.equal(await early, 1); // answered once a slot came free
    b.close();
    c.close();
  } finally {
    await lb.close();
    await echo.close();
  }
});

Deno.test("--maxconn-per-backend: clients wait in the queue for room, then are served", async () => {
  const echo = startEchoServer();
  const lb = startBalancer([echo.address], { queue: { timeoutMs: 5000 } });
  lb.backends[0]!.maxConnections = 1;
  try {
    const first = await connectLoopback(lb.port);
    await roundTrip(first, "first");
    const second = await connectLoopback(lb.port);
    await writeAll(second, new TextEncoder().encode("second"));
    let answered = false;
    const answer = new Uint8Array(6);
    const reading = second.read(answer).then((read) => {
      answered = true;
      return read;
    });
    await until(() => lb.pool.queue.length === 1, "the second client queued");
    assert.equal(answered, false, "served while the backend was full");
    first.close(); // room on the backend: the waiting client goes through
    assert.equal(await reading, 6);
    assert.equal(new TextDecoder().decode(answer), "second");
    second.close();
    await until(() => accessRecords(lb.events).length === 2, "both reported");
  } finally {
    await lb.close();
    await echo.close();
  }
  assert.deepEqual(accessRecords(lb.events).map((r) => r.end), ["client-fin", "client-fin"]);
});

Deno.test("the queue times out as queue-timeout, and turns clients away as queue-full", async () => {
  const clock = new FakeClock();
  const echo = startEchoServer();
  const lb = startBalancer([echo.address], { queue: { max: 1, timeoutMs: 100 }, clock });
  lb.backends[0]!.maxConnections = 1;
  try {
    const held = await connectLoopback(lb.port);
    await roundTrip(held, "held");
    const waiting = await connectLoopback(lb.port);
    await until(() => lb.pool.queue.length === 1, "the second client queued");
    // The third finds the queue full: closed at once.
    const turnedAway = await connectLoopback(lb.port);
    assert.equal(await turnedAway.read(new Uint8Array(8)), null);
    await clock.tick(99);
    assert.equal(lb.pool.queue.length, 1, "still waiting before the queue timeout");
    await clock.tick(1);
    assert.equal(await waiting.read(new Uint8Array(8)), null);
    turnedAway.close();
    waiting.close();
    held.close();
  } finally {
    await lb.close();
    await echo.close();
  }
  const ends = accessRecords(lb.events).map((r) => r.end);
  assert.deepEqual(ends.slice(0, 2), ["queue-full", "queue-timeout"]);
});

Deno.test("a full backend that is drained does not hold new clients in the queue", async () => {
  const echo = startEchoServer();
  const lb = startBalancer([echo.address], { queue: { timeoutMs: 5000 } });
  lb.backends[0]!.maxConnections = 1;
  try {
    const held = await connectLoopback(lb.port);
    await roundTrip(held, "held");
    lb.backends[0]!.adminState = "draining";
    // No room will ever come for new clients there: closed at once, not after 5 s.
    const turnedAway = await connectLoopback(lb.port);
    assert.equal(await turnedAway.read(new Uint8Array(8)), null);
    turnedAway.close();
    held.close();
  } finally {
    await lb.close();
    await echo.close();
  }
  assert.equal(accessRecords(lb.events)[0]?.end, "no-backend");
});

Deno.test("drain: open connections may finish until the drain timeout, then are cut as drain-timeout", async () => {
  const clock = new FakeClock();
  const echo = startEchoServer();
  const lb = startBalancer([echo.address], { clock });
  try {
    const finishing = await connectLoopback(lb.port);
    const lingering = await connectLoopback(lb.port);
    await roundTrip(finishing, "one");
    await roundTrip(lingering, "two");
    let cut: number | undefined;
    const shutdown = lb.balancer.shutdown(1000).then((result) => cut = result.cut);
    // Refused from now on; the open ones carry on.
    await until(
      () => lb.balancer.paused || lb.balancer.activeConnections === 2,
      "accepting stopped",
    );
    await roundTrip(finishing, "still served while draining");
    await finishing.closeWrite();
    assert.equal((await readAll(finishing)).length, 0);
    finishing.close();
    await until(() => lb.balancer.activeConnections === 1, "the finished one gone");
    await clock.tick(999);
    assert.equal(cut, undefined, "not cut before the drain timeout");
    await clock.tick(1);
    await shutdown;
    assert.equal(cut, 1);
    assert.equal(await lingering.read(new Uint8Array(8)).catch(() => null), null);
    lingering.close();
  } finally {
    await lb.close();
    await echo.close();
  }
  assert.deepEqual(accessRecords(lb.events).map((r) => r.end), ["client-fin", "drain-timeout"]);
});

Deno.test("a bug while placing one client ends that client only, said as internal-error; the next is served", async () => {
  const echo = startEchoServer();
  let picks = 0;
  const lb = startBalancer([{ hostname: "127.0.0.1", port: echo.port }], {
    strategy: {
      pick(backends, { tried }) {
        if (++picks === 1) throw new Error("a bug in a strategy");
        return backends.find((b) => !tried.has(b));
      },
    },
  });
  try {
    const first = await connectLoopback(lb.port);
    await writeAll(first, new TextEncoder().encode("lost\n"));
    assert.equal((await readAll(first)).length, 0); // closed, nothing sent back
    first.close();
    await until(() => lb.events.some((e) => e.type === "internal-error"), "the internal error");
    const error = lb.events.find((e) => e.type === "internal-error");
    assert.match(error?.type === "internal-error" ? error.reason : "", /a bug in a strategy/);
    await until(() => lb.balancer.activeConnections === 0, "the connection let go");
    assert.equal(await exchange(lb.port, "next\n"), "next\n");
  } finally {
    await lb.close();
    await echo.close();
  }
});

Deno.test("a bug once the backend is connected ends that client only, closes the backend's side and gives its count back", async () => {
  const echo = startEchoServer();
  const lb = startBalancer([{ hostname: "127.0.0.1", port: echo.port }]);
  const backend = lb.balancer.backends[0]!;
  const recordConnect = backend.recordConnect.bind(backend);
  let connects = 0;
  backend.recordConnect = (ok, reason) => {
    if (++connects === 1) throw new Error("a bug after the dial");
    recordConnect(ok, reason);
  };
  try {
    const first = await connectLoopback(lb.port);
    assert.equal((await readAll(first)).length, 0); // closed, nothing sent back
    first.close();
    await until(() => lb.events.some((e) => e.type === "internal-error"), "the internal error");
    await until(() => lb.balancer.activeConnections === 0, "the connection let go");
    assert.equal(backend.active, 0, "the backend's count given back");
    assert.equal(await exchange(lb.port, "next\n"), "next\n");
    await until(() => backend.active === 0, "the second one's count given back");
  } finally {
    await lb.close();
    await echo.close();
  }
});

Deno.test("a connect that completes only after its timeout is closed, not joined", async () => {
  const echo = startEchoServer();
  // A dialer that ignores the abort: it connects once the attempt was given up.
  const late: Deno.TcpConn[] = [];
  const dial: Dialer = async (address, signal) => {
    await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
    const conn = await Deno.connect(address);
    late.push(conn);
    return conn;
  };
  const lb = startBalancer([{ hostname: "127.0.0.1", port: echo.port }], {
    dial,
    connectTimeoutMs: 50,
  });
  try {
    const client = await connectLoopback(lb.port);
    await writeAll(client, new TextEncoder().encode("x\n"));
    assert.equal((await readAll(client)).length, 0, "closed without an answer");
    client.close();
    await until(() => lb.balancer.activeConnections === 0, "the client let go");
    assert.deepEqual(accessRecords(lb.events).map((r) => r.end), ["connect-failed"]);
    await until(() => late.length === 1, "the late connect made");
    // Its socket was closed by the balancer: reading it fails, as a closed resource.
    await assert.rejects(late[0]!.read(new Uint8Array(1)));
  } finally {
    await lb.close();
    await echo.close();
  }
});
