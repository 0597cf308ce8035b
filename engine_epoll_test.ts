/**
 * The epoll engine's own guarantees, beyond what the whole suite checks on
 * it (LB_TEST_ENGINE=epoll runs every in-process and process test on it).
 */

import assert from "node:assert/strict";
import { Attempt, type EngineConn, type JoinResult } from "./engine.ts";
import { EpollEngine } from "./engine_epoll.ts";
import { EpollLoop } from "./epoll_loop.ts";
import {
  AF_INET,
  encodeEpollEvent,
  EPOLL_EVENT_BYTES,
  EPOLLIN,
  IPPROTO_TCP,
  SOL_SOCKET,
  Sys,
  TCP_NODELAY,
} from "./libc.ts";
import {
  connectLoopback,
  seededBytes,
  startBalancerProcess,
  startServer,
  until,
  writeAll,
} from "./test_util.ts";

const SO_SNDBUF = 7;
const SO_RCVBUF = 8;

const linux = Deno.build.os === "linux";

/** `engine.dial`, answered as a promise. */
function dial(engine: EpollEngine, port: number): Promise<EngineConn> {
  const { promise, resolve, reject } = Promise.withResolvers<EngineConn>();
  engine.dial({ hostname: "127.0.0.1", port }, new Attempt(), (server, error) => {
    if (server === undefined) reject(error);
    else resolve(server);
  });
  return promise;
}

/** `engine.join`, and its end as a promise. */
function join(engine: EpollEngine, client: EngineConn, server: EngineConn) {
  const { promise: ended, resolve } = Promise.withResolvers<JoinResult>();
  return { joined: engine.join(client, server, resolve), ended };
}

/**
 * A client accepted by `engine`'s listener (watched) and a backend dialled
 * for it, not yet joined; `close()` closes the test's own ends and the engine.
 */
async function clientAndBackend(engine: EpollEngine) {
  const backendListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const listener = engine.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.address.port });
  const accepted = await listener.accept();
  engine.watch(accepted, () => {});
  const server = await dial(engine, backendListener.addr.port);
  const backend = await backendListener.accept();
  return {
    client,
    accepted,
    server,
    backend,
    async close() {
      for (const conn of [client, backend]) {
        try {
          conn.close();
        } catch {
          // Closed by the test already.
        }
      }
      listener.close();
      backendListener.close();
      await engine.dispose();
    },
  };
}

Deno.test({
  name:
    "a descriptor closed and reused within one batch: its stale event never reaches the new owner",
  ignore: !linux,
  fn: async () => {
    const loop = new EpollLoop();
    const sys = new Sys();
    const seen: string[] = [];
    // Two eventfds stand in for sockets: the kernel reuses the lowest free
    // number. Test modules run in parallel share this process's descriptor
    // table, so another may take the number in between: try again.
    let first = -1;
    let second = -2;
    let stale = 0;
    for (let attempt = 0; attempt < 100 && second !== first; attempt++) {
      if (second >= 0) sys.close(second);
      first = sys.eventfd();
      loop.add(first, EPOLLIN, { onEvents: () => seen.push("first owner") });
      stale = loop.generation(first)!;
      loop.close(first);
      second = sys.eventfd();
    }
    assert.equal(second, first, "the number is reused within 100 tries");
    loop.add(second, EPOLLIN, { onEvents: () => seen.push("second owner") });
    // One batch, as epoll_wait could hand it over: the old registration's
    // event, then the new one's.
    const events = new Uint8Array(EPOLL_EVENT_BYTES * 2);
    const view = new DataView(events.buffer);
    encodeEpollEvent(view, 0, EPOLLIN, first, stale);
    encodeEpollEvent(view, 1, EPOLLIN, second, loop.generation(second)!);
    loop.dispatch(view, 2);
    assert.deepEqual(seen, ["second owner"]);
    loop.close(second);
    await loop.dispose();
  },
});

