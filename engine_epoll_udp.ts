/**
 * UDP on the `epoll` engine: the datagram half of the seam (engine.ts,
 * `listenDatagrams` and `dialDatagrams`), for engine_epoll.ts to hand on.
 *
 * **Receiving.** A socket is watched for EPOLLIN. When it is readable it
 * takes what waits with `recvmmsg`, up to 32 datagrams a call, each into a
 * 64 KiB slot of its own (so no datagram is ever cut short), and calls back
 * once per datagram with a view of its slot. The slots are shared by every
 * UDP socket of the loop: callbacks run one at a time and a view is good only
 * during its call. A socket makes at most 4 such calls per wake-up, then
 * lets the other descriptors have their turn; the set is level-triggered, so
 * what is left wakes it again.
 *
 * **A listener's replies** are copied into its own batch and leave with one
 * `sendmmsg` when the handler run that queued them ends (the listener's, or
 * a dialled socket's, whose callbacks answer clients), or at once when the
 * batch is full. A client is named by its key: a number for IPv4 (its
 * address times 65536 plus its port, no allocation), a short opaque string
 * for IPv6; its {@linkcode DatagramPeer} keeps its `sockaddr` encoded, so a
 * reply never encodes it again.
 *
 * **A dialled socket** is `connect()`ed to its backend: it takes datagrams
 * from that address only, a send is one `send()`, and the kernel reports
 * the backend's ICMP errors (port unreachable: `ECONNREFUSED`) on it.
 *
 * The invariants:
 * - a listener's send batch is empty whenever control goes back to the
 *   loop: it is flushed at the end of every run — a whole batch of epoll
 *   events is one (`EpollLoop.bracket`), so replies to many flows woken
 *   together leave in one `sendmmsg` — and at once by a send made outside
 *   one (a timer's, a promise's);
 * - `sender()` answers only while a listener's callback runs (`#current`
 *   holds the datagram's slot then, -1 otherwise);
 * - nothing is called back on a closed socket: the receive loops look at
 *   `closed` before each callback, and errors a send met are reported only
 *   for sockets still open;
 * - every descriptor is registered through the loop (epoll_loop.ts), which
 *   marks it held (a dead thread's sockets are closed for it) and guards it
 *   with a generation number.
 *
 * @module
 */

import type { HostPort } from "./address.ts";
import type {
  DatagramHandlers,
  DatagramListener,
  DatagramPeer,
  DatagramSocket,
  OnDatagram,
} from "./engine.ts";
import type { EpollLoop, Handler } from "./epoll_loop.ts";
import {
  AF_INET,
  AF_INET6,
  decodeSockaddr,
  EADDRINUSE,
  EAGAIN,
  ECONNREFUSED,
  EMSGSIZE,
  encodeSockaddr,
  ENOBUFS,
  EPOLLIN,
  ERRNO_NAMES,
  errnoError,
  MessageBatch,
  NAME_BYTES,
  SO_REUSEPORT,
  SOCK_DGRAM,
  SOCKADDR_IN6_BYTES,
  sockaddrKey,
  SOL_SOCKET,
  type Sys,
} from "./libc.ts";

/** Datagrams one `recvmmsg` takes at most. */
const RECEIVE_BATCH = 32;
/** `recvmmsg` calls a socket makes per wake-up, at most: 128 datagrams. */
const RECEIVE_ROUNDS = 4;
/** Each received datagram's room: more than the longest UDP payload (65,527 bytes over IPv6). */
const SLOT_BYTES = 64 * 1024;
/** Replies one `sendmmsg` carries at most. */
const SEND_BATCH = 32;
/** A listener's room for queued replies, packed one after another: four of the longest at least. */
const SEND_BYTES = 256 * 1024;

/**
 * A backend's address as `connect` takes it, encoded once (engine_epoll.ts
 * keeps one per backend address); its buffer stays referenced by its owner.
 */
export interface DatagramTarget {
  /** `HOST:PORT`, for messages. */
  readonly name: string;
  readonly family: number;
  readonly pointer: Deno.PointerValue;
  readonly length: number;
}

