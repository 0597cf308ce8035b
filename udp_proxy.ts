/**
 * One UDP listener: datagrams from clients, each client's flow placed on a
 * backend and kept there until it ends, replies sent back from the
 * listener's own address.
 *
 * A flow is a client's address and port. Its first datagram picks a backend
 * through the pool's strategy (source-hash sees the client's address) and
 * opens a socket of the flow's own towards it, so replies come back to the
 * flow they answer. Every later datagram of the flow goes to that backend,
 * whole, until the flow ends: after `session_idle_ms` without a datagram
 * either way, after `responses` replies, when the table is full and it is the
 * least recently used, or at its next datagram once its backend is down or
 * disabled (that datagram then starts a new flow elsewhere). A backend that
 * is draining, full, or removed from the pool keeps its flows, as it keeps
 * its TCP connections (`on_remove: close` and `on_down: shutdown-sessions`
 * end them at once instead).
 *
 * The engine moves datagrams (engine.ts: `listenDatagrams`,
 * `dialDatagrams`); this module decides where they go and counts them. A
 * flow is reported like a connection when it ends (the access log, the
 * backend's counts), and dropped flows are counted by cause.
 *
 * @module
 */

import { formatHostPort, type HostPort } from "./address.ts";
import { type Clock, realClock } from "./clock.ts";
import type { DatagramListener, DatagramPeer, DatagramSocket, Engine } from "./engine.ts";
import { describe } from "./errors.ts";
import type { ConnectionEnd, LoadBalancerEvent, RejectReason } from "./events.ts";
import {
  DURATION_BUCKETS,
  emptyUdpCounts,
  type FlowDrop,
  Histogram,
  type UdpBackendCounts,
  type UdpCounts,
} from "./metrics.ts";
import { type Backend, NOTHING_TRIED, type Pool } from "./pool.ts";
import { encodeProxyV2 } from "./proxy_protocol.ts";

/** How a UDP listener keeps its flows (the listener's `udp:` block). */
export interface UdpSettings {
  /** A flow ends after this long without a datagram either way. @default {30000} */
  sessionIdleMs: number;
  /** A flow ends after this many replies; 0 is no limit. @default {0} */
  responses: number;
  /** Flows at most; beyond it the least recently used ends. @default {100000} */
  maxSessions: number;
}

/** The settings a listener without a `udp:` block gets. */
export const DEFAULT_UDP: UdpSettings = {
  sessionIdleMs: 30_000,
  responses: 0,
  maxSessions: 100_000,
};

/** Options for {@linkcode UdpBalancer}. */
export interface UdpBalancerOptions {
  /** The listener's name, for logs and metrics. @default {"default"} */
  name?: string;
  /** Where it listens. */
  address: HostPort;
  /** Bind with SO_REUSEPORT (one socket per data-plane thread or worker). */
  reusePort?: boolean;
  /** Moves the datagrams. */
  engine: Engine;
  /** Where flows go. */
  pool: Pool;
  settings?: Partial<UdpSettings>;
  /** The clock idle flows are timed on. @default {realClock} */
  clock?: Clock;
  /** Receives every event (a flow's end, as a `connection`). */
  onEvent?: (event: LoadBalancerEvent) => void;
}

/** One client's flow. */
interface Flow {
  readonly key: string | number;
  readonly peer: DatagramPeer;
  readonly backend: Backend;
  readonly pool: Pool;
  readonly socket: DatagramSocket;
  /** The PROXY v2 header each datagram to the backend starts with, if it takes one. */
  readonly header: Uint8Array | undefined;
  readonly startedAt: number;
  lastSeen: number;
  replies: number;
  /** It is its backend's trial after a backoff: it decides whether the backend is up again. */
  trial: boolean;
  /** Its backend's datagram counts under this listener. */
  readonly counts: UdpBackendCounts;
  bytesIn: number;
  bytesOut: number;
  ended: boolean;
}

/** How a flow ends, in the access log. */
type FlowEnd = Extract<
  ConnectionEnd,
  | "idle-timeout"
  | "responses"
  | "table-full"
  | "backend-down"
  | "backend-removed"
  | "server-reset"
  | "drain-timeout"
>;

// The longest datagram, with room for the PROXY v2 header in front (IPv6: 52 bytes).
const SCRATCH_BYTES = 65_535 + 64;

