/**
 * The soak's clients, by kind: what each asks for and how it behaves, for
 * the load (every kind at once, each a few loops), the final round once the
 * faults are over, and the connections held open across SIGTERM.
 *
 * @module
 */

import type { ClientPlan } from "./client.ts";

/** One client to run: its kind, what it sends and asks for, and how it behaves. */
export interface ClientSpec {
  kind: string;
  up: number;
  down: number;
  /** The backend finishes its stream first (pattern.ts). @default false */
  backendFirst?: boolean;
  plan: ClientPlan;
}

/** A kind of client in the load: run in `loops` loops, one client after another. */
export interface LoadKind {
  kind: string;
  /** Clients of this kind at once, each a loop. */
  loops: number;
  /** A loop's pause between one client's end and the next one's start. */
  pauseMs: number;
  /** How a client of this kind ends when it was served as asked. @default "ok" */
  served?: "ok" | "reset-sent";
  /** The next client of this kind. */
  next(random: () => number): ClientSpec;
}

/** A whole number in [low, high). */
export function between(random: () => number, low: number, high: number): number {
  return Math.floor(low + random() * (high - low));
}

const KiB = 1024;
const MiB = 1024 * KiB;

/** Every kind of client in the load; a short run (under 5 minutes) idles and reads less. */
export function loadKinds(shortRun: boolean): LoadKind[] {
  const stream = (kind: string, backendFirst: boolean): LoadKind => ({
    kind,
    loops: 1,
    pauseMs: 100,
    next: (random) => ({
      kind,
      up: between(random, 1 * MiB, 8 * MiB),
      down: between(random, 1 * MiB, 8 * MiB),
      backendFirst,
      plan: { deadlineMs: 60_000 },
    }),
  });
  return [
    {
      kind: "short",
      loops: 6,
      pauseMs: 40,
      next: (random) => ({
        kind: "short",
        up: between(random, 1, 2 * KiB),
        down: between(random, 1, 2 * KiB),
        plan: { deadlineMs: 15_000 },
      }),
    },
    stream("stream", false),
    stream("backend-first", true),
    {
      kind: "idle",
      loops: 30,
      pauseMs: 0,
      next: (random) => ({
        kind: "idle",
        up: 16,
        down: 16,
        plan: { idleMs: between(random, 3_000, shortRun ? 8_000 : 20_000), deadlineMs: 60_000 },
      }),
    },
    {
      kind: "slow-reader",
      loops: 2,
      pauseMs: 0,
      next: (random) => ({
        kind: "slow-reader",
        up: 1 * KiB,
        down: shortRun ? 512 * KiB : 2 * MiB,
        plan: { stallMs: between(random, 1_000, 2_500), deadlineMs: 120_000 },
      }),
    },
    {
      kind: "reset",
      loops: 1,
      pauseMs: 200,
      served: "reset-sent",
      next: (random) => ({
        kind: "reset",
        up: 1 * KiB,
        down: 1 * MiB,
        plan: { resetAfter: between(random, 1, 256 * KiB), deadlineMs: 15_000 },
      }),
    },
  ];
}

/** A loop pauses at least this long after a refused connect, so that it never spins. */
export const REFUSED_PAUSE_MS = 250;

/** `count` short clients: up to 2 KiB each way. */
export function shortClients(count: number, random: () => number): ClientSpec[] {
  return Array.from({ length: count }, () => ({
    kind: "short",
    up: between(random, 1, 2 * KiB),
    down: between(random, 1, 2 * KiB),
    plan: { deadlineMs: 15_000 },
  }));
}

/**
 * The final round, once the faults are over: 20 short clients and two
 * streams (one backend-first), all at once; every one must be `ok`.
 */
export function finalRound(random: () => number): ClientSpec[] {
  const stream = (backendFirst: boolean): ClientSpec => ({
    kind: backendFirst ? "backend-first" : "stream",
    up: 2 * MiB,
    down: 2 * MiB,
    backendFirst,
    plan: { deadlineMs: 60_000 },
  });
  return [...shortClients(20, random), stream(false), stream(true)];
}

/**
 * Connections held open across SIGTERM: each sends its header, then nothing
 * until `release` (once the balancer says it is draining), then its stream.
 */
export function heldAcrossSigterm(count: number, release: Promise<unknown>): ClientSpec[] {
  return Array.from({ length: count }, () => ({
    kind: "stream",
    up: 256 * KiB,
    down: 256 * KiB,
    plan: { holdUntil: release, deadlineMs: 30_000 },
  }));
}
