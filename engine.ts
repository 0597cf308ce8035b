/**
 * The seam between policy and the operating system: what a listener needs
 * to move bytes, and nothing more.
 *
 * A listener (proxy.ts) decides: which backend, when to retry, when to give
 * up, what to report. An engine does: listen and accept, dial, watch a client
 * while its backend is dialled, join two connections (copy both ways, pass on
 * half-close, count bytes), close. Policy modules never import an engine;
 * only the entry point picks one and hands it down: `engine_deno.ts`, on
 * `Deno.listen` and `Deno.connect`, or `engine_epoll.ts`, on Linux system
 * calls through FFI.
 *
 * Timeouts stay on the policy side: a dial is abandoned through its
 * {@linkcode Attempt}, and idle or half-closed joins are cut through
 * {@linkcode Joined.cut}, both driven by the listener's clock.
 *
 * @module
 */

import type { HostPort } from "./address.ts";
import type { JoinEnd } from "./events.ts";

/** One connection, as an engine holds it. */
export interface EngineConn {
  /** The peer's address, `HOST:PORT`, for logs. */
  readonly peer: string;
  /** The peer's host alone, for `source-hash`. */
  readonly peerHost: string;
}

/** The peer of `conn` as a host and a port (read from {@linkcode EngineConn.peer}). */
export function peerAddress(conn: EngineConn): HostPort {
  return { hostname: conn.peerHost, port: Number(conn.peer.slice(conn.peer.lastIndexOf(":") + 1)) };
}

/** A listening socket. */
export interface EngineListener {
  /** Where it listens (the port the kernel chose, for port 0). */
  readonly address: HostPort;
  /** The next client. Rejects when closed, or when accepting failed (out of descriptors, …). */
  accept(): Promise<EngineConn>;
  /**
   * A client already waiting, taken at once; undefined when there is none
   * (then call `accept()`). Throws where `accept()` would reject. Optional:
   * it spares a listener that can look without waiting a promise per client.
   */
  acceptNow?(): EngineConn | undefined;
  /** Stops listening; a pending accept rejects. */
  close(): void;
}

/** A certificate chain and its key (PEM text), and the ALPN protocols to offer. */
export interface TlsMaterial {
  readonly cert: string;
  readonly key: string;
  readonly alpn: readonly string[];
}

/** A listener that terminates TLS; a reload may give it a new certificate. */
export interface TlsEngineListener extends EngineListener {
  /** New clients get `material` from now on; clients connected keep theirs. */
  setMaterial(material: TlsMaterial): void;
  /**
   * Which client hosts may start a handshake at all (source ACLs): others
   * are closed on connect, before a handshake costs anything.
   */
  setGate(admits: ((host: string) => boolean) | undefined): void;
}

/** What {@linkcode Engine.dial} calls: with the connection, or without one and why. */
export type OnDialled = (server: EngineConn | undefined, error?: unknown) => void;

/** What a join ends with once both connections are closed. */
export interface JoinResult {
  /** Bytes read from the client and written to the server. */
  readonly bytesFromClient: number;
  /** Bytes read from the server and written to the client. */
  readonly bytesFromServer: number;
  /** How it ended. */
  readonly end: JoinEnd;
}

/**
 * Two connections joined: bytes flow both ways until both ends are done, and
 * then the join's `onEnd` is called (see {@linkcode Engine.join}).
 */
export interface Joined {
  /** Grows with every chunk moved: a sweeper compares it between looks. */
  readonly activity: number;
  /** When the first side ended its stream (by the engine's clock); undefined before. */
  readonly halfClosedAt: number | undefined;
  /** Closes both at once; the result's end becomes `why`. */
  cut(why: "aborted" | "idle-timeout" | "half-closed-timeout"): void;
}

/** What {@linkcode Engine.peek} sees of a watched client. */
export interface Peeked {
  /** Every byte it has sent and we hold, in order (not a copy to keep: it may change). */
  readonly bytes: Uint8Array;
  /** It has ended its stream: no more will come. */
  readonly ended: boolean;
  /** It is gone (reset, …): no more will come, and nothing can be sent. */
  readonly failed: boolean;
}

/**
 * Who sent a datagram to a listening socket, made by the engine when a flow
 * starts; the listener hands it back to {@linkcode DatagramSocket.send} to
 * answer. It may carry the engine's encoded form of the address.
 */
export interface DatagramPeer {
  /** The flow's key: the same for every datagram from this address and port. */
  readonly key: string | number;
  readonly hostname: string;
  readonly port: number;
}

/** A UDP socket: a listener's, or one dialled towards a backend for one flow. */
export interface DatagramSocket {
  /** Where it is bound (the port the kernel chose, for port 0). */
  readonly address: HostPort;
  /**
   * Sends one datagram, whole: to `to` from a listening socket, to the
   * backend from a dialled one. `bytes` may be reused once this returns.
   * False when it was dropped (the kernel's buffer was full, …), as UDP may.
   */
  send(bytes: Uint8Array, to?: DatagramPeer): boolean;
  /** Stops receiving and closes; nothing is called after this. */
  close(): void;
}

