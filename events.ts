/**
 * What the data plane reports, as types: how a connection ended, the access
 * record, every event a listener emits, and the readiness line. A leaf: it
 * imports nothing, and everything may import it.
 *
 * @module
 */

/** How two joined connections ended, from the balancer's point of view.
 *
 * - `client-fin` / `server-fin`: both directions finished cleanly; the named
 *   side was the first to end its stream.
 * - `client-reset` / `server-reset`: the named side failed (reset, broken
 *   pipe, …); this wins over a clean end on the other side.
 * - `aborted`: the caller cut it (drain timeout, …).
 * - `idle-timeout` / `half-closed-timeout`: the caller cut it for being
 *   quiet, or half-closed, too long.
 */
export type JoinEnd =
  | "client-fin"
  | "server-fin"
  | "client-reset"
  | "server-reset"
  | "aborted"
  | "idle-timeout"
  | "half-closed-timeout";

/** How a client connection ended; the access log's `end` field.
 *
 * The join's ends (but `aborted`), plus:
 * - `connect-failed`: every backend was tried and none could be reached;
 * - `no-backend`: no backend was there to try (empty pool, all down);
 * - `drain-timeout`: still open when the drain timeout ran out at shutdown;
 * - `backend-removed`: its backend left the pool (discovery, the admin API, a
 *   reload) and the pool says `on_remove: close`;
 * - `backend-down`: its backend was marked down or disabled and the pool says
 *   `on_down: shutdown-sessions`;
 * - `rebalanced`: closed by a rebalance of its pool, so that it reconnects;
 * - `queue-timeout`: every usable backend was at its limit for the whole
 *   queue timeout; `queue-full`: they were, and the queue was full too.
 *
 * A UDP flow ends as `idle-timeout`, `backend-down`, `backend-removed`,
 * `drain-timeout`, `server-reset` (its backend's port was unreachable), or:
 * - `responses`: it had the replies its listener allows (`udp.responses`);
 * - `table-full`: it was the least recently used when the table was full.
 */
export type ConnectionEnd =
  | Exclude<JoinEnd, "aborted">
  | RejectReason
  | "connect-failed"
  | "no-backend"
  | "drain-timeout"
  | "backend-removed"
  | "backend-down"
  | "rebalanced"
  | "queue-timeout"
  | "queue-full"
  | "responses"
  | "table-full";

/**
 * Why a listener closed a client before dialling any backend (edge.ts):
 * - `proxy-header`: its PROXY header was missing, malformed or too slow;
 * - `proxy-not-allowed`: it may not send one (`accept_proxy_from`);
 * - `acl`: its source is denied, or not allowed;
 * - `per-source-maxconn` / `per-source-rate`: its source is at its limit;
 * - `no-route`: no route matched and the listener has no pool of its own.
 */
export type RejectReason =
  | "proxy-header"
  | "proxy-not-allowed"
  | "acl"
  | "per-source-maxconn"
  | "per-source-rate"
  | "no-route";

/** Every {@linkcode RejectReason}, for counting them. */
export const REJECT_REASONS: readonly RejectReason[] = [
  "proxy-header",
  "proxy-not-allowed",
  "acl",
  "per-source-maxconn",
  "per-source-rate",
  "no-route",
];

/** Whether an access record's `end` is a refusal at the front door. */
export function isRejectReason(end: string): end is RejectReason {
  return (REJECT_REASONS as readonly string[]).includes(end);
}

/** What the access log says about one finished client connection. */
export interface AccessRecord {
  /** When the connection ended. */
  readonly time: Date;
  /** The listener's name (`default` without a config file). */
  readonly listener: string;
  /** The client's address, `HOST:PORT`. */
  readonly client: string;
  /** The backend it was joined to, if any. */
  readonly backend: string | undefined;
  /** Bytes received from the client (and sent on to the backend). */
  readonly bytesIn: number;
  /** Bytes received from the backend (and sent on to the client). */
  readonly bytesOut: number;
  /** From accept to close, in milliseconds. */
  readonly durationMs: number;
  /** How it ended. */
  readonly end: ConnectionEnd;
}

/** Everything a listener and its pool report; the caller decides where it goes. */
export type LoadBalancerEvent =
  | { readonly type: "connection"; readonly record: AccessRecord }
  | {
    readonly type: "connect-error";
    readonly client: string;
    readonly backend: string;
    readonly reason: string;
  }
  | {
    /** A backend connect found no free descriptor; the client waits and tries again. */
    readonly type: "descriptor-shortage";
    readonly client: string;
    readonly backend: string;
    readonly reason: string;
    readonly waitMs: number;
  }
  | {
    /** Accepting failed (out of descriptors, …); reported once, when it starts failing. */
    readonly type: "accept-error";
    readonly reason: string;
    readonly backoffMs: number;
  }
  | {
    /** Accepting works again after `failures` failed attempts. */
    readonly type: "accept-recovered";
    readonly failures: number;
  }
  | {
    /**
     * A policy module threw or returned no backend it was offered; that
     * attempt went round robin. `say`: log it (at most once a second per pool).
     */
    readonly type: "policy-error";
    readonly pool: string;
    readonly problem: string;
    readonly say: boolean;
  }
  | {
    /** A backend went up or down. */
    readonly type: "backend-state";
    readonly backend: string;
    readonly from: "up" | "down";
    readonly to: "up" | "down";
    readonly why: string;
  }
  | {
    /**
     * Clients closed at the front door for `reason`: said at most once a
     * second per listener and reason, with how many since it last was, and
     * why the last one was.
     */
    readonly type: "rejected";
    readonly listener: string;
    readonly reason: RejectReason;
    readonly count: number;
    readonly client: string;
    readonly detail: string;
  }
  | {
    /** A bug: something threw that should not have. The connection was closed. */
    readonly type: "internal-error";
    readonly client: string;
    readonly reason: string;
  };

/**
 * Readiness: each listener, once it accepts, writes one diagnostic line
 * `… listening on HOST:PORT; backends …` (and a `--workers` supervisor,
 * `… listening on HOST:PORT with N workers` once all of them do). The demo,
 * the supervisor and the tests find it with {@linkcode readyAddress} rather
 * than matching the prose themselves.
 */
export const READY = "listening on ";

/** The `HOST:PORT` a readiness line names, or undefined if `line` is not one. */
export function readyAddress(line: string): string | undefined {
  const at = line.indexOf(READY);
  if (at < 0) return undefined;
  return /^(\S+?)(;| with |$)/.exec(line.slice(at + READY.length))?.[1];
}

/** The port of a readiness line, or undefined. */
export function readyPort(line: string): number | undefined {
  const address = readyAddress(line);
  const port = address === undefined ? NaN : Number(address.slice(address.lastIndexOf(":") + 1));
  return Number.isInteger(port) ? port : undefined;
}
