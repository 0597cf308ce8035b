/**
 * The `epoll` engine: the seam (engine.ts) on Linux system calls made from
 * TypeScript through libc.ts — nonblocking sockets, one level-triggered
 * epoll set, no promise per read or write.
 *
 * What moves bytes is one state machine per joined pair, run synchronously
 * from the loop: read from a side that is readable into one shared scratch
 * buffer and write it straight to the other side (speculative I/O: EPOLLOUT
 * is armed only when a write comes up short). The invariants:
 * - bytes waiting for a side live in that side's `pending`, and only then is
 *   EPOLLOUT armed on it, and EPOLLIN dropped on its peer (backpressure: at
 *   most one pending chunk per direction, never a queue);
 * - a side's end of stream is passed on (`shutdown(SHUT_WR)`) once what it
 *   sent before has been written;
 * - every descriptor is registered through the loop (epoll_loop.ts), whose
 *   generation numbers keep a stale event from reaching a new owner.
 *
 * @module
 */

import { lookup } from "node:dns/promises";
import { formatHostPort, type HostPort, isIpLiteral } from "./address.ts";
import type { Clock } from "./clock.ts";
import { EarlyBytes } from "./early.ts";
import type {
  Attempt,
  DatagramHandlers,
  DatagramListener,
  DatagramSocket,
  Engine,
  EngineConn,
  EngineListener,
  Joined,
  JoinResult,
  OnDatagram,
  OnDialled,
  Peeked,
} from "./engine.ts";
import { dialDatagrams, listenDatagrams } from "./engine_epoll_udp.ts";
import { EpollLoop, type Handler, SCRATCH_BYTES } from "./epoll_loop.ts";
import type { JoinEnd } from "./events.ts";
import {
  AF_INET,
  AF_INET6,
  EADDRINUSE,
  EAGAIN,
  ECONNABORTED,
  ECONNREFUSED,
  EINPROGRESS,
  encodeSockaddr,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  errnoError,
  IPPROTO_TCP,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SOCKADDR_IN6_BYTES,
  SOL_SOCKET,
  TCP_NODELAY,
} from "./libc.ts";

/**
 * What one read takes for a direction whose last write came up short: the
 * unsent rest is copied and kept per connection, so a slow reader holds at
 * most this much. A direction whose writes keep up doubles back to
 * {@linkcode SCRATCH_BYTES}: small while a flow is held back, large while busy.
 */
const SMALL_READ = 64 * 1024;
/** Reads one bulk flow may make per wake-up: 1 MiB. */
const BULK_READS = 4;

/** What a watched client may send before its backend is connected. */
const EARLY_LIMIT = 65536;
// The join writes a PROXY header (ours are at most 107 bytes; the spec's
// limit is 536) and the early bytes from the scratch buffer in one piece:
// they must fit it.
if (EARLY_LIMIT + 536 > SCRATCH_BYTES) {
  throw new Error("EARLY_LIMIT must leave a PROXY header room");
}
/**
 * What a side we read from is watched for: data, and the peer's end of
 * stream on its own (EPOLLRDHUP), which spares the read that returns 0.
 */
const READABLE = EPOLLIN | EPOLLRDHUP;

/** A connection the epoll engine holds. */
class EpollConn implements EngineConn, Handler {
  /** Read ahead while watched, and who to tell if the client goes. */
  early: EarlyBytes | undefined;
  onGone: (() => void) | undefined;
  /** Set once joined: the join takes the events. */
  owner: Handler | undefined;
  closed = false;

  constructor(
    readonly loop: EpollLoop,
    readonly fd: number,
    readonly peer: string,
    readonly peerHost: string,
  ) {}

