/**
 * Backend health as pure state changes: each function takes the state, an
 * event and the time, and returns the new state (and the change, if any).
 * No timers, no sockets: the caller owns the clock and the probes, so every
 * rule here is tested call by call.
 *
 * - Active checks (HAProxy's meanings): an up backend goes down after `fall`
 *   failed checks in a row, a down one comes up after `rise` good ones.
 * - Passive ejection (always on): an up backend goes down after `fall`
 *   failed connects in a row. While down it is retried after a backoff that
 *   doubles from `backoffBaseMs` to `backoffMaxMs`: by the active check when
 *   there is one, otherwise by letting one client connection try it (a
 *   circuit breaker's half-open state). A success brings it up.
 * - Slow start: a backend that comes up ramps its effective weight from
 *   small to full over `slowStartMs`.
 *
 * @module
 */

import { nextBackoff } from "./clock.ts";

/** The rules' settings. */
export interface HealthSettings {
  /** Good checks in a row that bring a down backend up. @default {2} */
  rise: number;
  /** Failed checks or connects in a row that take an up backend down. @default {3} */
  fall: number;
  /** First wait before retrying a down backend. @default {1000} */
  backoffBaseMs: number;
  /** Longest wait before retrying a down backend. @default {30000} */
  backoffMaxMs: number;
  /** Time over which a backend that came up ramps to its full weight; 0 is off. @default {0} */
  slowStartMs: number;
}

/** The defaults, as HAProxy has them where it has them. */
export const DEFAULT_HEALTH: HealthSettings = {
  rise: 2,
  fall: 3,
  backoffBaseMs: 1000,
  backoffMaxMs: 30000,
  slowStartMs: 0,
};

/** One backend's health. */
export interface Health {
  readonly state: "up" | "down";
  /** Failures in a row while up; good checks in a row while down. */
  readonly streak: number;
  /** While down: the current backoff, and when the next retry may start. */
  readonly backoffMs: number;
  readonly retryAt: number;
  /** While down without active checks: a client connection is trying it now. */
  readonly trial: boolean;
  /** When it last came up (slow start counts from here); -Infinity at start. */
  readonly upSince: number;
}

/** A change of state, for the log and the caller's events. */
export interface HealthChange {
  readonly from: "up" | "down";
  readonly to: "up" | "down";
  readonly why: string;
}

/** What a rule returns: the new state, and the change if the state flipped. */
export interface Outcome {
  readonly health: Health;
  readonly change?: HealthChange;
}

/** A backend at start: up, at full weight (slow start applies only to a comeback). */
export const INITIAL_HEALTH: Health = {
  state: "up",
  streak: 0,
  backoffMs: 0,
  retryAt: 0,
  trial: false,
  upSince: -Infinity,
};

function goDown(now: number, settings: HealthSettings, why: string): Outcome {
  return {
    health: {
      state: "down",
      streak: 0,
      backoffMs: settings.backoffBaseMs,
      retryAt: now + settings.backoffBaseMs,
      trial: false,
      upSince: -Infinity,
    },
    change: { from: "up", to: "down", why },
  };
}

function comeUp(now: number, why: string): Outcome {
  return {
    health: { ...INITIAL_HEALTH, upSince: now },
    change: { from: "down", to: "up", why },
  };
}

function backOff(health: Health, now: number, settings: HealthSettings): Health {
  const backoffMs = nextBackoff(health.backoffMs, settings.backoffBaseMs, settings.backoffMaxMs);
  return { ...health, streak: 0, backoffMs, retryAt: now + backoffMs, trial: false };
}

// Up: a success clears the streak of failures; `fall` failures in a row take it down.
function whileUp(
  health: Health,
  ok: boolean,
  now: number,
  settings: HealthSettings,
  what: "check" | "connect",
  reason: string,
): Outcome {
  if (ok) return { health: health.streak === 0 ? health : { ...health, streak: 0 } };
  const streak = health.streak + 1;
  if (streak >= settings.fall) {
    return goDown(now, settings, `${streak} failed ${what}(s) in a row, last: ${reason}`);
  }
  return { health: { ...health, streak } };
}

/** How one observation of a backend (a check, a connect) moves its health. */
export type Record = (
  health: Health,
  ok: boolean,
  now: number,
  settings: HealthSettings,
  reason?: string,
) => Outcome;

/** An active check's result. `reason` says what failed, for the log. */
export const recordCheck: Record = (health, ok, now, settings, reason = "check failed") => {
  if (health.state === "up") return whileUp(health, ok, now, settings, "check", reason);
  if (!ok) return { health: backOff(health, now, settings) };
  const streak = health.streak + 1;
  if (streak >= settings.rise) return comeUp(now, `${streak} good check(s) in a row`);
  // Good so far: check again at the normal interval, not after the backoff.
  return { health: { ...health, streak } };
};

/** A client connection's attempt to connect. */
export const recordConnect: Record = (health, ok, now, settings, reason = "connect failed") => {
  if (health.state === "up") return whileUp(health, ok, now, settings, "connect", reason);
  // Down: this was the half-open trial (or a retry the active check allowed).
  if (ok) return comeUp(now, "a client connected");
  return { health: backOff(health, now, settings) };
};

/** Marks that a client connection is now trying a down backend (half-open). */
export function startTrial(health: Health): Health {
  return health.state === "down" ? { ...health, trial: true } : health;
}

/**
 * Whether a new connection may go to the backend now. Without active checks
 * a down backend admits one trial connection once its backoff has run out;
 * with them, only the checker brings it back.
 */
export function admits(health: Health, now: number, activeChecks: boolean): boolean {
  if (health.state === "up") return true;
  return !activeChecks && !health.trial && now >= health.retryAt;
}

/**
 * The weight to balance with: the configured weight, ramped linearly from a
 * twentieth of it to all of it over `slowStartMs` after the backend came up.
 */
export function effectiveWeight(
  weight: number,
  health: Health,
  now: number,
  slowStartMs: number,
): number {
  if (slowStartMs <= 0 || health.state !== "up") return weight;
  const elapsed = now - health.upSince;
  if (elapsed >= slowStartMs) return weight;
  return weight * Math.max(0.05, elapsed / slowStartMs);
}

/** When an active checker should probe next, after the result it just recorded. */
export function nextCheckIn(health: Health, now: number, intervalMs: number): number {
  // Down with no good check yet: wait out the backoff; otherwise the interval.
  if (health.state === "down" && health.streak === 0) return Math.max(0, health.retryAt - now);
  return intervalMs;
}

/**
 * `health` with its times moved by `deltaMs`: how a health state crosses to
 * a thread whose clock counts from another origin (`performance.timeOrigin`).
 */
export function shiftHealth(health: Health, deltaMs: number): Health {
  return { ...health, retryAt: health.retryAt + deltaMs, upSince: health.upSince + deltaMs };
}
