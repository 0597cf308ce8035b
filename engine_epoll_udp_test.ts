/**
 * engine_epoll_udp.ts on real loopback sockets: datagrams whole through a
 * listener, a dialled socket and a backend, replies to the right client,
 * batches both ways, ICMP errors, closing.
 *
 * The policy here is the smallest there is (`relay`): one dialled socket per
 * client key, replies sent back to the client's peer. Peers are Deno's own
 * UDP sockets, or raw ones (libc.ts) where a test needs to send many
 * datagrams before the loop can look.
 */

import assert from "node:assert/strict";
import type { HostPort } from "./address.ts";
import type { DatagramPeer, DatagramSocket } from "./engine.ts";
import { EpollEngine } from "./engine_epoll.ts";
import type { EpollDatagramListener } from "./engine_epoll_udp.ts";
import { EpollLoop } from "./epoll_loop.ts";
import { AF_INET, EAGAIN, SOCK_DGRAM, Sys } from "./libc.ts";
import { udpLoopback, until } from "./test_util.ts";

const linux = Deno.build.os === "linux";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * `promise`, or a failure naming `what` once `ms` have passed: a guard that
 * turns a datagram that never comes into a message instead of a hang, not a
 * bound on how fast anything must be.
 */
async function within<T>(promise: Promise<T>, what: string, ms = 30_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Each client sends `I.0` … `I.4` (all before the loop looks), then every
 * reply is collected: each client must get its own five back, in order.
 */
async function fiveRoundsEach(
  clients: { send(text: string): void; receive(): string | undefined }[],
) {
  for (let round = 0; round < 5; round++) {
    for (const [i, client] of clients.entries()) client.send(`${i}.${round}`);
  }
  const got = clients.map(() => [] as string[]);
  await until(() => {
    clients.forEach((client, i) => {
      for (let reply = client.receive(); reply !== undefined; reply = client.receive()) {
        got[i]!.push(reply);
      }
    });
    return got.every((replies) => replies.length === 5);
  }, `${clients.length * 5} replies`);
  got.forEach((replies, i) => assert.deepEqual(replies, [0, 1, 2, 3, 4].map((r) => `${i}.${r}`)));
}

function portOf(conn: Deno.DatagramConn): number {
  return (conn.addr as Deno.NetAddr).port;
}

/** A backend that answers each datagram with the same bytes. */
function startEcho(hostname = "127.0.0.1") {
  const conn = udpLoopback(hostname);
  let closed = false;
  const serving = (async () => {
    while (!closed) {
      try {
        const [bytes, from] = await conn.receive();
        await conn.send(bytes, from);
      } catch {
        // Closed, or a send that failed: go on until closed.
      }
    }
  })();
  return {
    address: { hostname, port: portOf(conn) } as HostPort,
    async close() {
      closed = true;
      conn.close();
      await serving;
    },
  };
}

/**
 * The smallest policy over the seam: each client key gets a socket of its
 * own towards `backend`; what comes back goes to the client's peer.
 */
function relay(engine: EpollEngine, backend: HostPort, hostname = "127.0.0.1") {
  const flows = new Map<string | number, { peer: DatagramPeer; socket: DatagramSocket }>();
  const errors: string[] = [];
  const listener = engine.listenDatagrams({ hostname, port: 0 }, {}, (bytes, key) => {
    let flow = flows.get(key);
    if (flow === undefined) {
      const peer = listener.sender();
      const socket = engine.dialDatagrams(backend, {
        onDatagram: (reply) => listener.send(reply, peer),
        onError: (reason) => errors.push(reason),
      });
      flow = { peer, socket };
      flows.set(key, flow);
    }
    flow.socket.send(bytes);
  }) as EpollDatagramListener;
  return {
    listener,
    flows,
    errors,
    close() {
      for (const flow of flows.values()) flow.socket.close();
      listener.close();
    },
  };
}

/** A raw nonblocking UDP socket connected to `port` on loopback: sends at once, reads without waiting. */
function rawClient(sys: Sys, port: number) {
  const fd = sys.socket(AF_INET, SOCK_DGRAM);
  assert.equal(sys.connect(fd, { hostname: "127.0.0.1", port }), 0);
  const buffer = new Uint8Array(65536);
  const pointer = Deno.UnsafePointer.of(buffer);
  return {
    fd,
    send(text: string): void {
      const bytes = encoder.encode(text);
      buffer.set(bytes);
      assert.equal(sys.send(fd, pointer, bytes.length), bytes.length);
    },
    /** The next datagram waiting, or undefined. */
    receive(): string | undefined {
      const read = sys.recv(fd, pointer, buffer.length);
      if (read === -EAGAIN) return undefined;
      assert.ok(read >= 0, `read: ${read}`);
      return decoder.decode(buffer.subarray(0, read));
    },
    close: () => sys.close(fd),
  };
}

/** Bytes of `size`, each a function of its place and `seed`. */
function pattern(size: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + seed) & 0xff;
  return bytes;
}