/** A client of a listener, with its address encoded for `sendmmsg`. */
class EpollDatagramPeer implements DatagramPeer {
  constructor(
    readonly key: string | number,
    readonly hostname: string,
    readonly port: number,
    /** Its `sockaddr_in` or `sockaddr_in6`, exactly as long as it is. */
    readonly sockaddr: Uint8Array,
  ) {}
}

/**
 * What one loop's UDP sockets share: the receive batch and its slots, a
 * buffer to send from, and what waits for the end of the handler run under
 * way (replies queued, errors a send met).
 */
class DatagramIo {
  readonly batch = new MessageBatch(RECEIVE_BATCH, RECEIVE_BATCH * SLOT_BYTES);
  /** Handler runs under way (a callback may close a socket, never start a read: 0 or 1). */
  depth = 0;
  /** A pointer to each slot's start: a datagram sent on as received is not copied. */
  readonly #slots: Deno.PointerValue[];
  /** Where any other datagram is copied to be sent. */
  readonly #outgoing = new Uint8Array(SLOT_BYTES);
  readonly #outgoingPointer = Deno.UnsafePointer.of(this.#outgoing);
  /** Messages whose `msg_namelen` the last receive changed: set back before the next. */
  #namesUsed = 0;
  readonly #queued: EpollDatagramListener[] = [];
  readonly #failed: EpollDatagramSocket[] = [];
  #settleScheduled = false;

  constructor() {
    const base = Deno.UnsafePointer.of(this.batch.data)!;
    this.#slots = [];
    for (let i = 0; i < RECEIVE_BATCH; i++) {
      this.batch.setBuffer(i, i * SLOT_BYTES, SLOT_BYTES);
      this.#slots.push(Deno.UnsafePointer.offset(base, i * SLOT_BYTES));
    }
  }

  /** One `recvmmsg` on `fd` into the shared batch: how many came, or `-errno`. */
  receive(sys: Sys, fd: number): number {
    // The batch serves IPv4 and IPv6 sockets alike: each message gets the
    // whole room for an address again (the kernel wrote back what it used).
    const batch = this.batch;
    for (let i = 0; i < this.#namesUsed; i++) batch.setNameLength(i, NAME_BYTES);
    const count = sys.recvmmsg(fd, batch, RECEIVE_BATCH);
    this.#namesUsed = count > 0 ? count : 0;
    return count;
  }

  /** Datagram `index` of the last receive: a view of its slot. */
  datagram(index: number): Uint8Array {
    const start = index * SLOT_BYTES;
    return this.batch.data.subarray(start, start + this.batch.messageLength(index));
  }

  /**
   * A pointer to `bytes` for one synchronous send: its slot's, when it is a
   * datagram just received, whole; else a copy's. Undefined when too long.
   */
  pointerTo(bytes: Uint8Array): Deno.PointerValue | undefined {
    const offset = bytes.byteOffset;
    if (bytes.buffer === this.batch.data.buffer && offset % SLOT_BYTES === 0) {
      return this.#slots[offset / SLOT_BYTES];
    }
    if (bytes.length > SLOT_BYTES) return undefined;
    this.#outgoing.set(bytes);
    return this.#outgoingPointer;
  }

  /** A handler run starts. */
  enter(): void {
    this.depth++;
  }

  /** A handler run ends: errors are reported, then queued replies leave. */
  leave(): void {
    if (--this.depth === 0) this.#settle();
  }

  /** `listener` has replies queued: flushed when the run ends. */
  queued(listener: EpollDatagramListener): void {
    this.#queued.push(listener);
  }

  /** A send on `socket` met an error: reported when the run ends, or soon outside one. */
  failed(socket: EpollDatagramSocket): void {
    this.#failed.push(socket);
    if (this.depth > 0 || this.#settleScheduled) return;
    this.#settleScheduled = true;
    queueMicrotask(() => {
      this.#settleScheduled = false;
      if (this.depth === 0) this.#settle();
    });
  }

  #settle(): void {
    const failed = this.#failed;
    if (failed.length > 0) {
      // A run of its own: what onError sends is queued, and flushed below.
      this.depth++;
      try {
        for (let i = 0; i < failed.length; i++) failed[i]!.reportError();
      } finally {
        failed.length = 0;
        this.depth--;
      }
    }
    const queued = this.#queued;
    for (let i = 0; i < queued.length; i++) queued[i]!.flush();
    queued.length = 0;
  }
}

const ioByLoop = new WeakMap<EpollLoop, DatagramIo>();

function ioOf(loop: EpollLoop): DatagramIo {
  let io = ioByLoop.get(loop);
  if (io === undefined) {
    const made = new DatagramIo();
    ioByLoop.set(loop, made);
    // A batch of events is one run: replies to every flow woken in it leave together.
    loop.bracket(() => made.enter(), () => made.leave());
    io = made;
  }
  return io;
}

/** What an error on a dialled socket is called: `refused` (port unreachable), or the errno's name. */
function reasonOf(negative: number): string {
  if (negative === -ECONNREFUSED) return "refused";
  return ERRNO_NAMES[-negative] ?? `errno ${-negative}`;
}

/** A listening UDP socket of the epoll engine. */
export class EpollDatagramListener implements DatagramListener, Handler {
  readonly address: HostPort;
  readonly fd: number;
  /** Replies dropped when their batch was sent (the kernel's buffer full, a bad address, …). */
  droppedSends = 0;
  /** `recvmmsg` calls made. @internal (tests) */
  receiveCalls = 0;
  /** `sendmmsg` calls made. @internal (tests) */
  sendCalls = 0;
  readonly #loop: EpollLoop;
  readonly #io: DatagramIo;
  readonly #onDatagram: OnDatagram;
  /** Replies waiting for the end of the run: their bytes packed into `data`, `#used` of it. */
  readonly #out = new MessageBatch(SEND_BATCH, SEND_BYTES);
  #queued = 0;
  #used = 0;
  /** The slot of the datagram whose callback runs, and its sender's key; -1 between. */
  #current = -1;
  #currentKey: string | number = 0;
  #closed = false;