  onEvents(events: number): void {
    if (this.owner !== undefined) return this.owner.onEvents(events);
    const early = this.early;
    if (early === undefined) return;
    // Watched: take what the client sends, up to the limit; see it go.
    const { sys, scratch, scratchPointer } = this.loop;
    const room = EARLY_LIMIT - early.bytes;
    if (room <= 0) {
      // Full, so not reading (a read of 0 bytes would say "end of stream"
      // whatever happened): only a hang-up or an error wakes us, at every
      // wait. An error means the client is gone; a hang-up waits unwatched.
      this.loop.park(this.fd);
      if (sys.socketError(this.fd) === 0) return;
      return this.#gone(early);
    }
    const read = sys.recv(this.fd, scratchPointer, room);
    if (read > 0) {
      early.push(scratch, read);
      if (early.bytes >= EARLY_LIMIT) this.loop.modify(this.fd, 0);
    } else if (read === 0) {
      early.end();
      this.loop.modify(this.fd, 0);
    } else if (read !== -EAGAIN || (events & (EPOLLERR | EPOLLHUP)) !== 0) {
      // Gone: out of the set, or its error would wake every wait until closed.
      this.loop.park(this.fd);
      this.#gone(early);
    }
  }

  #gone(early: EarlyBytes): void {
    this.early = undefined;
    early.fail();
    this.onGone?.();
  }

  /** Drops bytes meant for us; reading resumes if the limit had stopped it. */
  discard(count: number): void {
    const early = this.early;
    if (early === undefined) return;
    const full = early.bytes >= EARLY_LIMIT;
    early.discard(count);
    if (full && early.bytes < EARLY_LIMIT && !early.ended) this.loop.modify(this.fd, READABLE);
  }
}

/**
 * One direction of a join: what waits to be written to `to`, and how the
 * source ended. It takes the events of `from`, its source, for the join
 * (a field each, rather than a closure per side: a join is held for as long
 * as its connection lasts).
 */
class Direction implements Handler {
  /** Bytes read from `from`, not yet written to `to`. */
  pending: Uint8Array | undefined;
  /** `from` has ended its stream. */
  ended = false;
  /** The end has been passed on to `to`. */
  shut = false;
  bytes = 0;
  /** What the next read takes (see {@linkcode SMALL_READ}). */
  readSize = SCRATCH_BYTES;
  /** The other direction of the join. */
  reverse!: Direction;

  constructor(
    readonly join: EpollJoin,
    readonly from: EpollConn,
    readonly to: EpollConn,
    readonly fromSide: "client" | "server",
    readonly toSide: "client" | "server",
  ) {}

  onEvents(events: number): void {
    this.join.onDirectionEvents(this, events);
  }
}

/** Two connections joined by the epoll engine. */
class EpollJoin implements Joined {
  activity = 0;
  halfClosedAt: number | undefined;
  readonly #onEnd: (result: JoinResult) => void;
  readonly #loop: EpollLoop;
  readonly #clock: Clock;
  readonly #up: Direction;
  readonly #down: Direction;
  #firstFin: JoinEnd | undefined;
  #done = false;