/** A running UDP listener. */
export class UdpBalancer {
  /** The listener's name, for logs and metrics. */
  readonly name: string;
  /** How long flows lasted, in seconds. */
  readonly durations = new Histogram(DURATION_BUCKETS);
  /** UDP listeners refuse nobody at a front door (they have none yet). */
  readonly rejected: ReadonlyMap<RejectReason, number> = new Map();
  readonly #counts: UdpCounts = emptyUdpCounts();
  // Sends refused at once; the engine counts those its batch sends lost later.
  #sendErrors = 0;
  readonly #engine: Engine;
  readonly #clock: Clock;
  readonly #emit: (event: LoadBalancerEvent) => void;
  readonly #socket: DatagramListener;
  readonly #flows = new Map<string | number, Flow>();
  readonly #scratch = new Uint8Array(SCRATCH_BYTES);
  #pool: Pool;
  #settings: UdpSettings;
  #sweeper: number | undefined;
  #stopped = false;
  #drained: PromiseWithResolvers<void> | undefined;

  /** Binds at once. @throws when the address cannot be bound */
  constructor(options: UdpBalancerOptions) {
    this.name = options.name ?? "default";
    this.#engine = options.engine;
    this.#pool = options.pool;
    this.#settings = { ...DEFAULT_UDP, ...options.settings };
    this.#clock = options.clock ?? realClock;
    const onEvent = options.onEvent ?? (() => {});
    this.#emit = (event) => {
      try {
        onEvent(event);
      } catch {
        // A failing log sink must not stop the datagrams.
      }
    };
    this.#socket = this.#engine.listenDatagrams(
      options.address,
      { reusePort: options.reusePort ?? false },
      (bytes, key) => {
        try {
          this.#fromClient(bytes, key);
        } catch (error) {
          this.#internalError(error);
        }
      },
    );
  }

  /** Datagrams and bytes each way, flows dropped by cause, per backend. */
  get udp(): UdpCounts {
    this.#counts.sendErrors = this.#sendErrors + (this.#socket.droppedSends ?? 0);
    return this.#counts;
  }

  /** Where clients send. */
  get address(): HostPort {
    return this.#socket.address;
  }

  /** The pool new flows go to. */
  get pool(): Pool {
    return this.#pool;
  }

  /** Flows open now. */
  get activeConnections(): number {
    return this.#flows.size;
  }

  /** UDP listeners have no front door. */
  get edge(): undefined {
    return undefined;
  }

  /** Whether new flows may go to `pool` here. */
  serves(pool: string): boolean {
    return this.#pool.name === pool;
  }

  /** Takes a new pool and settings for new flows; flows open keep their backend, if it stays. */
  reconfigure(options: { pool: Pool; settings?: Partial<UdpSettings> }): void {
    this.#pool = options.pool;
    this.#settings = { ...DEFAULT_UDP, ...options.settings };
    // Flows the pool no longer wants go first, then the oldest beyond a smaller table.
    this.closeUnwanted();
    while (this.#flows.size > this.#settings.maxSessions) this.#evictOldest();
  }

  /**
   * Ends the flows a pool no longer wants: to a backend that left it (with
   * `on_remove: close`), or that is down or disabled (with `on_down:
   * shutdown-sessions`). The others move at their next datagram.
   */
  closeUnwanted(): void {
    for (const flow of [...this.#flows.values()]) {
      const current = flow.pool.name === this.#pool.name
        ? this.#pool.backends.find((b) => b.name === flow.backend.name)
        : undefined;
      const settings = this.#pool.settings;
      if (current === undefined) {
        if (settings.onRemove === "close") this.#end(flow, "backend-removed");
      } else if (!flow.trial && isDown(current) && settings.onDown === "shutdown-sessions") {
        this.#end(flow, "backend-down");
      }
    }
  }

  /** A rebalance moves TCP connections; a UDP flow moves by itself when it ends. */
  recycle(): number {
    return 0;
  }

  /** Datagrams are taken from the moment it is made: nothing to start. */
  serve(): Promise<void> {
    return Promise.resolve();
  }

  /**
   * Takes no new flows from now on: a datagram from a new client is dropped.
   * Flows open go on (their replies leave through this socket) until
   * {@linkcode shutdown}.
   */
  stopAccepting(): Promise<void> {
    this.#stopped = true;
    return Promise.resolve();
  }

  /**
   * Takes no new flows, lets the open ones end by themselves (replies,
   * idle) for up to `drainTimeoutMs`, then ends what is left (reported as
   * `drain-timeout`) and closes the socket. Resolves with how many were cut.
   */
  async shutdown(drainTimeoutMs: number): Promise<{ cut: number }> {
    this.#stopped = true;
    if (this.#flows.size > 0 && drainTimeoutMs > 0) {
      this.#drained ??= Promise.withResolvers<void>();
      const timer = this.#clock.setTimer(() => this.#drained?.resolve(), drainTimeoutMs);
      await this.#drained.promise;
      this.#clock.clearTimer(timer);
    }
    const cut = this.#flows.size;
    for (const flow of [...this.#flows.values()]) this.#end(flow, "drain-timeout");
    this.#clock.clearTimer(this.#sweeper);
    this.#sweeper = undefined;
    try {
      this.#socket.close();
    } catch {
      // Already closed.
    }
    return { cut };
  }

  /** Ends every flow and closes the socket at once (a start or reload that failed). */
  close(): void {
    // With no drain time nothing is awaited: every flow and the socket close now.
    void this.shutdown(0);
  }

  // A datagram from a client: find or make its flow, send it on.
  #fromClient(bytes: Uint8Array, key: string | number): void {
    const counts = this.#counts;
    counts.datagramsIn++;
    counts.bytesIn += bytes.length;
    let flow = this.#flows.get(key);
    // A trial flow stays on its backend, which is down until the trial decides.
    if (flow !== undefined && !flow.trial && isDown(flow.backend)) {
      this.#end(flow, "backend-down");
      flow = undefined;
    }
    flow ??= this.#open(key);
    if (flow === undefined) return;
    const now = this.#clock.now();
    flow.lastSeen = now;
    // Least recently used first: the flow moves to the end of the table.
    this.#flows.delete(key);
    this.#flows.set(key, flow);
    let datagram = bytes;
    if (flow.header !== undefined) {
      this.#scratch.set(flow.header, 0);
      this.#scratch.set(bytes, flow.header.length);
      datagram = this.#scratch.subarray(0, flow.header.length + bytes.length);
    }
    if (!flow.socket.send(datagram)) {
      this.#sendErrors++;
      return;
    }
    flow.bytesIn += bytes.length;
    flow.counts.datagramsIn++;
    flow.counts.bytesIn += bytes.length;
  }

  // A new flow from the datagram being handled, or undefined (dropped, counted).
  #open(key: string | number): Flow | undefined {
    if (this.#stopped) {
      this.#drop("draining");
      return undefined;
    }
    const peer = this.#socket.sender();
    const pool = this.#pool;
    const backend = pool.strategy.pick(pool.backends, {
      tried: NOTHING_TRIED,
      clientAddress: peer.hostname,
      listener: this.name,
    });
    if (backend === undefined) {
      // Every usable backend at its maxconn_per_backend (flows do not queue), or none up.
      this.#drop(pool.hasRoomLater(NOTHING_TRIED) ? "full" : "no-backend");
      return undefined;
    }
    if (this.#flows.size >= this.#settings.maxSessions) this.#evictOldest();
    const now = this.#clock.now();
    let header: Uint8Array | undefined;
    let socket: DatagramSocket;
    try {
      // The destination is the address the listener is bound to (a wildcard
      // one names 0.0.0.0 or ::: which local address a datagram reached is not read).
      if (backend.sendProxy === "v2") header = encodeProxyV2(peer, this.#socket.address, "udp");
      socket = this.#engine.dialDatagrams(backend.address, {
        onDatagram: (reply) => {
          try {
            this.#fromBackend(flow, reply);
          } catch (error) {
            this.#internalError(error);
          }
        },
        onError: (reason) => {
          try {
            this.#backendFailed(flow, reason);
          } catch (error) {
            this.#internalError(error);
          }
        },
      });
    } catch (error) {
      this.#drop("socket-error");
      this.#emit({
        type: "connect-error",
        client: formatHostPort(peer),
        backend: backend.name,
        reason: describe(error),
      });
      return undefined;
    }
    // A backend marked down is tried again by one flow after its backoff.
    const trial = backend.health.state === "down";
    if (trial) backend.startTrial();
    const flow: Flow = {
      key,
      peer,
      backend,
      pool,
      socket,
      header,
      startedAt: now,
      lastSeen: now,
      replies: 0,
      trial,
      counts: perBackend(this.#counts, pool, backend),
      bytesIn: 0,
      bytesOut: 0,
      ended: false,
    };
    backend.active++;
    this.#flows.set(key, flow);
    this.#sweeper ??= this.#clock.setTimer(() => this.#sweep(), this.#sweepEveryMs(), {
      unref: true,
    });
    return flow;
  }

  // A reply: back to the flow's client, from the listener's address.
  #fromBackend(flow: Flow, bytes: Uint8Array): void {
    if (flow.ended) return;
    const counts = this.#counts;
    if (!this.#socket.send(bytes, flow.peer)) {
      this.#sendErrors++;
      return;
    }
    counts.datagramsOut++;
    counts.bytesOut += bytes.length;
    flow.counts.datagramsOut++;
    flow.counts.bytesOut += bytes.length;
    flow.bytesOut += bytes.length;
    flow.lastSeen = this.#clock.now();
    this.#flows.delete(flow.key);
    this.#flows.set(flow.key, flow);
    // The backend answers: for passive health, a connect that worked (once per flow).
    if (flow.replies++ === 0) flow.backend.recordConnect(true);
    const limit = this.#settings.responses;
    if (limit > 0 && flow.replies >= limit) this.#end(flow, "responses");
  }

  // The backend's port is closed (ICMP): the flow ends, and passive health hears of it.
  #backendFailed(flow: Flow, reason: string): void {
    if (flow.ended) return;
    flow.backend.connectFailures++;
    flow.backend.recordConnect(false, reason);
    this.#emit({
      type: "connect-error",
      client: formatHostPort(flow.peer),
      backend: flow.backend.name,
      reason,
    });
    this.#end(flow, "server-reset");
  }

  // A bug met handling one datagram: said, and that datagram alone is lost
  // (the engine's receive loop, and every other flow, go on).
  #internalError(error: unknown): void {
    this.#emit({ type: "internal-error", client: "-", reason: `udp ${describe(error)}` });
  }

  #evictOldest(): void {
    const oldest = this.#flows.values().next().value;
    if (oldest === undefined) return;
    this.#drop("table-full");
    this.#end(oldest, "table-full");
  }

  #drop(cause: FlowDrop): void {
    this.#counts.dropped[cause]++;
  }

  #end(flow: Flow, end: FlowEnd): void {
    if (flow.ended) return;
    flow.ended = true;
    // A trial that ends with no reply and no ICMP error: UDP cannot tell a
    // silent backend from a one-way protocol (syslog), so it counts as a
    // connect that worked, as a TCP connect would (active checks say more).
    if (flow.trial && flow.replies === 0 && end !== "server-reset") {
      flow.backend.recordConnect(true);
    }
    this.#flows.delete(flow.key);
    try {
      flow.socket.close();
    } catch {
      // Closed already.
    }
    const { backend } = flow;
    backend.active--;
    backend.connections++;
    backend.bytesIn += flow.bytesIn;
    backend.bytesOut += flow.bytesOut;
    const now = this.#clock.now();
    this.durations.observe((now - flow.startedAt) / 1000);
    this.#emit({
      type: "connection",
      record: {
        time: new Date(),
        listener: this.name,
        client: formatHostPort(flow.peer),
        backend: backend.name,
        bytesIn: flow.bytesIn,
        bytesOut: flow.bytesOut,
        durationMs: now - flow.startedAt,
        end,
      },
    });
    if (this.#stopped && this.#flows.size === 0) this.#drained?.resolve();
  }

  // Oldest first: the table is in order of last use, so the sweep stops at
  // the first flow that is not idle.
  #sweep(): void {
    this.#sweeper = undefined;
    const idleMs = this.#settings.sessionIdleMs;
    const now = this.#clock.now();
    for (const flow of this.#flows.values()) {
      if (now - flow.lastSeen < idleMs) break;
      this.#drop("idle");
      this.#end(flow, "idle-timeout");
    }
    // Draining too: a flow that goes quiet ends, and the drain with it.
    if (this.#flows.size > 0) {
      this.#sweeper = this.#clock.setTimer(() => this.#sweep(), this.#sweepEveryMs(), {
        unref: true,
      });
    }
  }

  // Idle flows are found within a quarter of the idle time (10 ms to 1 s).
  #sweepEveryMs(): number {
    return Math.min(1000, Math.max(10, this.#settings.sessionIdleMs / 4));
  }
}

// A backend's datagram counts under this listener, made on first use.
function perBackend(counts: UdpCounts, pool: Pool, backend: Backend) {
  const key = `${pool.name} ${backend.name}`;
  let entry = counts.backends[key];
  if (entry === undefined) {
    entry = {
      pool: pool.name,
      backend: backend.name,
      datagramsIn: 0,
      datagramsOut: 0,
      bytesIn: 0,
      bytesOut: 0,
    };
    counts.backends[key] = entry;
  }
  return entry;
}

// Down by health, or disabled: its flows move. Draining or full is not
// down: those take no new flows but keep the ones they have.
function isDown(backend: Backend): boolean {
  return backend.health.state === "down" || backend.adminState === "disabled";
}
