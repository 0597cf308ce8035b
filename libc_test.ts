/** libc.ts: each struct layout, and the two things it does, on real sockets. */

import assert from "node:assert/strict";
import {
  AF_INET,
  AF_INET6,
  decodeSockaddr,
  descriptorOf,
  EAGAIN,
  EBADF,
  encodeEpollEvent,
  encodeLinger,
  encodeSockaddr,
  EPOLL_CTL_ADD,
  EPOLL_EVENT_BYTES,
  epollEvents,
  epollFd,
  epollGeneration,
  EPOLLIN,
  EPOLLOUT,
  resetConnection,
  SOCKADDR_IN6_BYTES,
  SOCKADDR_IN_BYTES,
  Sys,
} from "./libc.ts";
import { listenLoopback } from "./test_util.ts";

const linux = Deno.build.os === "linux";

Deno.test("struct sockaddr_in: family (host order) at 0, port (network order) at 2, address at 4", () => {
  const bytes = new Uint8Array(128);
  assert.equal(encodeSockaddr({ hostname: "127.0.0.2", port: 5001 }, bytes), SOCKADDR_IN_BYTES);
  assert.deepEqual(
    [...bytes.subarray(0, 16)],
    [AF_INET, 0, 0x13, 0x89, 127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0],
  );
  assert.deepEqual(decodeSockaddr(bytes), { family: AF_INET, hostname: "127.0.0.2", port: 5001 });
});

Deno.test("struct sockaddr_in6: family at 0, port at 2, flow info at 4, address at 8, scope at 24", () => {
  const bytes = new Uint8Array(128);
  assert.equal(encodeSockaddr({ hostname: "2001:db8::1", port: 443 }, bytes), SOCKADDR_IN6_BYTES);
  assert.deepEqual([...bytes.subarray(0, 8)], [AF_INET6, 0, 0x01, 0xbb, 0, 0, 0, 0]);
  assert.deepEqual(
    [...bytes.subarray(8, 24)],
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
  );
  assert.deepEqual([...bytes.subarray(24, 28)], [0, 0, 0, 0]);
  for (const hostname of ["::1", "::", "2001:db8::1", "fe80::1:2:3:4", "1:2:3:4:5:6:7:8"]) {
    encodeSockaddr({ hostname, port: 1 }, bytes);
    assert.deepEqual(decodeSockaddr(bytes), { family: AF_INET6, hostname, port: 1 }, hostname);
  }
  // Two spellings of one address decode alike.
  encodeSockaddr({ hostname: "0:0:0:0:0:0:0:1", port: 2 }, bytes);
  assert.equal(decodeSockaddr(bytes)?.hostname, "::1");
});

Deno.test("decodeSockaddr() leaves other families alone", () => {
  assert.equal(decodeSockaddr(new Uint8Array(16)), undefined); // AF_UNSPEC
});

Deno.test({
  name: "descriptorOf() finds a connection's descriptor by its addresses, among many",
  ignore: !linux,
  fn: async () => {
    const listener = listenLoopback();
    const clients = await Promise.all(
      Array.from(
        { length: 20 },
        () => Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
      ),
    );
    const servers = await Promise.all(clients.map(() => listener.accept()));
    try {
      const found = new Set(servers.map((s) => descriptorOf(s.localAddr, s.remoteAddr)));
      assert.equal(found.size, 20);
      assert.ok([...found].every((fd) => fd > 2));
      // A pair that no socket holds.
      const nobody = { transport: "tcp", hostname: "127.0.0.1", port: 1 } as const;
      assert.equal(descriptorOf(nobody, nobody), -1);
    } finally {
      for (const conn of [...clients, ...servers]) conn.close();
      listener.close();
    }
  },
});

Deno.test({
  name: "resetConnection(): the peer reads what was sent, then a reset, never a clean end",
  ignore: !linux,
  fn: async () => {
    for (const hostname of ["127.0.0.1", "::1"]) {
      const listener = Deno.listen({ hostname, port: 0 });
      const client = await Deno.connect({ hostname, port: listener.addr.port });
      const server = await listener.accept();
      try {
        await server.write(new TextEncoder().encode("partial"));
        assert.equal(resetConnection(server), true, hostname);
        server.close();
        const buffer = new Uint8Array(64);
        assert.equal(await client.read(buffer), 7);
        await assert.rejects(() => client.read(buffer), Deno.errors.ConnectionReset, hostname);
      } finally {
        client.close();
        listener.close();
      }
    }
  },
});

Deno.test("struct epoll_event: u32 events, then u64 data (fd low, generation high); packed on x86_64", () => {
  const bytes = new Uint8Array(EPOLL_EVENT_BYTES * 2);
  const view = new DataView(bytes.buffer);
  encodeEpollEvent(view, 1, EPOLLIN | EPOLLOUT, 7, 0xdeadbeef);
  const at = EPOLL_EVENT_BYTES;
  assert.deepEqual([...bytes.subarray(at, at + 4)], [0x05, 0, 0, 0]);
  const dataAt = at + (Deno.build.arch === "x86_64" ? 4 : 8);
  assert.equal(EPOLL_EVENT_BYTES, Deno.build.arch === "x86_64" ? 12 : 16);
  assert.deepEqual([...bytes.subarray(dataAt, dataAt + 8)], [7, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]);
  assert.equal(epollEvents(view, 1), EPOLLIN | EPOLLOUT);
  assert.equal(epollFd(view, 1), 7);
  assert.equal(epollGeneration(view, 1), 0xdeadbeef);
  assert.deepEqual([...bytes.subarray(0, EPOLL_EVENT_BYTES)], Array(EPOLL_EVENT_BYTES).fill(0));
});

Deno.test("struct linger: int l_onoff, int l_linger", () => {
  const bytes = new Uint8Array(8);
  encodeLinger(bytes, true, 0);
  assert.deepEqual([...bytes], [1, 0, 0, 0, 0, 0, 0, 0]);
  encodeLinger(bytes, false, 5);
  assert.deepEqual([...bytes], [0, 0, 0, 0, 5, 0, 0, 0]);
});

Deno.test({
  name:
    "Sys: an eventfd wakes epoll_wait with its descriptor and generation; errno comes back negative",
  ignore: !linux,
  fn: () => {
    const sys = new Sys();
    const epfd = sys.epollCreate();
    const efd = sys.eventfd();
    const event = new Uint8Array(EPOLL_EVENT_BYTES);
    const ctl = { view: new DataView(event.buffer), pointer: Deno.UnsafePointer.of(event) };
    const events = new Uint8Array(EPOLL_EVENT_BYTES * 4);
    const pointer = Deno.UnsafePointer.of(events);
    try {
      assert.equal(sys.epollCtl(epfd, EPOLL_CTL_ADD, efd, EPOLLIN, 41, ctl), 0);
      assert.equal(sys.epollWait(epfd, pointer, 4, 0), 0, "nothing yet");
      assert.equal(sys.wake(efd), 8);
      assert.equal(sys.epollWait(epfd, pointer, 4, 0), 1);
      const view = new DataView(events.buffer);
      assert.deepEqual([epollFd(view, 0), epollGeneration(view, 0)], [efd, 41]);
      assert.equal(epollEvents(view, 0) & EPOLLIN, EPOLLIN);
      assert.equal(sys.drain(efd), 8);
      assert.equal(sys.drain(efd), -EAGAIN, "empty: EAGAIN, as -errno");
      assert.equal(sys.close(1_000_000), -EBADF);
    } finally {
      sys.close(efd);
      sys.close(epfd);
    }
  },
});