  constructor(
    loop: EpollLoop,
    clock: Clock,
    client: EpollConn,
    server: EpollConn,
    onEnd: (result: JoinResult) => void,
    prefix: Uint8Array | undefined,
  ) {
    this.#loop = loop;
    this.#clock = clock;
    this.#onEnd = onEnd;
    this.#up = new Direction(this, client, server, "client", "server");
    this.#down = new Direction(this, server, client, "server", "client");
    this.#up.reverse = this.#down;
    this.#down.reverse = this.#up;
    const early = client.early;
    client.early = undefined;
    client.owner = this.#up;
    server.owner = this.#down;
    // Our own prefix (a PROXY header) first, not counted as the client's;
    // then what the client sent while we dialled. One write for both: a
    // write is a packet and a wake-up of the backend, the dearest part of a
    // short connection. Written from the scratch buffer, whose pointer is
    // known (one for a new view would cost an allocation per connection);
    // both fit, as the early limit and a header are far below its size.
    // What does not fit the socket waits in `pending`.
    const scratch = loop.scratch;
    let length = 0;
    if (prefix !== undefined) {
      scratch.set(prefix);
      length = prefix.length;
    }
    if (early !== undefined) length += early.copyTo(scratch, length);
    // Copied: the buffer can hold another client's bytes.
    early?.recycle();
    if (length > 0 && !this.#forward(this.#up, scratch, length)) return;
    if (prefix !== undefined) this.#up.bytes -= prefix.length;
    if (early?.ended) this.#end(this.#up);
    if (!this.#done) this.#update();
  }

  cut(why: "aborted" | "idle-timeout" | "half-closed-timeout"): void {
    this.#fail(why);
  }

  /** Events on `out.from`: readable for `out`, writable for the reverse direction. */
  onDirectionEvents(out: Direction, events: number): void {
    if (this.#done) return;
    const into = out.reverse;
    if ((events & EPOLLOUT) !== 0 && into.pending !== undefined) {
      if (!this.#flush(into)) return;
    }
    const reading = !out.ended && out.pending === undefined;
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) !== 0 && reading) {
      // A bulk flow fills the scratch buffer read after read: keep going (up
      // to 1 MiB) while the other side takes it all, rather than wait for the
      // next wake-up.
      for (
        let i = 0;
        i < BULK_READS && !this.#done && !out.ended && out.pending === undefined;
        i++
      ) {
        const asked = out.readSize;
        // The peer had finished when epoll looked (EPOLLRDHUP, no error): a
        // read that empties the socket is followed by the end, taken without
        // the read that would return 0 to say so, and passed on with the
        // last bytes in one packet. (TCP urgent data would stop a read early;
        // like HAProxy, we do not carry it.)
        const finished = (events & (EPOLLRDHUP | EPOLLERR)) === EPOLLRDHUP;
        const read = this.#read(out, finished);
        if (read === asked) continue;
        if (read > 0 && finished && !this.#done) this.#end(out);
        break;
      }
    } else if ((events & (EPOLLHUP | EPOLLERR)) !== 0) {
      // The kernel reports these whatever we asked for, and again at every
      // wait. An error on a side we are not reading (ended, or held back) is
      // a reset: settle it now, or the loop spins on it. A clean hang-up is
      // not: bytes may still wait in the socket behind a slow peer. Stop
      // watching it until we read from it again.
      if (this.#loop.sys.socketError(out.from.fd) !== 0) this.#fail(`${out.fromSide}-reset`);
      else if (into.pending === undefined) this.#loop.park(out.from.fd);
    }
    if (!this.#done) this.#update();
  }

  // One read from `d.from`, written straight on to `d.to`; returns what was
  // read. `finished`: the source has ended, so a read that empties it is its last.
  #read(d: Direction, finished = false): number {
    const { sys, scratch, scratchPointer } = this.#loop;
    const read = sys.recv(d.from.fd, scratchPointer, d.readSize);
    if (read > 0) {
      this.activity++;
      this.#forward(d, scratch, read, finished && read < d.readSize);
    } else if (read === 0) {
      this.#end(d);
    } else if (read !== -EAGAIN) {
      this.#fail(`${d.fromSide}-reset`);
    }
    return read;
  }

  // Writes `length` bytes of `bytes` to `d.to`; keeps what does not fit.
  // `last`: the end of stream follows at once. False once failed.
  #forward(d: Direction, bytes: Uint8Array, length: number, last = false): boolean {
    const { sys } = this.#loop;
    const pointer = bytes === this.#loop.scratch
      ? this.#loop.scratchPointer
      : Deno.UnsafePointer.of(bytes);
    const written = last
      ? sys.sendMore(d.to.fd, pointer, length)
      : sys.send(d.to.fd, pointer, length);
    if (written === length) {
      d.bytes += length;
      // A full read, all taken: the reader keeps up.
      if (length === d.readSize && length < SCRATCH_BYTES) d.readSize = length * 2;
      return true;
    }
    d.readSize = SMALL_READ;
    if (written < 0 && written !== -EAGAIN) {
      this.#fail(`${d.toSide}-reset`);
      return false;
    }
    const sent = Math.max(0, written);
    d.bytes += sent;
    d.pending = bytes.slice(sent, length);
    return true;
  }

  // Writes what waits for `d.to`; passes on the end once it is all out. False once failed.
  #flush(d: Direction): boolean {
    const pending = d.pending!;
    const written = this.#loop.sys.send(d.to.fd, Deno.UnsafePointer.of(pending), pending.length);
    if (written < 0) {
      if (written === -EAGAIN) return true;
      this.#fail(`${d.toSide}-reset`);
      return false;
    }
    d.bytes += written;
    // Bytes leaving count as activity too: a slow reader is not idle.
    if (written > 0) this.activity++;
    d.pending = written === pending.length ? undefined : pending.subarray(written);
    if (d.pending === undefined && d.ended) return this.#passEnd(d);
    return true;
  }

  // `d.from` has ended its stream.
  #end(d: Direction): void {
    d.ended = true;
    // A constant, not a string made per connection.
    this.#firstFin ??= d.fromSide === "client" ? "client-fin" : "server-fin";
    this.halfClosedAt ??= this.#clock.now();
    if (d.pending === undefined) this.#passEnd(d);
  }

  #passEnd(d: Direction): boolean {
    const other = d.reverse;
    if (other.ended && other.pending === undefined) {
      this.#finish();
      return false;
    }
    if (!d.shut) {
      d.shut = true;
      if (this.#loop.sys.shutdownWrite(d.to.fd) < 0) {
        this.#fail(`${d.toSide}-reset`);
        return false;
      }
    }
    return true;
  }

