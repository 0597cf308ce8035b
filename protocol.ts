/**
 * What the main thread and the data-plane threads (dataplane.ts) say to each
 * other, as types. Types only: a leaf.
 *
 * The main thread keeps the configuration, health checks, the admin API and
 * the logs; each data-plane thread owns its sockets and runs the listeners'
 * policy (strategy, limits, queue) on a replica of each pool. State flows
 * main → threads as messages (each followed by an `eventfd` wake-up); what
 * the threads count and report flows back in batches, never a message per
 * connection.
 *
 * @module
 */

import type { StrategyName } from "./balancer.ts";
import type { EdgeSettings } from "./edge.ts";
import type { AccessRecord, ConnectionEnd, LoadBalancerEvent } from "./events.ts";
import type { Health, HealthSettings } from "./health.ts";
import type { UdpCounts } from "./metrics.ts";
import type { PoolSettings, SendProxy } from "./pool.ts";
import type { UdpSettings } from "./udp_proxy.ts";

/** A backend as the threads are told of it. */
export interface BackendSnapshot {
  readonly address: string;
  readonly weight: number;
  readonly backup: boolean;
  /** Most connections at once, per thread; null is no limit. */
  readonly maxConnections: number | null;
  readonly adminState: "enabled" | "draining" | "disabled";
  readonly sendProxy: SendProxy;
  /** Its health, times counted from the Unix epoch (threads' clocks start apart). */
  readonly health: Health;
}

/** A pool as the threads are told of it. */
export interface PoolSnapshot {
  readonly name: string;
  /** A built-in strategy, or a policy module's URL (the thread loads it first). */
  readonly balance: StrategyName | {
    readonly module: string;
    readonly options?: Record<string, unknown>;
  };
  readonly settings: PoolSettings;
  readonly queue: { readonly max: number; readonly timeoutMs: number };
  readonly health: HealthSettings;
  /** Whether active checks (on the main thread) bring down backends back. */
  readonly activeChecks: boolean;
  readonly backends: readonly BackendSnapshot[];
}

/** A listener as the threads are told of it. */
export interface ListenerSnapshot {
  readonly name: string;
  readonly listen: string;
  readonly pool: string;
  readonly maxconn: number;
  /** Its front door (PROXY header, ACLs, per-source limits, routes), if any. */
  readonly edge: EdgeSettings | undefined;
  /** A UDP listener's flow settings (its share of `max_sessions`); undefined for TCP. */
  readonly udp?: UdpSettings;
}

/** Main → thread. Each carries an `id` that its reply echoes. */
export type ToThread = { readonly id: number } & ToThreadBody;

/** What a message to a thread says. */
export type ToThreadBody =
  /**
   * First: a counter the main thread raises before each message it posts,
   * so the thread knows when every message it was woken for has arrived.
   */
  | {
    readonly type: "hello";
    readonly sent: SharedArrayBuffer;
    /** One byte per descriptor number, set while the thread holds it open (see threads.ts). */
    readonly held: SharedArrayBuffer;
  }
  /** Start, or reload: the listeners and pools to run now. */
  | {
    readonly type: "configure";
    readonly listeners: readonly ListenerSnapshot[];
    readonly pools: readonly PoolSnapshot[];
    /** How long a listener that is dropped may drain. */
    readonly drainTimeoutMs: number;
  }
  /** A pool's backends changed on the main thread (health, admin, weight). */
  | {
    readonly type: "backends";
    readonly pool: string;
    readonly backends: readonly BackendSnapshot[];
  }
  /** Stop accepting now; reply `stopped`, after a batch with what is still open. */
  | { readonly type: "stop-accepting" }
  /** Drain for up to `timeoutMs`, then cut what is left. */
  | { readonly type: "drain"; readonly timeoutMs: number }
  /** A rebalance: close this share of each backend's connections of `pool`, at `ratePerS`; reply `applied`. */
  | {
    readonly type: "recycle";
    readonly pool: string;
    readonly fractions: Readonly<Record<string, number>>;
    readonly ratePerS: number;
  }
  /**
   * Tests only: throw from the loop, as a bug would, so that what follows a
   * thread's death (its descriptors closed, a new thread) can be tested.
   */
  | { readonly type: "die" };