/** Whether this machine can bind a UDP socket on ::1. */
function hasIpv6(): boolean {
  try {
    udpLoopback("::1").close();
    return true;
  } catch {
    return false;
  }
}

// Sizes 0, 1, 1400 and 65507 (the longest IPv4 payload) from one client,
// through `hostname`'s listener and backend, back in order and exact.
async function sizesRoundTrip(hostname: string): Promise<void> {
  const engine = new EpollEngine({ loop: new EpollLoop() });
  const echo = startEcho(hostname);
  const lb = relay(engine, echo.address, hostname);
  const client = udpLoopback(hostname);
  try {
    const to: Deno.NetAddr = { transport: "udp", hostname, port: lb.listener.address.port };
    const sent = [0, 1, 1400, 65507].map((size, i) => pattern(size, i));
    for (const bytes of sent) await client.send(bytes, to);
    for (const bytes of sent) {
      const [got, from] = await within(client.receive(), `the ${bytes.length}-byte reply`);
      assert.equal(got.length, bytes.length, "the datagram's boundary");
      assert.deepEqual(got, bytes, `${bytes.length} bytes, exact`);
      assert.equal((from as Deno.NetAddr).port, to.port, "from the listener's address");
    }
    assert.equal(lb.flows.size, 1, "one flow");
    assert.equal(lb.listener.droppedSends, 0);
  } finally {
    client.close();
    lb.close();
    await echo.close();
    await engine.dispose();
  }
}

Deno.test({
  name: "datagrams of 0, 1, 1400 and 65507 bytes go through and back whole, boundaries exact",
  ignore: !linux,
  fn: () => sizesRoundTrip("127.0.0.1"),
});