Deno.test({
  name: "epoll engine as a process: 50 MB through a client that stalls, exact, with RSS bounded",
  ignore: !linux,
  fn: async () => {
    const size = 50 * 1024 * 1024;
    const data = seededBytes(size, 7);
    let stalled = Promise.withResolvers<void>();
    // A backend that writes 50 MB as fast as the balancer takes it, then ends.
    const flood = startServer(async (conn) => {
      for (let at = 0; at < size;) {
        const end = Math.min(size, at + 65536);
        const timer = setTimeout(() => stalled.resolve(), 300);
        const written = await conn.write(data.subarray(at, end));
        clearTimeout(timer);
        at += written;
      }
      await conn.closeWrite();
    });
    const root = new URL(".", import.meta.url).pathname;
    const lb = await startBalancerProcess(
      ["--engine", "epoll", "--backend", `127.0.0.1:${flood.port}`],
      { permissions: ["--allow-net", "--allow-ffi", `--allow-read=${root}`] },
    );
    const rssKiB = async () => {
      const { stdout } = await new Deno.Command("ps", {
        args: ["-o", "rss=", "-p", String(lb.pid)],
      })
        .output();
      return Number(new TextDecoder().decode(stdout).trim());
    };
    try {
      const client = await connectLoopback(lb.port);
      const received = new Uint8Array(size);
      let got = 0;
      // Take the first megabyte, then stop reading until the backend is held back.
      while (got < 1024 * 1024) got += (await client.read(received.subarray(got)))!;
      const before = await rssKiB();
      await stalled.promise;
      const during = await rssKiB();
      // Short writes and EAGAIN on the client side have held the backend back:
      // the balancer keeps one chunk, never the stream.
      assert.ok(during - before < 32 * 1024, `RSS grew ${during - before} KiB while stalled`);
      stalled = Promise.withResolvers<void>();
      while (got < size) {
        const read = await client.read(received.subarray(got));
        if (read === null) break;
        got += read;
      }
      assert.equal(await client.read(new Uint8Array(1)), null, "then the end");
      client.close();
      assert.equal(got, size);
      assert.ok(received.every((byte, i) => byte === data[i]), "every byte, in order");
    } finally {
      await lb.close();
      await flood.close();
    }
  },
});

Deno.test({
  name:
    "what a client sent while its backend was dialled arrives whole and in order, past a short write",
  ignore: !linux,
  fn: async () => {
    const sys = new Sys();
    // A backend with a small receive buffer, accepted only once everything is sent.
    const backend = sys.socket(AF_INET);
    sys.setInt(backend, SOL_SOCKET, SO_RCVBUF, 4096);
    sys.bind(backend, { hostname: "127.0.0.1", port: 0 });
    sys.listen(backend, 16);
    const port = sys.localAddress(backend)!.port;
    const engine = new EpollEngine();
    const listener = engine.listen({ hostname: "127.0.0.1", port: 0 });
    const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.address.port });
    const accepted = await listener.accept();
    engine.watch(accepted, () => {});
    // Two chunks while "dialling": the first will not fit in one write.
    await writeAll(client, new Uint8Array(30000).fill(65));
    await until(
      () => (accepted as unknown as { early: { bytes: number } }).early.bytes >= 30000,
      "A read",
    );
    await writeAll(client, new Uint8Array(30000).fill(66));
    await until(
      () => (accepted as unknown as { early: { bytes: number } }).early.bytes >= 60000,
      "B read",
    );
    const server = await dial(engine, port);
    sys.setInt((server as unknown as { fd: number }).fd, SOL_SOCKET, SO_SNDBUF, 4096);
    const { joined, ended } = join(engine, accepted, server);
    await client.closeWrite();
    let fd = -1;
    await until(() => (fd = sys.accept(backend)) >= 0, "the backend's accept");
    const got: number[] = [];
    const buffer = new Uint8Array(65536);
    const pointer = Deno.UnsafePointer.of(buffer);
    await until(() => {
      const read = sys.recv(fd, pointer, buffer.length);
      if (read > 0) got.push(...buffer.subarray(0, read));
      return read === 0;
    }, "the backend's end of stream");
    sys.close(fd);
    sys.close(backend);
    assert.equal(got.length, 60000);
    assert.equal(got.indexOf(66), 30000, "every A before the first B");
    joined.cut("aborted");
    await ended;
    client.close();
    listener.close();
    await engine.dispose();
  },
});

Deno.test({
  name: "a reset on a side that has ended is passed on at once, not spun on",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine();
    const { client, accepted, server, backend, close } = await clientAndBackend(engine);
    const { ended } = join(engine, accepted, server);
    await backend.closeWrite(); // the server's end, passed to the client
    assert.equal(await client.read(new Uint8Array(8)), null);
    await writeAll(client, new Uint8Array([120])); // reaches the backend, which never reads it
    await until(() => false, "a moment", 20).catch(() => {});
    backend.close(); // unread bytes: the backend's kernel answers with a reset
    // The join settles as a reset (it used to spin on the error event, unsettled).
    const result = await ended;
    assert.equal(result.end, "server-reset");
    await close();
  },
});

