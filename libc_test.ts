/** libc.ts: each struct layout, and the two things it does, on real sockets. */

import assert from "node:assert/strict";
import {
  AF_INET,
  AF_INET6,
  decodeSockaddr,
  descriptorOf,
  EAGAIN,
  EBADF,
  EINPROGRESS,
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
  IOVEC_BYTES,
  MessageBatch,
  MMSGHDR_BYTES,
  MSG_MORE,
  MSG_NOSIGNAL,
  MSG_TRUNC,
  MSGHDR_BYTES,
  NAME_BYTES,
  resetConnection,
  SOCK_DGRAM,
  SOCKADDR_IN6_BYTES,
  SOCKADDR_IN_BYTES,
  sockaddrKey,
  Sys,
} from "./libc.ts";
import { listenLoopback, until } from "./test_util.ts";

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

Deno.test("sockaddrKey: one key per address and port, read from either struct where it lies", () => {
  const bytes = new Uint8Array(256);
  const keyAt = (hostname: string, port: number, at = 0) => {
    encodeSockaddr({ hostname, port }, bytes.subarray(at, at + 128));
    return sockaddrKey(bytes, at);
  };
  assert.equal(keyAt("127.0.0.1", 5353), 0x7f000001 * 65536 + 5353);
  assert.equal(keyAt("255.255.255.255", 65535), 2 ** 48 - 1, "the largest IPv4 key is exact");
  assert.equal(keyAt("10.0.0.1", 1, 64), keyAt("10.0.0.1", 1), "the same where it lies");
  const keys = [
    keyAt("10.0.0.1", 1),
    keyAt("10.0.0.1", 2),
    keyAt("10.0.0.2", 1),
    keyAt("::1", 1),
    keyAt("::1", 2),
    keyAt("::2", 1),
    keyAt("2001:db8::1", 1),
  ];
  assert.equal(new Set(keys).size, keys.length, "different addresses or ports, different keys");
  assert.equal(keyAt("0:0:0:0:0:0:0:1", 1), keyAt("::1", 1), "two spellings, one key");
  // The scope (at 24) tells link-local neighbours on two interfaces apart.
  encodeSockaddr({ hostname: "fe80::1", port: 1 }, bytes);
  const plain = sockaddrKey(bytes, 0);
  bytes[24] = 2;
  assert.notEqual(sockaddrKey(bytes, 0), plain);
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
  // An IPv4 client of a dual-stack socket reads as Deno writes it, on either engine.
  encodeSockaddr({ hostname: "::ffff:127.0.0.1", port: 3 }, bytes);
  assert.equal(decodeSockaddr(bytes)?.hostname, "::ffff:127.0.0.1");
  encodeSockaddr({ hostname: "::fffe:7f00:1", port: 3 }, bytes);
  assert.equal(decodeSockaddr(bytes)?.hostname, "::fffe:7f00:1", "not mapped: as it is");
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

/** The address of what `pointer` points at, as a number (test addresses are below 2^53). */
const addressOf = (pointer: Deno.PointerValue) => Number(Deno.UnsafePointer.value(pointer));

Deno.test({
  name:
    "struct mmsghdr (64 bytes): msg_name at 0, msg_namelen at 8, msg_iov at 16, msg_iovlen at 24, msg_len at 56",
  ignore: !linux,
  fn: () => {
    assert.deepEqual([IOVEC_BYTES, MSGHDR_BYTES, MMSGHDR_BYTES], [16, 56, 64]);
    const batch = new MessageBatch(3, 1000);
    const view = new DataView(batch.headers.buffer);
    assert.equal(batch.headers.length, 3 * 64);
    const names = addressOf(Deno.UnsafePointer.of(batch.names));
    const data = addressOf(Deno.UnsafePointer.of(batch.data));
    const firstIov = Number(view.getBigUint64(16, true));
    for (let i = 0; i < 3; i++) {
      const at = i * MMSGHDR_BYTES;
      assert.equal(Number(view.getBigUint64(at, true)), names + i * NAME_BYTES, "msg_name");
      assert.equal(view.getUint32(at + 8, true), NAME_BYTES, "msg_namelen: room for any address");
      assert.equal(Number(view.getBigUint64(at + 16, true)), firstIov + i * IOVEC_BYTES, "msg_iov");
      assert.equal(view.getBigUint64(at + 24, true), 1n, "msg_iovlen");
      assert.equal(view.getBigUint64(at + 32, true), 0n, "msg_control");
      assert.equal(view.getBigUint64(at + 40, true), 0n, "msg_controllen");
      assert.equal(addressOf(batch.at(i)), addressOf(batch.pointer) + at);
    }
    // struct iovec: iov_base at 0, iov_len at 8, read where msg_iov points.
    batch.setBuffer(2, 700, 300);
    const iovec = new Deno.UnsafePointerView(
      Deno.UnsafePointer.create(BigInt(firstIov + 2 * IOVEC_BYTES))!,
    );
    assert.equal(Number(iovec.getBigUint64(0)), data + 700);
    assert.equal(iovec.getBigUint64(8), 300n);
    // msg_namelen, msg_len and msg_flags are read where they are written.
    batch.setNameLength(1, 16);
    assert.equal(view.getUint32(MMSGHDR_BYTES + 8, true), 16);
    assert.equal(batch.nameLength(1), 16);
    view.setUint32(MMSGHDR_BYTES + 56, 1234, true);
    view.setInt32(MMSGHDR_BYTES + 48, MSG_TRUNC, true);
    assert.equal(batch.messageLength(1), 1234);
    assert.equal(batch.messageFlags(1), MSG_TRUNC);
  },
});

Deno.test({
  name:
    "sendmmsg and recvmmsg on loopback: each datagram whole (0, 5 and 1400 bytes), with its sender",
  ignore: !linux,
  fn: async () => {
    const sys = new Sys();
    for (const [family, hostname] of [[AF_INET, "127.0.0.1"], [AF_INET6, "::1"]] as const) {
      const receiver = sys.socket(family, SOCK_DGRAM);
      const sender = sys.socket(family, SOCK_DGRAM);
      try {
        if (sys.bind(receiver, { hostname, port: 0 }) < 0) {
          console.log(`sendmmsg/recvmmsg over ${hostname}: skipped, it cannot be bound here`);
          continue;
        }
        assert.equal(sys.bind(sender, { hostname, port: 0 }), 0);
        const to = sys.localAddress(receiver)!;
        const from = sys.localAddress(sender)!;
        // Three datagrams packed into one data buffer, each with its address;
        // the first is sent alone, the others in one call from message 1.
        const out = new MessageBatch(3, 2000);
        const sizes = [0, 5, 1400];
        let offset = 0;
        sizes.forEach((size, i) => {
          for (let j = 0; j < size; j++) out.data[offset + j] = (i * 31 + j) & 0xff;
          out.setBuffer(i, offset, size);
          offset += size;
          const length = encodeSockaddr(to, out.names.subarray(i * NAME_BYTES));
          out.setNameLength(i, length);
        });
        assert.equal(sys.sendmmsg(sender, out, 0, 1), 1);
        assert.equal(sys.sendmmsg(sender, out, 1, 2), 2);
        assert.deepEqual([out.messageLength(0), out.messageLength(1), out.messageLength(2)], sizes);
        // Each into a slot of its own.
        const into = new MessageBatch(4, 4 * 2048);
        for (let i = 0; i < 4; i++) into.setBuffer(i, i * 2048, 2048);
        let count = -1;
        await until(() => (count = sys.recvmmsg(receiver, into, 4)) !== -EAGAIN, "datagrams");
        assert.equal(count, 3);
        sizes.forEach((size, i) => {
          assert.equal(into.messageLength(i), size, `datagram ${i}'s length`);
          assert.equal(into.messageFlags(i) & MSG_TRUNC, 0);
          const bytes = into.data.subarray(i * 2048, i * 2048 + size);
          assert.ok(bytes.every((byte, j) => byte === ((i * 31 + j) & 0xff)), `datagram ${i}`);
          const length = family === AF_INET ? SOCKADDR_IN_BYTES : SOCKADDR_IN6_BYTES;
          assert.equal(into.nameLength(i), length, "msg_namelen: what the kernel wrote");
          const name = into.names.subarray(i * NAME_BYTES, i * NAME_BYTES + length);
          assert.deepEqual(decodeSockaddr(name), { family, hostname, port: from.port });
        });
        assert.equal(sys.recvmmsg(receiver, into, 4), -EAGAIN, "nothing more");
      } finally {
        sys.close(receiver);
        sys.close(sender);
      }
    }
  },
});

Deno.test({
  name: "recvmmsg into a slot too small: the datagram is cut, and MSG_TRUNC says so",
  ignore: !linux,
  fn: async () => {
    const sys = new Sys();
    const receiver = sys.socket(AF_INET, SOCK_DGRAM);
    const sender = sys.socket(AF_INET, SOCK_DGRAM);
    try {
      sys.bind(receiver, { hostname: "127.0.0.1", port: 0 });
      assert.equal(sys.connect(sender, sys.localAddress(receiver)!), 0);
      const bytes = new Uint8Array(100).fill(9);
      assert.equal(sys.send(sender, Deno.UnsafePointer.of(bytes), 100), 100);
      const into = new MessageBatch(1, 10);
      into.setBuffer(0, 0, 10);
      let count = -1;
      await until(() => (count = sys.recvmmsg(receiver, into, 1)) !== -EAGAIN, "a datagram");
      assert.equal(count, 1);
      assert.equal(into.messageLength(0), 10);
      assert.equal(into.messageFlags(0) & MSG_TRUNC, MSG_TRUNC);
    } finally {
      sys.close(receiver);
      sys.close(sender);
    }
  },
});

Deno.test({
  name:
    "Sys.sendMore, then the end of stream: the bytes arrive whole, then the end; Sys.recv reads them",
  ignore: !linux,
  fn: async () => {
    assert.equal(MSG_MORE, 0x8000, "Linux's value");
    assert.equal(MSG_NOSIGNAL, 0x4000, "Linux's value");
    const listener = listenLoopback();
    const sys = new Sys();
    const fd = sys.socket(AF_INET);
    try {
      const accepted = listener.accept();
      const connecting = sys.connect(fd, listener.addr as Deno.NetAddr);
      assert.ok(connecting === 0 || connecting === -EINPROGRESS, `connect: ${connecting}`);
      const peer = await accepted;
      const bytes = new TextEncoder().encode("the last bytes");
      await until(
        () => sys.sendMore(fd, Deno.UnsafePointer.of(bytes), bytes.length) !== -EAGAIN,
        "connected",
      );
      assert.equal(sys.shutdownWrite(fd), 0);
      const received: number[] = [];
      const buffer = new Uint8Array(64);
      for (let n; (n = await peer.read(buffer)) !== null;) received.push(...buffer.subarray(0, n));
      assert.equal(new TextDecoder().decode(new Uint8Array(received)), "the last bytes");
      // The other way, read with recv: the answer, then 0 for its end.
      await peer.write(new TextEncoder().encode("an answer"));
      peer.close();
      const answer: number[] = [];
      const pointer = Deno.UnsafePointer.of(buffer);
      let n = -EAGAIN;
      await until(() => {
        while ((n = sys.recv(fd, pointer, buffer.length)) > 0) {
          answer.push(...buffer.subarray(0, n));
        }
        return n !== -EAGAIN;
      }, "the answer and its end");
      assert.equal(n, 0);
      assert.equal(new TextDecoder().decode(new Uint8Array(answer)), "an answer");
    } finally {
      sys.close(fd);
      listener.close();
    }
  },
});

Deno.test({
  name: "Sys.lastHost/lastPort: what lastAddress says, for IPv4 (written once per host) and IPv6",
  ignore: !linux,
  fn: () => {
    const sys = new Sys();
    for (
      const [family, hostname] of [[AF_INET, "127.0.0.1"], [AF_INET, "127.0.0.2"], [
        AF_INET6,
        "::1",
      ]] as const
    ) {
      const fd = sys.socket(family, SOCK_DGRAM);
      try {
        if (sys.bind(fd, { hostname, port: 0 }) < 0) {
          console.log(`lastHost over ${hostname}: skipped, it cannot be bound here`);
          continue;
        }
        const bound = sys.localAddress(fd)!;
        assert.equal(sys.lastHost(), hostname);
        assert.equal(sys.lastPort(), bound.port);
        assert.equal(sys.lastHost(), sys.lastAddress()!.hostname);
      } finally {
        sys.close(fd);
      }
    }
  },
});
