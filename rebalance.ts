/**
 * Evening out long-lived connections after a recovery
 * (`POST /api/pools/{pool}/rebalance`): a backend that came back, or was
 * added, gets only new connections, so with long-lived clients (databases,
 * message brokers, WebSockets) the old ones keep the load for hours
 * (envoy#2819). A rebalance closes, oldest first and a few at a time, the
 * connections a backend holds beyond its weighted share, so those clients
 * reconnect and are placed anew.
 *
 * Policy only: this works out how many; the listeners close them.
 *
 * @module
 */

/** What the plan needs of a backend. */
export interface RebalanceCandidate {
  readonly name: string;
  /** Its configured weight (its share of connections). */
  readonly configuredWeight: number;
  readonly backup: boolean;
  /** Connections in progress. */
  readonly active: number;
  /** Whether it takes new connections now. */
  readonly usable: boolean;
}

/** One backend's line of a plan. */
export interface RebalanceLine {
  readonly address: string;
  readonly active: number;
  /** Its weighted share of the pool's connections, rounded. */
  readonly share: number;
  /** How many of its connections to close. */
  readonly recycle: number;
}

/** A backend holds too many only beyond this much over its share (and by two or more). */
const TOLERANCE = 0.1;

/**
 * Which backends hold more than their share of the usable non-backup
 * backends' connections, and how many each should give up. A backend not
 * usable (down, draining, disabled) is left alone: draining ones finish by
 * themselves.
 */
export function rebalancePlan(backends: readonly RebalanceCandidate[]): RebalanceLine[] {
  const usable = backends.filter((b) => b.usable && !b.backup);
  const total = usable.reduce((sum, b) => sum + b.active, 0);
  const weights = usable.reduce((sum, b) => sum + b.configuredWeight, 0);
  return usable.map((b) => {
    const share = weights === 0 ? 0 : total * b.configuredWeight / weights;
    const excess = b.active - share;
    const recycle = excess >= 2 && excess > share * TOLERANCE ? Math.floor(excess) : 0;
    return { address: b.name, active: b.active, share: Math.round(share), recycle };
  });
}