  constructor(loop: EpollLoop, fd: number, address: HostPort, onDatagram: OnDatagram) {
    this.#loop = loop;
    this.#io = ioOf(loop);
    this.fd = fd;
    this.address = address;
    this.#onDatagram = onDatagram;
  }

  onEvents(): void {
    const io = this.#io;
    io.enter();
    try {
      this.#receive();
    } finally {
      this.#current = -1;
      io.leave();
    }
  }

  #receive(): void {
    const io = this.#io;
    const { names } = io.batch;
    for (let round = 0; round < RECEIVE_ROUNDS; round++) {
      const count = io.receive(this.#loop.sys, this.fd);
      this.receiveCalls++;
      if (count < 0) {
        if (count === -EAGAIN) return;
        continue; // an unconnected socket is told of no ICMP error: nothing to report
      }
      for (let i = 0; i < count; i++) {
        if (this.#closed) return;
        const key = sockaddrKey(names, i * NAME_BYTES);
        this.#current = i;
        this.#currentKey = key;
        this.#onDatagram(io.datagram(i), key);
      }
      this.#current = -1;
      if (count < RECEIVE_BATCH || this.#closed) return;
    }
  }

  sender(): DatagramPeer {
    const index = this.#current;
    if (index < 0) throw new Error("sender() is known only while onDatagram runs");
    const batch = this.#io.batch;
    const at = index * NAME_BYTES;
    const sockaddr = batch.names.slice(at, at + batch.nameLength(index));
    const { hostname, port } = decodeSockaddr(sockaddr)!;
    return new EpollDatagramPeer(this.#currentKey, hostname, port, sockaddr);
  }

  /**
   * Queues `bytes` for `to`, sent when the handler run ends (at once outside
   * one). False when it cannot go: closed, too long, no address, or (sent
   * at once) refused by the kernel; later failures count in `droppedSends`.
   */
  send(bytes: Uint8Array, to?: DatagramPeer): boolean {
    if (this.#closed || to === undefined || bytes.length > SLOT_BYTES) return false;
    const sockaddr = sockaddrOf(to);
    if (sockaddr === undefined) return false;
    if (this.#queued === SEND_BATCH || this.#used + bytes.length > SEND_BYTES) this.flush();
    const out = this.#out;
    const index = this.#queued++;
    out.data.set(bytes, this.#used);
    out.setBuffer(index, this.#used, bytes.length);
    this.#used += bytes.length;
    out.names.set(sockaddr, index * NAME_BYTES);
    out.setNameLength(index, sockaddr.length);
    if (this.#io.depth === 0) {
      const dropped = this.droppedSends;
      this.flush();
      return this.droppedSends === dropped;
    }
    if (index === 0) this.#io.queued(this);
    return true;
  }

  /** Sends what is queued, in one `sendmmsg` unless one of them fails. */
  flush(): void {
    const count = this.#queued;
    if (count === 0) return;
    this.#queued = 0;
    this.#used = 0;
    const { sys } = this.#loop;
    let from = 0;
    while (from < count) {
      const sent = sys.sendmmsg(this.fd, this.#out, from, count - from);
      this.sendCalls++;
      if (sent > 0) {
        from += sent;
      } else if (sent === -EAGAIN || sent === -ENOBUFS || sent === 0) {
        // The socket's buffer is full: the rest would fail alike. UDP may drop.
        this.droppedSends += count - from;
        return;
      } else {
        // This one cannot go (its address, its size): drop it, send the rest.
        this.droppedSends++;
        from++;
      }
    }
  }

  close(): void {
    if (this.#closed) return;
    // What send() took goes out first.
    this.flush();
    this.#closed = true;
    this.#loop.close(this.fd);
  }
}

// A peer's encoded address: ours carry it; another's is encoded here (rare).
function sockaddrOf(peer: DatagramPeer): Uint8Array | undefined {
  if (peer instanceof EpollDatagramPeer) return peer.sockaddr;
  const into = new Uint8Array(SOCKADDR_IN6_BYTES);
  try {
    return into.subarray(0, encodeSockaddr(peer, into));
  } catch {
    return undefined; // not an IP address
  }
}

/** A UDP socket of the epoll engine connected to one backend, for one flow. */
export class EpollDatagramSocket implements DatagramSocket, Handler {
  readonly fd: number;
  readonly #loop: EpollLoop;
  readonly #io: DatagramIo;
  readonly #handlers: DatagramHandlers;
  readonly #family: number;
  #address: HostPort | undefined;
  /** An error a send met, waiting to be reported. */
  #error: string | undefined;
  #closed = false;

  constructor(loop: EpollLoop, fd: number, family: number, handlers: DatagramHandlers) {
    this.#loop = loop;
    this.#io = ioOf(loop);
    this.fd = fd;
    this.#family = family;
    this.#handlers = handlers;
  }

  /** The local address the kernel bound at `connect`: asked on first use, not per flow. */
  get address(): HostPort {
    if (this.#address === undefined) {
      const bound = this.#closed ? undefined : this.#loop.sys.localAddress(this.fd);
      const wildcard = this.#family === AF_INET6 ? "::" : "0.0.0.0";
      this.#address = bound ?? { hostname: wildcard, port: 0 };
    }
    return this.#address;
  }

  /**
   * Sends `bytes` to the backend as one datagram. False when it was not
   * sent: closed, too long, the kernel's buffer full, or an error the
   * backend's host reported (then also `onError`, once the run ends).
   */
  send(bytes: Uint8Array): boolean {
    if (this.#closed) return false;
    const pointer = this.#io.pointerTo(bytes);
    if (pointer === undefined) return false;
    const sent = this.#loop.sys.send(this.fd, pointer, bytes.length);
    if (sent >= 0) return true; // a datagram goes whole or not at all
    if (sent !== -EAGAIN && sent !== -ENOBUFS && sent !== -EMSGSIZE) {
      // The kernel hands a pending ICMP error to whichever call comes
      // first: this one took it from the next read, so report it here —
      // after the run, never from inside the caller's send().
      if (this.#error === undefined) this.#io.failed(this);
      this.#error = reasonOf(sent);
    }
    return false;
  }

  onEvents(): void {
    const io = this.#io;
    io.enter();
    try {
      this.#receive();
    } finally {
      io.leave();
    }
  }

  #receive(): void {
    const io = this.#io;
    const { sys } = this.#loop;
    for (let round = 0; round < RECEIVE_ROUNDS; round++) {
      const count = io.receive(sys, this.fd);
      if (count < 0) {
        if (count === -EAGAIN) return;
        // Port unreachable and the like: said once, the socket stays.
        this.#handlers.onError(reasonOf(count));
        if (this.#closed) return;
        continue;
      }
      for (let i = 0; i < count; i++) {
        if (this.#closed) return;
        this.#handlers.onDatagram(io.datagram(i));
      }
      if (count < RECEIVE_BATCH || this.#closed) return;
    }
  }

  /** Reports the error a send met, if the socket is still open. @internal (DatagramIo) */
  reportError(): void {
    const error = this.#error;
    this.#error = undefined;
    if (error !== undefined && !this.#closed) this.#handlers.onError(error);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#loop.close(this.fd);
  }
}

/**
 * Binds a UDP socket to `address` (SO_REUSEPORT when asked: one socket per
 * data-plane thread, the kernel spreading clients over them by their
 * addresses) and calls `onDatagram` for every datagram.
 * @throws when it cannot be bound (`Deno.errors.AddrInUse`, …)
 */
export function listenDatagrams(
  loop: EpollLoop,
  address: HostPort,
  options: { reusePort?: boolean },
  onDatagram: OnDatagram,
): EpollDatagramListener {
  const { sys } = loop;
  const family = address.hostname.includes(":") ? AF_INET6 : AF_INET;
  const fd = sys.socket(family, SOCK_DGRAM);
  if (fd < 0) throw errnoError(fd, "socket");
  // No SO_REUSEADDR: UDP has no TIME_WAIT for it to help with, and on UDP
  // it would let a second process bind the same port and take its datagrams.
  if (options.reusePort) sys.setInt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
  let bound: number;
  try {
    bound = sys.bind(fd, address);
  } catch (error) {
    sys.close(fd);
    throw error; // not an IP address
  }
  if (bound < 0) {
    sys.close(fd);
    const error = errnoError(bound, `bind ${address.hostname}:${address.port}/udp`);
    throw bound === -EADDRINUSE
      ? Object.assign(new Deno.errors.AddrInUse(error.message), { code: "EADDRINUSE" })
      : error;
  }
  const port = sys.localAddress(fd)?.port ?? address.port;
  const listener = new EpollDatagramListener(
    loop,
    fd,
    { hostname: address.hostname, port },
    onDatagram,
  );
  try {
    loop.add(fd, EPOLLIN, listener);
  } catch (error) {
    sys.close(fd);
    throw error;
  }
  return listener;
}

/**
 * A UDP socket connected to `target` for one flow: `handlers` get what the
 * backend sends, and its ICMP errors.
 * @throws when no socket can be made (out of descriptors, …)
 */
export function dialDatagrams(
  loop: EpollLoop,
  target: DatagramTarget,
  handlers: DatagramHandlers,
): EpollDatagramSocket {
  const { sys } = loop;
  const fd = sys.socket(target.family, SOCK_DGRAM);
  if (fd < 0) throw errnoError(fd, "socket");
  loop.hold(fd);
  // A UDP connect sends nothing: it picks a local address and port, and
  // filters what is received, at once.
  const connected = sys.connectEncoded(fd, target.pointer, target.length);
  if (connected < 0) {
    loop.close(fd);
    throw errnoError(connected, `connect ${target.name}/udp`);
  }
  const socket = new EpollDatagramSocket(loop, fd, target.family, handlers);
  try {
    loop.add(fd, EPOLLIN, socket);
  } catch (error) {
    loop.close(fd);
    throw error;
  }
  return socket;
}