Deno.test({
  name: "a backend that hung up behind a client that stalls: no spinning, every byte delivered",
  ignore: !linux,
  fn: async () => {
    const loop = new EpollLoop();
    const engine = new EpollEngine({ loop });
    const sys = new Sys();
    // More than the client's small buffers take, less than the balancer's
    // receive buffer holds: the backend's end of stream arrives while the
    // balancer still holds bytes back for the client.
    const size = 96 * 1024;
    const data = seededBytes(size, 11);
    const backendListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const listener = engine.listen({ hostname: "127.0.0.1", port: 0 });
    const client = sys.socket(AF_INET);
    sys.setInt(client, SOL_SOCKET, SO_RCVBUF, 4096);
    sys.connect(client, { hostname: "127.0.0.1", port: listener.address.port });
    const accepted = await listener.accept();
    sys.setInt((accepted as unknown as { fd: number }).fd, SOL_SOCKET, SO_SNDBUF, 4096);
    engine.watch(accepted, () => {});
    const server = await dial(engine, backendListener.addr.port);
    const backend = await backendListener.accept();
    const { ended } = join(engine, accepted, server);
    // The client is done sending; the backend answers and closes, so its
    // socket is hung up (both ways shut) behind the stalled client.
    sys.shutdownWrite(client);
    assert.equal(await backend.read(new Uint8Array(8)), null);
    await writeAll(backend, data);
    backend.close();
    // A while of the client not reading: the loop must not wake for nothing.
    const before = loop.wakeUps;
    await until(() => false, "a while", 200).catch(() => {});
    assert.ok(loop.wakeUps - before < 50, `${loop.wakeUps - before} wake-ups while stalled`);
    const got: number[] = [];
    const buffer = new Uint8Array(65536);
    const pointer = Deno.UnsafePointer.of(buffer);
    await until(() => {
      const read = sys.recv(client, pointer, buffer.length);
      if (read > 0) got.push(...buffer.subarray(0, read));
      return read === 0;
    }, "the client's end of stream");
    sys.close(client);
    assert.deepEqual(new Uint8Array(got), data);
    const result = await ended;
    assert.equal(result.bytesFromServer, size);
    listener.close();
    backendListener.close();
    await engine.dispose();
  },
});

Deno.test({
  name: "Nagle is off on both sides: the accepted socket (from its listener) and the dialled one",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine();
    const sys = new Sys();
    const { accepted, server, close } = await clientAndBackend(engine);
    for (const conn of [accepted, server]) {
      const fd = (conn as unknown as { fd: number }).fd;
      assert.equal(sys.getInt(fd, IPPROTO_TCP, TCP_NODELAY), 1);
    }
    await engine.close(accepted);
    await engine.close(server);
    await close();
  },
});

Deno.test({
  name: "a client that fills what may wait before its backend answers, then resets: seen at once",
  ignore: !linux,
  fn: async () => {
    const loop = new EpollLoop();
    const engine = new EpollEngine({ loop });
    const sys = new Sys();
    const listener = engine.listen({ hostname: "127.0.0.1", port: 0 });
    const client = sys.socket(AF_INET);
    sys.connect(client, { hostname: "127.0.0.1", port: listener.address.port });
    const accepted = await listener.accept();
    let gone = false;
    engine.watch(accepted, () => gone = true);
    // More than the balancer keeps for a client whose backend is not there yet.
    const chunk = new Uint8Array(96 * 1024).fill(7);
    const pointer = Deno.UnsafePointer.of(chunk);
    let sent = 0;
    await until(() => {
      const written = sys.send(client, pointer, chunk.length - sent);
      if (written > 0) sent += written;
      return (accepted as unknown as { early: { bytes: number } }).early.bytes >= 64 * 1024;
    }, "the balancer has taken all it keeps");
    const before = loop.wakeUps;
    sys.lingerZero(client);
    sys.close(client); // a reset
    await until(() => gone, "the reset seen");
    await until(() => false, "a while", 50).catch(() => {});
    assert.ok(loop.wakeUps - before < 20, `${loop.wakeUps - before} wake-ups`);
    await engine.close(accepted);
    listener.close();
    await engine.dispose();
  },
});

Deno.test({
  name: "an owned loop handles a message that lagged its wake-up before it waits again",
  ignore: !linux,
  fn: async () => {
    const loop = new EpollLoop({ owned: true });
    let timerFired = false;
    let handled = false;
    // A wait now would last until this timer.
    loop.setTimer(() => timerFired = true, 2000);
    loop.nudge(); // a message is on its way
    let looks = 0;
    await loop.runOwned(() => handled, () => {
      // The first look finds nothing yet (the message lags its wake-up); the
      // second takes it, and its handling runs in a promise callback.
      if (++looks === 1) return false;
      queueMicrotask(() => handled = true);
      return true;
    });
    assert.equal(timerFired, false, "the loop waited before handling the message");
    await loop.dispose();
  },
});

Deno.test({
  name:
    "an owned loop with nothing to watch lets a promise it settles for (a lookup) finish, rather than block",
  ignore: !linux,
  fn: async () => {
    const loop = new EpollLoop({ owned: true });
    let timerFired = false;
    // A wait now, after its turn, would last until this timer.
    loop.setTimer(() => timerFired = true, 5000);
    let settled = false;
    // Settled by a task of the thread's event loop, as a lookup is: a real
    // timer, as what is tested is that the thread's event loop gets to run.
    loop.settle(new Promise((resolve) => setTimeout(resolve, 30))).then(() => settled = true);
    // Without its turns, the loop would block until its timer: 5 s, then fail.
    await loop.runOwned(() => settled || timerFired, () => true);
    assert.ok(settled, "settled");
    assert.equal(timerFired, false, "settled before the loop's own timer");
    await loop.dispose();
  },
});