  // Interest follows the invariants: EPOLLOUT only with bytes pending for a
  // side; EPOLLIN only while that side has not ended and its peer has room.
  #update(): void {
    this.#watch(this.#up, this.#down);
    this.#watch(this.#down, this.#up);
  }

  #watch(out: Direction, into: Direction): void {
    let events = 0;
    if (!out.ended && out.pending === undefined) events |= READABLE;
    if (into.pending !== undefined) events |= EPOLLOUT;
    this.#loop.modify(out.from.fd, events);
  }

  #finish(): void {
    this.#close(false, false);
    this.#settle(this.#firstFin ?? "client-fin");
  }

  #fail(end: JoinEnd): void {
    if (this.#done) return;
    // A transparent proxy passes a reset on; a cut at the drain timeout
    // resets both. Timeouts for quiet connections close cleanly.
    const resetClient = end === "server-reset" || end === "aborted";
    const resetServer = end === "client-reset" || end === "aborted";
    this.#close(resetClient, resetServer);
    this.#settle(end);
  }

  #close(resetClient: boolean, resetServer: boolean): void {
    this.#done = true;
    this.#closeOne(this.#up.from, resetClient);
    this.#closeOne(this.#down.from, resetServer);
  }

  #closeOne(conn: EpollConn, reset: boolean): void {
    if (conn.closed) return;
    conn.closed = true;
    if (reset) this.#loop.sys.lingerZero(conn.fd);
    this.#loop.close(conn.fd);
  }

  #settle(end: JoinEnd): void {
    this.#onEnd({ bytesFromClient: this.#up.bytes, bytesFromServer: this.#down.bytes, end });
  }
}

/**
 * A connect in progress: the socket's first event says how it went, unless
 * the attempt is abandoned first. Calls `onDialled` once either way.
 */
class Dialling implements Handler {
  constructor(
    readonly loop: EpollLoop,
    readonly conn: EpollConn,
    readonly attempt: Attempt,
    readonly onDialled: OnDialled,
  ) {}