Deno.test({
  name: "over IPv6 (::1): datagrams through and back whole; a client's key is the same string",
  ignore: !linux,
  fn: async () => {
    if (!hasIpv6()) {
      console.log("skipped: this machine cannot bind a UDP socket on ::1");
      return;
    }
    await sizesRoundTrip("::1");
    // The key of an IPv6 sender: a string, the same for each of its
    // datagrams. An IPv4 listener on the same loop takes a datagram first:
    // the receive batch they share must leave room for the longer address.
    const engine = new EpollEngine({ loop: new EpollLoop() });
    const keys: (string | number)[] = [];
    const peers: DatagramPeer[] = [];
    const listeners = ["127.0.0.1", "::1"].map((hostname) => {
      const listener = engine.listenDatagrams({ hostname, port: 0 }, {}, (_, key) => {
        keys.push(key);
        peers.push(listener.sender());
      });
      return listener;
    });
    const clients = [udpLoopback("127.0.0.1"), udpLoopback("::1")];
    try {
      const to = (i: number): Deno.NetAddr => ({
        transport: "udp",
        hostname: listeners[i]!.address.hostname,
        port: listeners[i]!.address.port,
      });
      await clients[0]!.send(encoder.encode("four"), to(0));
      await until(() => keys.length === 1, "the IPv4 datagram");
      await clients[1]!.send(encoder.encode("one"), to(1));
      await clients[1]!.send(encoder.encode("two"), to(1));
      await until(() => keys.length === 3, "two IPv6 datagrams");
      assert.equal(typeof keys[1], "string");
      assert.equal(keys[1], keys[2]);
      assert.deepEqual(
        peers.slice(1).map(({ key, hostname, port }) => ({ key, hostname, port })),
        [1, 2].map(() => ({ key: keys[1], hostname: "::1", port: portOf(clients[1]!) })),
      );
    } finally {
      for (const client of clients) client.close();
      for (const listener of listeners) listener.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name: "sender(): an IPv4 client's key is its address and port as one number, the same each time",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine({ loop: new EpollLoop() });
    const seen: { key: string | number; peer: DatagramPeer }[] = [];
    const listener = engine.listenDatagrams({ hostname: "127.0.0.1", port: 0 }, {}, (_, key) => {
      seen.push({ key, peer: listener.sender() });
    });
    const a = udpLoopback();
    const b = udpLoopback();
    try {
      const to: Deno.NetAddr = {
        transport: "udp",
        hostname: "127.0.0.1",
        port: listener.address.port,
      };
      await a.send(encoder.encode("a1"), to);
      await b.send(encoder.encode("b1"), to);
      await a.send(encoder.encode("a2"), to);
      await until(() => seen.length === 3, "three datagrams");
      const keyOf = (port: number) => 0x7f000001 * 65536 + port;
      assert.deepEqual(seen.map((s) => s.key), [portOf(a), portOf(b), portOf(a)].map(keyOf));
      assert.deepEqual(
        seen.map(({ peer }) => ({ key: peer.key, hostname: peer.hostname, port: peer.port })),
        [a, b, a].map((c) => ({ key: keyOf(portOf(c)), hostname: "127.0.0.1", port: portOf(c) })),
      );
      assert.throws(() => listener.sender(), /only while onDatagram runs/);
    } finally {
      a.close();
      b.close();
      listener.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name: "two clients each get their own replies, through a flow each",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine({ loop: new EpollLoop() });
    const echo = startEcho();
    const lb = relay(engine, echo.address);
    const clients = [udpLoopback(), udpLoopback()];
    try {
      const to: Deno.NetAddr = {
        transport: "udp",
        hostname: "127.0.0.1",
        port: lb.listener.address.port,
      };
      for (const round of [1, 2, 3]) {
        for (const [i, client] of clients.entries()) {
          await client.send(encoder.encode(`client ${i} round ${round}`), to);
        }
      }
      for (const [i, client] of clients.entries()) {
        for (const round of [1, 2, 3]) {
          const [got] = await within(client.receive(), `client ${i}'s reply ${round}`);
          assert.equal(decoder.decode(got), `client ${i} round ${round}`);
        }
      }
      assert.equal(lb.flows.size, 2);
    } finally {
      for (const client of clients) client.close();
      lb.close();
      await echo.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name:
    "100 datagrams waiting from 20 clients: taken in a few recvmmsg, answered in a few sendmmsg",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine({ loop: new EpollLoop() });
    const sys = new Sys();
    // A listener that answers each datagram itself: every reply is queued
    // in the same handler run as the datagrams.
    const listener = engine.listenDatagrams(
      { hostname: "127.0.0.1", port: 0 },
      {},
      (bytes) => listener.send(bytes, listener.sender()),
    ) as EpollDatagramListener;
    const clients = Array.from({ length: 20 }, () => rawClient(sys, listener.address.port));
    try {
      // All sent before the loop can look (this thread runs its handlers).
      await fiveRoundsEach(clients);
      // 32 at a time: 4 calls each way for 100, if all were waiting at once.
      assert.ok(listener.receiveCalls <= 8, `${listener.receiveCalls} recvmmsg calls`);
      assert.ok(listener.sendCalls <= 8, `${listener.sendCalls} sendmmsg calls`);
      assert.equal(listener.droppedSends, 0);
    } finally {
      for (const client of clients) client.close();
      listener.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name: "100 datagrams from 20 clients through backends: every reply reaches its own client",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine({ loop: new EpollLoop() });
    const sys = new Sys();
    const echo = startEcho();
    const lb = relay(engine, echo.address);
    const clients = Array.from({ length: 20 }, () => rawClient(sys, lb.listener.address.port));
    try {
      await fiveRoundsEach(clients);
      assert.equal(lb.flows.size, 20);
      assert.deepEqual(lb.errors, []);
    } finally {
      for (const client of clients) client.close();
      lb.close();
      await echo.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name: "a backend port that is closed (ICMP port unreachable): onError('refused'), socket kept",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine({ loop: new EpollLoop() });
    const gone = udpLoopback();
    const closed: HostPort = { hostname: "127.0.0.1", port: portOf(gone) };
    gone.close();
    const errors: string[] = [];
    const socket = engine.dialDatagrams(closed, {
      onDatagram: () => errors.push("a datagram?"),
      onError: (reason) => errors.push(reason),
    });
    try {
      assert.equal(socket.send(encoder.encode("anyone?")), true, "the send itself goes");
      await until(() => errors.length > 0, "the error");
      assert.deepEqual(errors, ["refused"]);
      // Two in a row: the second send may meet the error of the first. It
      // is reported all the same (after the send returned, never inside it).
      socket.send(encoder.encode("again"));
      socket.send(encoder.encode("and again"));
      await until(() => errors.length > 1, "the next error");
      assert.ok(errors.every((reason) => reason === "refused"), errors.join());
    } finally {
      socket.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name:
    "a dialled socket closed with a datagram waiting: never called back, its descriptor released",
  ignore: !linux,
  fn: async () => {
    const loop = new EpollLoop();
    const held = new Uint8Array(65536);
    loop.track(held);
    const engine = new EpollEngine({ loop });
    const sys = new Sys();
    // A raw backend: it answers at once, before the loop can look.
    const backend = sys.socket(AF_INET, SOCK_DGRAM);
    sys.bind(backend, { hostname: "127.0.0.1", port: 0 });
    const backendAddress = { hostname: "127.0.0.1", port: sys.localAddress(backend)!.port };
    const calls: string[] = [];
    const handlers = (name: string) => ({
      onDatagram: (bytes: Uint8Array) => calls.push(`${name}: ${decoder.decode(bytes)}`),
      onError: (reason: string) => calls.push(`${name}: ${reason}`),
    });
    const doomed = engine.dialDatagrams(backendAddress, handlers("doomed"));
    const canary = engine.dialDatagrams(backendAddress, handlers("canary"));
    const fd = (doomed as unknown as { fd: number }).fd;
    const bytes = new Uint8Array(8);
    const pointer = Deno.UnsafePointer.of(bytes);
    try {
      assert.equal(held[fd], 1, "held while open");
      const answer = (to: DatagramSocket, text: string) => {
        assert.equal(sys.connect(backend, to.address), 0);
        const encoded = encoder.encode(text);
        bytes.set(encoded);
        assert.equal(sys.send(backend, pointer, encoded.length), encoded.length);
      };
      answer(doomed, "late");
      doomed.close();
      answer(canary, "tweet");
      await until(() => calls.length > 0, "the canary's datagram");
      assert.deepEqual(calls, ["canary: tweet"]);
      assert.equal(held[fd], 0, "released");
      assert.equal(doomed.send(encoder.encode("x")), false, "a closed socket sends nothing");
    } finally {
      sys.close(backend);
      canary.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name: "a listener closed from inside its callback: no call after, the rest of its batch dropped",
  ignore: !linux,
  fn: async () => {
    const loop = new EpollLoop();
    const held = new Uint8Array(65536);
    loop.track(held);
    const engine = new EpollEngine({ loop });
    const sys = new Sys();
    const seen: string[] = [];
    const listener = engine.listenDatagrams({ hostname: "127.0.0.1", port: 0 }, {}, (bytes) => {
      seen.push(decoder.decode(bytes));
      listener.close();
    }) as EpollDatagramListener;
    const client = rawClient(sys, listener.address.port);
    try {
      assert.equal(held[listener.fd], 1);
      for (const text of ["one", "two", "three"]) client.send(text);
      await until(() => seen.length > 0, "the first datagram");
      assert.equal(held[listener.fd], 0, "released");
      // The loop ends once nothing is registered: no other call can come.
      await engine.dispose();
      assert.deepEqual(seen, ["one"]);
      assert.equal(
        listener.send(encoder.encode("x"), { key: 0, hostname: "127.0.0.1", port: 9 }),
        false,
      );
    } finally {
      client.close();
    }
  },
});

Deno.test({
  name:
    "a reply that cannot go (an IPv6 peer on an IPv4 socket) is dropped and counted; the rest go",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine({ loop: new EpollLoop() });
    const sys = new Sys();
    const nowhere: DatagramPeer = { key: "x", hostname: "::1", port: 9 };
    const listener = engine.listenDatagrams({ hostname: "127.0.0.1", port: 0 }, {}, (bytes) => {
      const peer = listener.sender();
      // Three replies in one batch; the middle one has no route from here.
      assert.equal(listener.send(bytes, peer), true);
      assert.equal(listener.send(bytes, nowhere), true, "queued: its failure comes at the flush");
      assert.equal(listener.send(encoder.encode("after"), peer), true);
    }) as EpollDatagramListener;
    const client = rawClient(sys, listener.address.port);
    try {
      client.send("before");
      const got: string[] = [];
      await until(() => {
        for (let reply = client.receive(); reply !== undefined; reply = client.receive()) {
          got.push(reply);
        }
        return got.length === 2;
      }, "two replies");
      assert.deepEqual(got, ["before", "after"]);
      assert.equal(listener.droppedSends, 1);
      // Outside a handler run a reply goes at once, and says whether it went.
      assert.equal(listener.send(encoder.encode("x"), nowhere), false);
      assert.equal(listener.droppedSends, 2);
      assert.equal(
        listener.send(encoder.encode("x"), { key: "y", hostname: "name", port: 9 }),
        false,
      );
    } finally {
      client.close();
      listener.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name: "a reply sent later, outside any callback (a timer's), goes at once to the peer kept",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine({ loop: new EpollLoop() });
    let peer: DatagramPeer | undefined;
    const listener = engine.listenDatagrams({ hostname: "127.0.0.1", port: 0 }, {}, () => {
      peer = listener.sender();
    });
    const client = udpLoopback();
    try {
      const to: Deno.NetAddr = {
        transport: "udp",
        hostname: "127.0.0.1",
        port: listener.address.port,
      };
      await client.send(encoder.encode("hello"), to);
      await until(() => peer !== undefined, "the datagram");
      assert.equal(listener.send(encoder.encode("later"), peer), true);
      const [got] = await within(client.receive(), "the reply");
      assert.equal(decoder.decode(got), "later");
    } finally {
      client.close();
      listener.close();
      await engine.dispose();
    }
  },
});

Deno.test({
  name: "one port, two listeners: only with reusePort (no SO_REUSEADDR sharing by accident)",
  ignore: !linux,
  fn: async () => {
    const engine = new EpollEngine({ loop: new EpollLoop() });
    const nothing = () => {};
    const first = engine.listenDatagrams({ hostname: "127.0.0.1", port: 0 }, {}, nothing);
    const address = first.address;
    assert.throws(() => engine.listenDatagrams(address, {}, nothing), Deno.errors.AddrInUse);
    assert.throws(
      () => engine.listenDatagrams(address, { reusePort: true }, nothing),
      Deno.errors.AddrInUse,
    );
    first.close();
    const shared = [
      engine.listenDatagrams(address, { reusePort: true }, nothing),
      engine.listenDatagrams(address, { reusePort: true }, nothing),
    ];
    assert.deepEqual(shared.map((l) => l.address.port), [address.port, address.port]);
    for (const listener of shared) listener.close();
    assert.throws(
      () =>
        engine.dialDatagrams({ hostname: "localhost", port: 53 }, {
          onDatagram: nothing,
          onError: nothing,
        }),
      /expected an IP address/,
    );
    await engine.dispose();
  },
});