/** A listening UDP socket. */
export interface DatagramListener extends DatagramSocket {
  /**
   * Who sent the datagram being handled now: call only from inside
   * `onDatagram`, when its key is new (a flow starts).
   */
  sender(): DatagramPeer;
  /**
   * Sends that {@linkcode DatagramSocket.send} took but the kernel refused
   * later (an engine that sends in batches); absent where an engine cannot tell.
   */
  readonly droppedSends?: number;
}

/**
 * What a listening UDP socket calls per datagram: its bytes (valid only
 * during the call) and its sender's {@linkcode DatagramPeer.key}.
 */
export type OnDatagram = (bytes: Uint8Array, key: string | number) => void;

/** What a dialled UDP socket calls: each datagram from the backend, and an error (ICMP). */
export interface DatagramHandlers {
  /** A datagram from the backend (`bytes` valid only during the call). */
  readonly onDatagram: (bytes: Uint8Array) => void;
  /** The backend cannot be reached (port unreachable, …); the socket stays open. */
  readonly onError: (reason: string) => void;
}

/** An implementation of the seam. */
export interface Engine {
  /** `deno` today. */
  readonly name: string;
  /** Binds and listens. @throws when the address cannot be bound */
  listen(address: HostPort, options?: { reusePort?: boolean }): EngineListener;
  /**
   * Binds and listens, terminating TLS: clients speak TLS, backends get the
   * plain bytes. Only engines that can (`deno`). @throws when it cannot bind
   */
  listenTls?(address: HostPort, material: TlsMaterial): Promise<TlsEngineListener>;
  /**
   * Watches a new client until it is joined or closed: `onGone` is called if
   * it resets or fails meanwhile. What it sends meanwhile is kept (bounded)
   * and forwarded by {@linkcode Engine.join}; nothing is sent anywhere before.
   */
  watch(client: EngineConn, onGone: () => void): void;
  /**
   * What a watched client has sent so far (kept for the join), once there is
   * more than `known` bytes of it, or the client has ended its stream or
   * failed (then `failed`). Rejects when `attempt` is abandoned (the peek timeout, a drain).
   * The listener reads a PROXY header, a TLS ClientHello or a prefix with it.
   */
  peek(client: EngineConn, known: number, attempt: Attempt): Promise<Peeked>;
  /** Drops the first `count` bytes a watched client sent: they were for us (a PROXY header). */
  discard(client: EngineConn, count: number): void;
  /** The address the client connected to (the original destination, for a PROXY header). */
  localAddress(client: EngineConn): HostPort;
  /**
   * Connects to a backend, then calls `onDialled` once: with the connection,
   * or with why there is none (refused, unreachable, `attempt` abandoned by
   * the connect timeout, a drain or the client going). Callbacks, not a
   * promise, as this runs for every connection; `onDialled` may be called
   * before `dial` returns or from inside `attempt.abort()`, and must not throw.
   */
  dial(address: HostPort, attempt: Attempt, onDialled: OnDialled): void;
  /**
   * Joins a client and the backend connection dialled for it; `onEnd` is
   * called once both are closed (it must not throw). `prefix` goes to the
   * backend before anything from the client (a PROXY header of ours); it is
   * not counted in the client's bytes.
   */
  join(
    client: EngineConn,
    server: EngineConn,
    onEnd: (result: JoinResult) => void,
    prefix?: Uint8Array,
  ): Joined;
  /**
   * Binds a UDP socket and calls `onDatagram` for every datagram it receives.
   * @throws when the address cannot be bound
   */
  listenDatagrams(
    address: HostPort,
    options: { reusePort?: boolean },
    onDatagram: OnDatagram,
  ): DatagramListener;
  /**
   * A UDP socket of its own for one flow, sending to `address` only and
   * taking datagrams from it only. @throws when no socket can be made
   */
  dialDatagrams(address: HostPort, handlers: DatagramHandlers): DatagramSocket;
  /** Closes a client that was never joined; `reset` sends a reset where the engine can. */
  close(conn: EngineConn, options?: { reset?: boolean }): Promise<void>;
}

/**
 * One connect attempt, which the listener may abandon: its timeout ran out,
 * the balancer is draining, the client went away. What an `AbortSignal`
 * does, without an event target: one is made for every connection.
 */
export class Attempt {
  #aborted = false;
  #reason: unknown;
  #onAbort: ((reason: unknown) => void) | undefined;

  /** Whether it has been abandoned. */
  get aborted(): boolean {
    return this.#aborted;
  }

  /** Why, once abandoned. */
  get reason(): unknown {
    return this.#reason;
  }

  /**
   * The engine's: what to call, once, if the attempt is abandoned; undefined
   * once there is nothing left to abandon. One at a time (a later one
   * replaces it); it must not throw.
   */
  setOnAbort(callback: ((reason: unknown) => void) | undefined): void {
    this.#onAbort = callback;
  }

  /** Abandons it (the first reason stays). */
  abort(reason: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    const callback = this.#onAbort;
    this.#onAbort = undefined;
    callback?.(reason);
  }
}