  onEvents(events: number): void {
    const { loop, conn } = this;
    this.attempt.setOnAbort(undefined);
    // Writable without an error or hang-up: connected. Only a failure costs
    // the getsockopt(SO_ERROR) that says why.
    const error = (events & (EPOLLERR | EPOLLHUP)) === 0
      ? 0
      : loop.sys.socketError(conn.fd) || ECONNREFUSED;
    if (error === 0) {
      // Readable is what the join will want; until then an event finds no
      // owner and is dropped (the bytes wait in the socket).
      loop.modify(conn.fd, READABLE);
      // From now on the connection's own handler (the join) takes its events.
      loop.replace(conn.fd, conn);
      return this.onDialled(conn);
    }
    conn.closed = true;
    loop.close(conn.fd);
    this.onDialled(undefined, errnoError(-error, `connect ${conn.peer}`));
  }

  abandon(reason: unknown): void {
    this.conn.closed = true;
    this.loop.close(this.conn.fd);
    this.onDialled(undefined, reason);
  }
}

/** A listening socket of the epoll engine. */
class EpollListener implements EngineListener, Handler {
  readonly address: HostPort;
  readonly #loop: EpollLoop;
  readonly #fd: number;
  #waiting: PromiseWithResolvers<EngineConn> | undefined;
  /** The last acceptNow() found nobody waiting: accept() need not look again. */
  #empty = false;
  #closed = false;

  constructor(loop: EpollLoop, fd: number, address: HostPort) {
    this.#loop = loop;
    this.#fd = fd;
    this.address = address;
    loop.add(fd, 0, this);
  }

