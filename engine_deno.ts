/**
 * The `deno` engine: the seam (engine.ts) on `Deno.listen` and
 * `Deno.connect`, with bridge.ts joining two connections. It runs wherever
 * Deno does.
 *
 * With `reset` (Linux and `--allow-ffi`, see libc.ts) it can also close a
 * connection with a reset, which Deno alone cannot: then a reset on one side
 * is passed on to the other, and the drain timeout resets what it cuts.
 *
 * @module
 */

import { formatHostPort, type HostPort, isIpLiteral } from "./address.ts";
import { Bridge, EarlyReader } from "./bridge.ts";
import { type BufferPool, defaultPools } from "./buffers.ts";
import { type Clock, realClock } from "./clock.ts";
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
  TlsEngineListener,
  TlsMaterial,
} from "./engine.ts";
import { dialDatagrams, listenDatagrams } from "./engine_deno_udp.ts";
import { TlsListener } from "./tls_listener.ts";
import { closeQuietly } from "./errors.ts";

/** Opens a connection to a backend; must give up when `signal` aborts. */
export type Dialer = (address: HostPort, signal: AbortSignal) => Promise<Deno.TcpConn>;

/** Options for {@linkcode DenoEngine}. */
export interface DenoEngineOptions {
  /** How backends are dialled. @default {Deno.connect} */
  dial?: Dialer;
  /** Where the bridge's read buffers come from. @default {defaultPools} */
  pools?: { small: BufferPool; large: BufferPool };
  /** Sends a reset on a socket before it is closed (libc.ts); none closes cleanly. */
  reset?: (conn: Deno.Conn) => boolean;
  /** The clock joins read `halfClosedAt` from. @default {realClock} */
  clock?: Clock;
}

/** A Deno socket, and what the engine keeps about it. */
class DenoConn implements EngineConn {
  readonly peer: string;
  readonly peerHost: string;
  /** Reading ahead while the backend is dialled (a client only). */
  early: EarlyReader | undefined;

  constructor(readonly socket: Deno.TcpConn) {
    const remote = socket.remoteAddr;
    this.peer = formatHostPort(remote);
    this.peerHost = remote.hostname;
    try {
      // Deno leaves Nagle's algorithm on; a proxy must not add its delay to
      // every small write. HAProxy and NGINX set TCP_NODELAY too.
      socket.setNoDelay(true);
    } catch {
      // The peer already reset; the first read will say so.
    }
  }
}

// Racing IPv6 against IPv4 (Happy Eyeballs, on by default in Deno) only
// helps a host name; for an address literal it costs about a fifth of the
// CPU a new connection takes, for nothing.
const connect: Dialer = ({ hostname, port }, signal) =>
  Deno.connect({ hostname, port, signal, autoSelectFamily: !isIpLiteral(hostname) });

/** The seam on Deno's own sockets. */
export class DenoEngine implements Engine {
  readonly name = "deno";
  readonly #dial: Dialer;
  readonly #pools: { small: BufferPool; large: BufferPool };
  readonly #reset: ((conn: Deno.Conn) => boolean) | undefined;
  readonly #clock: Clock;

  constructor(options: DenoEngineOptions = {}) {
    this.#dial = options.dial ?? connect;
    this.#pools = options.pools ?? defaultPools;
    this.#reset = options.reset;
    this.#clock = options.clock ?? realClock;
  }

  listen(address: HostPort, options: { reusePort?: boolean } = {}): EngineListener {
    return listenerOf(
      Deno.listen({ ...address, ...(options.reusePort ? { reusePort: true } : {}) }),
    );
  }

  listenDatagrams(
    address: HostPort,
    options: { reusePort?: boolean },
    onDatagram: OnDatagram,
  ): DatagramListener {
    return listenDatagrams(address, options, onDatagram);
  }

  dialDatagrams(address: HostPort, handlers: DatagramHandlers): DatagramSocket {
    return dialDatagrams(address, handlers);
  }

  async listenTls(address: HostPort, material: TlsMaterial): Promise<TlsEngineListener> {
    const listener = await TlsListener.listen(address, material);
    return {
      address: listener.address,
      accept: async () => new DenoConn((await listener.accept()) as unknown as Deno.TcpConn),
      close: () => listener.close(),
      setMaterial: (next) => listener.setMaterial(next),
      setGate: (admits) => listener.setGate(admits),
    };
  }

  watch(client: EngineConn, onGone: () => void): void {
    const conn = client as DenoConn;
    conn.early = new EarlyReader(conn.socket, this.#pools.small.take(), onGone);
  }

  dial(address: HostPort, attempt: Attempt, onDialled: OnDialled): void {
    if (attempt.aborted) return onDialled(undefined, attempt.reason);
    const controller = new AbortController();
    attempt.setOnAbort((reason) => controller.abort(reason));
    this.#dial(address, controller.signal).then(
      (socket) => {
        attempt.setOnAbort(undefined);
        onDialled(new DenoConn(socket));
      },
      (error) => {
        attempt.setOnAbort(undefined);
        onDialled(undefined, error);
      },
    );
  }

  peek(client: EngineConn, known: number, attempt: Attempt): Promise<Peeked> {
    return (client as DenoConn).early!.peek(known, attempt);
  }

  discard(client: EngineConn, count: number): void {
    (client as DenoConn).early?.discard(count);
  }

  localAddress(client: EngineConn): HostPort {
    const { hostname, port } = (client as DenoConn).socket.localAddr;
    return { hostname, port };
  }

  join(
    client: EngineConn,
    server: EngineConn,
    onEnd: (result: JoinResult) => void,
    prefix?: Uint8Array,
  ): Joined {
    const early = (client as DenoConn).early;
    (client as DenoConn).early = undefined;
    const bridge = new Bridge((client as DenoConn).socket, (server as DenoConn).socket, {
      pools: this.#pools,
      clock: this.#clock,
      reset: this.#reset,
      early,
      prefix,
    });
    bridge.result.then(onEnd);
    return bridge;
  }

  async close(conn: EngineConn, options: { reset?: boolean } = {}): Promise<void> {
    const { socket, early } = conn as DenoConn;
    early?.stop();
    if (options.reset) this.#reset?.(socket);
    closeQuietly(socket);
    if (early !== undefined) {
      // A read under way settles once the socket is closed; then its buffer is free.
      await early.settle();
      this.#pools.small.give(early.buffer);
      (conn as DenoConn).early = undefined;
    }
  }
}

/**
 * Wraps a `Deno.TcpListener` (a test may hand one in, bound on port 0).
 * @internal exported for test_util.ts
 */
export function listenerOf(listener: Deno.TcpListener): EngineListener {
  const addr = listener.addr;
  return {
    address: { hostname: addr.hostname, port: addr.port },
    accept: async () => new DenoConn(await listener.accept()),
    close: () => listener.close(),
  };
}