/** What a thread counted for one backend since its last report. */
export interface BackendCounts {
  readonly pool: string;
  readonly address: string;
  readonly connections: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly connectFailures: number;
  /** Connections in progress now (a gauge, not a delta). */
  readonly active: number;
  /** Connect outcomes, in order, for the main thread's passive health: true ok, or why not. */
  readonly connects: readonly (true | string)[];
  /** Connect times, in milliseconds, for the main thread's percentiles. */
  readonly connectTimes: readonly number[];
}

/** Thread → main. A reply echoes its request's `id`; 0 is a thread's own report. */
export type FromThread = { readonly id: number } & FromThreadBody;

/** What a thread's message says. */
export type FromThreadBody =
  /** Started: the eventfd the main thread writes after each message, to wake the thread. */
  | { readonly type: "ready"; readonly wakeFd: number }
  /** Listening on every listener it was given (an address per listener, in order). */
  | { readonly type: "listening"; readonly addresses: readonly string[] }
  /** A listener could not be bound, or the configuration not applied. */
  | { readonly type: "failed"; readonly message: string }
  /** What happened since the last batch, in order; access records packed. */
  | {
    readonly type: "batch";
    readonly events: Readonly<PackedEvents>;
    readonly backends: readonly BackendCounts[];
    /** Client connections in progress, per listener name. */
    readonly active: Readonly<Record<string, number>>;
    /** UDP listeners' counts since the last batch, per listener name. */
    readonly udp: Readonly<Record<string, UdpCounts>>;
  }
  /** The backends of the last `backends` message are in place. */
  | { readonly type: "applied" }
  /** No longer accepting (a batch with the connections still open came first). */
  | { readonly type: "stopped" }
  /** Drained: every listener closed; `cut` connections were cut at the timeout. */
  | { readonly type: "drained"; readonly cut: number };

/**
 * A batch's events as a thread sends them: events as they are, and each
 * access record as its eight fields inline, in a fixed order, starting with
 * the time in milliseconds since the epoch (a number, where an event is an
 * object). Plain values in one array cost less to make, and to copy between
 * threads, than an object and a Date per connection.
 */
export type PackedEvents = (LoadBalancerEvent | string | number | undefined)[];

/** Fields of an access record in {@linkcode PackedEvents}. */
const RECORD_FIELDS = 8;

/** Appends `record` to `events` for the trip to the main thread. */
export function packRecord(events: PackedEvents, record: AccessRecord): void {
  events.push(
    record.time.getTime(),
    record.listener,
    record.client,
    record.backend,
    record.bytesIn,
    record.bytesOut,
    record.durationMs,
    record.end,
  );
}

/** Calls `each` with every event of a batch, in order, access records unpacked. */
export function unpackEvents(
  events: Readonly<PackedEvents>,
  each: (event: LoadBalancerEvent) => void,
): void {
  for (let at = 0; at < events.length;) {
    const item = events[at];
    if (typeof item !== "number") {
      each(item as LoadBalancerEvent);
      at++;
      continue;
    }
    // A packing mistake must not pass for a record: its second field names the listener.
    if (typeof events[at + 1] !== "string") throw new TypeError(`no access record at ${at}`);
    const record: AccessRecord = {
      time: new Date(item),
      listener: events[at + 1] as string,
      client: events[at + 2] as string,
      backend: events[at + 3] as string | undefined,
      bytesIn: events[at + 4] as number,
      bytesOut: events[at + 5] as number,
      durationMs: events[at + 6] as number,
      end: events[at + 7] as ConnectionEnd,
    };
    each({ type: "connection", record });
    at += RECORD_FIELDS;
  }
}