  accept(): Promise<EngineConn> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("listener closed"));
    // Speculative: a connection already waiting is taken without a round
    // trip through epoll (unless acceptNow() has just found none).
    const conn = this.#empty ? undefined : this.#take();
    this.#empty = false;
    if (conn instanceof Error) return Promise.reject(conn);
    if (conn !== undefined) return Promise.resolve(conn);
    this.#waiting = Promise.withResolvers<EngineConn>();
    this.#loop.modify(this.#fd, EPOLLIN);
    return this.#waiting.promise;
  }

  acceptNow(): EngineConn | undefined {
    if (this.#closed) throw new Deno.errors.BadResource("listener closed");
    const conn = this.#take();
    if (conn instanceof Error) throw conn;
    this.#empty = conn === undefined;
    return conn;
  }

  onEvents(): void {
    const waiting = this.#waiting;
    if (waiting === undefined) return this.#loop.modify(this.#fd, 0);
    const conn = this.#take();
    if (conn === undefined) return;
    this.#waiting = undefined;
    // Interest stays on: the accept loop asks again at once, as a rule. An
    // event that finds nobody asking (at maxconn) turns it off, above.
    if (conn instanceof Error) waiting.reject(conn);
    else waiting.resolve(conn);
  }

  // The next waiting client; undefined when there is none (EAGAIN, an
  // expected answer: no Error is made for it, as one costs a stack trace).
  #take(): EpollConn | Error | undefined {
    const { sys } = this.#loop;
    const fd = sys.accept(this.#fd);
    if (fd === -EAGAIN) return undefined;
    if (fd < 0) {
      // A client that reset before we took it: as Deno says it.
      if (fd === -ECONNABORTED) return new Deno.errors.ConnectionAborted("accept: ECONNABORTED");
      return errnoError(fd, "accept");
    }
    this.#loop.hold(fd);
    // Nagle is off already: an accepted socket inherits TCP_NODELAY from the listener.
    const host = sys.lastHost();
    if (host === undefined) return new EpollConn(this.#loop, fd, "-", "-");
    const name = formatHostPort({ hostname: host, port: sys.lastPort() });
    return new EpollConn(this.#loop, fd, name, host);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#loop.close(this.#fd);
    this.#waiting?.reject(new Deno.errors.BadResource("listener closed"));
    this.#waiting = undefined;
  }
}

/** Options for {@linkcode EpollEngine}. */
export interface EpollEngineOptions {
  /** The clock joins read `halfClosedAt` from. @default {the loop} */
  clock?: Clock;
  /** The loop to run on (an owned one, in a data-plane Worker). @default {an attached loop} */
  loop?: EpollLoop;
}

/** The seam on Linux system calls (see the module doc). Linux and `--allow-ffi` only. */
export class EpollEngine implements Engine {
  readonly name = "epoll";
  readonly #loop: EpollLoop;
  readonly #clock: Clock;
  /** Backends given as addresses, encoded for `connect` on their first dial. */
  readonly #targets = new WeakMap<HostPort, Target>();

  constructor(options: EpollEngineOptions = {}) {
    this.#loop = options.loop ?? new EpollLoop();
    this.#clock = options.clock ?? this.#loop;
  }

  listen(address: HostPort, options: { reusePort?: boolean } = {}): EngineListener {
    const { sys } = this.#loop;
    const family = address.hostname.includes(":") ? AF_INET6 : AF_INET;
    const fd = sys.socket(family);
    if (fd < 0) throw errnoError(fd, "socket");
    sys.setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    // Inherited by every socket it accepts: one system call per listener, not per client.
    sys.setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    if (options.reusePort) sys.setInt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    const fail = (result: number, what: string) => {
      sys.close(fd);
      const error = errnoError(result, what);
      return result === -EADDRINUSE
        ? Object.assign(new Deno.errors.AddrInUse(error.message), { code: "EADDRINUSE" })
        : error;
    };
    let encoded: number;
    try {
      encoded = sys.bind(fd, address);
    } catch (error) {
      sys.close(fd);
      throw error; // not an IP address
    }
    if (encoded < 0) throw fail(encoded, "bind");
    const listening = sys.listen(fd, 4096);
    if (listening < 0) throw fail(listening, "listen");
    const bound = sys.localAddress(fd);
    return new EpollListener(this.#loop, fd, {
      hostname: address.hostname,
      port: bound?.port ?? address.port,
    });
  }

  watch(client: EngineConn, onGone: () => void): void {
    const conn = client as EpollConn;
    conn.early = new EarlyBytes();
    conn.onGone = onGone;
    this.#loop.add(conn.fd, READABLE, conn);
  }

  peek(client: EngineConn, known: number, attempt: Attempt): Promise<Peeked> {
    const early = (client as EpollConn).early;
    // Joined or closed already: nothing more to see.
    if (early === undefined) {
      return Promise.resolve({ bytes: new Uint8Array(), ended: true, failed: true });
    }
    return early.peek(known, attempt);
  }

  discard(client: EngineConn, count: number): void {
    (client as EpollConn).discard(count);
  }

  localAddress(client: EngineConn): HostPort {
    const bound = this.#loop.sys.localAddress((client as EpollConn).fd);
    return bound ?? { hostname: "0.0.0.0", port: 0 };
  }

  dial(address: HostPort, attempt: Attempt, onDialled: OnDialled): void {
    // A backend given as an address is encoded once, on its first dial; a
    // name is looked up every time (what it resolves to may change).
    let target = this.#targets.get(address);
    if (target === undefined) {
      if (!isIpLiteral(address.hostname)) {
        // Settled by this thread's event loop, which the loop must let run.
        this.#loop.settle(lookup(address.hostname)).then(
          ({ address: host }) => {
            let resolved: Target;
            try {
              resolved = targetOf(host, address.port);
            } catch (error) {
              return onDialled(undefined, error);
            }
            this.#connect(resolved, attempt, onDialled);
          },
          (error) => onDialled(undefined, error),
        );
        return;
      }
      try {
        target = targetOf(address.hostname, address.port);
      } catch (error) {
        return onDialled(undefined, error); // not an address after all
      }
      this.#targets.set(address, target);
    }
    this.#connect(target, attempt, onDialled);
  }

  #connect(target: Target, attempt: Attempt, onDialled: OnDialled): void {
    if (attempt.aborted) return onDialled(undefined, attempt.reason);
    const { sys } = this.#loop;
    const fd = sys.socket(target.family);
    if (fd < 0) return onDialled(undefined, errnoError(fd, "socket"));
    this.#loop.hold(fd);
    sys.setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    const started = sys.connectEncoded(fd, target.pointer, target.length);
    if (started < 0 && started !== -EINPROGRESS) {
      this.#loop.close(fd);
      return onDialled(undefined, errnoError(started, `connect ${target.name}`));
    }
    // Connected at once (loopback can be) or in progress: either way, wait
    // for writability, which also reports a failure.
    const conn = new EpollConn(this.#loop, fd, target.name, target.host);
    const dialling = new Dialling(this.#loop, conn, attempt, onDialled);
    try {
      this.#loop.add(fd, EPOLLOUT, dialling);
    } catch (error) {
      this.#loop.close(fd);
      return onDialled(undefined, error);
    }
    attempt.setOnAbort((reason) => dialling.abandon(reason));
  }

  join(
    client: EngineConn,
    server: EngineConn,
    onEnd: (result: JoinResult) => void,
    prefix?: Uint8Array,
  ): Joined {
    return new EpollJoin(
      this.#loop,
      this.#clock,
      client as EpollConn,
      server as EpollConn,
      onEnd,
      prefix,
    );
  }

  listenDatagrams(
    address: HostPort,
    options: { reusePort?: boolean },
    onDatagram: OnDatagram,
  ): DatagramListener {
    return listenDatagrams(this.#loop, address, options, onDatagram);
  }

  dialDatagrams(address: HostPort, handlers: DatagramHandlers): DatagramSocket {
    // Encoded once per backend address, as for dial(); there is no lookup
    // here (the seam is synchronous): a host name throws.
    let target = this.#targets.get(address);
    if (target === undefined) {
      target = targetOf(address.hostname, address.port);
      this.#targets.set(address, target);
    }
    return dialDatagrams(this.#loop, target, handlers);
  }

  close(conn: EngineConn, options: { reset?: boolean } = {}): Promise<void> {
    const epoll = conn as EpollConn;
    epoll.early?.recycle();
    epoll.early = undefined;
    if (!epoll.closed) {
      epoll.closed = true;
      const { sys, scratchPointer } = this.#loop;
      if (options.reset) {
        sys.lingerZero(epoll.fd);
      } else {
        // Linux answers a close with bytes still unread by a reset: take what
        // the client sent, so it sees the clean close it is owed.
        for (let i = 0; i < 16 && sys.recv(epoll.fd, scratchPointer, SMALL_READ) > 0; i++);
      }
      this.#loop.close(epoll.fd);
    }
    return Promise.resolve();
  }

  /** Resolves once nothing is registered and the loop has ended (every socket closed). */
  idle(): Promise<void> {
    return this.#loop.idle();
  }

  /** Once every socket is closed: ends the loop and releases the epoll set. */
  dispose(): Promise<void> {
    return this.#loop.dispose();
  }
}

/** A backend address as `connect` takes it, encoded once; the buffer stays referenced here. */
interface Target {
  readonly host: string;
  readonly name: string;
  readonly family: number;
  readonly sockaddr: Uint8Array;
  readonly pointer: Deno.PointerValue;
  readonly length: number;
}

function targetOf(host: string, port: number): Target {
  const sockaddr = new Uint8Array(SOCKADDR_IN6_BYTES);
  const length = encodeSockaddr({ hostname: host, port }, sockaddr);
  const v6 = host.includes(":");
  return {
    host,
    name: formatHostPort({ hostname: host, port }),
    family: v6 ? AF_INET6 : AF_INET,
    sockaddr,
    pointer: Deno.UnsafePointer.of(sockaddr),
    length,
  };
}
