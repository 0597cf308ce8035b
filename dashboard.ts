/**
 * What the dashboard (`/` on the admin port, dashboard_page.ts) shows, kept
 * on the main thread: once a second it samples every listener and backend
 * into five minutes of history, remembers each backend's last checks and
 * when its state last changed, and keeps the recent events. `GET
 * /api/events` streams a snapshot of it all as server-sent events.
 *
 * Policy only: it reads counters the balancer keeps anyway.
 *
 * @module
 */

import type { Clock } from "./clock.ts";
import type { ListenerStats } from "./metrics.ts";
import type { Pool } from "./pool.ts";
import { VERSION } from "./version.ts";

/** How a client ends when no backend served it (events.ts). */
const FAILED_ENDS = new Set(["connect-failed", "no-backend", "queue-timeout", "queue-full"]);

/** Samples kept: one a second, five minutes. */
const HISTORY = 300;
/** Checks kept per backend, for the strip. */
const CHECKS = 20;
/** Recent events kept. */
const EVENTS = 50;

/** One recent event, for the page. */
export interface DashboardEvent {
  readonly at: string;
  readonly kind: "backend" | "reload" | "refused" | "admin" | "discovery";
  readonly text: string;
}

/** What the dashboard reads of the running balancer. */
export interface DashboardSource {
  listeners(): readonly ListenerStats[];
  pools(): readonly Pool[];
  /** Each listener's address and engine, by listener name. */
  describe(name: string): { address?: string; engine: string; threads: number };
}

interface BackendTrack {
  seenConnections: number;
  seenFailures: number;
  seenBytesIn: number;
  seenBytesOut: number;
  state: string;
  since: number;
  checks: { ok: boolean; at: number }[];
  lastCheckAt: number | undefined;
  connections: number[];
  errors: number[];
  rates: { connections: number; errors: number; bytesIn: number; bytesOut: number };
}

interface ListenerTrack {
  seenAccepted: number;
  accepted: number[];
  rate: number;
}

/** The dashboard's state: history, checks, events; sampled on `clock`. */
export class Dashboard {
  readonly #source: DashboardSource;
  readonly #clock: Clock;
  readonly #backends = new Map<string, BackendTrack>();
  readonly #listeners = new Map<string, ListenerTrack>();
  readonly #events: DashboardEvent[] = [];
  // Clients each listener could not serve (no backend reached, or the queue), by listener.
  readonly #failed = new Map<string, number>();
  // Failed connects by backend and cause (ECONNREFUSED, TimedOut, …).
  readonly #causes = new Map<string, Map<string, number>>();
  #timer: number | undefined;
  #lastSample: number;
  /** Event streams open now (see {@linkcode eventStream}). */
  streams = 0;

  constructor(source: DashboardSource, clock: Clock) {
    this.#source = source;
    this.#clock = clock;
    this.#lastSample = clock.now();
  }

  /** Samples once a second until {@linkcode stop}. */
  start(): void {
    const tick = () => {
      this.sample();
      this.#timer = this.#clock.setTimer(tick, 1000, { unref: true });
    };
    this.#timer = this.#clock.setTimer(tick, 1000, { unref: true });
  }

  stop(): void {
    this.#clock.clearTimer(this.#timer);
  }

  /** Remembers an event for the page (newest first, the last fifty). */
  note(kind: DashboardEvent["kind"], text: string): void {
    this.#events.unshift({ at: new Date().toISOString(), kind, text });
    this.#events.length = Math.min(this.#events.length, EVENTS);
  }

  /** Counts a client that ended; those no backend served count as failed for its listener. */
  ended(listener: string, end: string): void {
    if (!FAILED_ENDS.has(end)) return;
    this.#failed.set(listener, (this.#failed.get(listener) ?? 0) + 1);
  }

  /** Counts a failed connect by its cause: the error's code, the part of `reason` before its colon. */
  connectError(backend: string, reason: string): void {
    const cause = /^([^:]+):/.exec(reason)?.[1] ?? reason.slice(0, 40);
    let causes = this.#causes.get(backend);
    if (causes === undefined) this.#causes.set(backend, causes = new Map());
    causes.set(cause, (causes.get(cause) ?? 0) + 1);
  }

  /** Takes one sample of every counter (exposed for tests; the timer calls it). */
  sample(): void {
    const now = this.#clock.now();
    const seconds = Math.max(0.001, (now - this.#lastSample) / 1000);
    this.#lastSample = now;
    const seen = new Set<string>();
    for (const pool of this.#source.pools()) {
      for (const backend of pool.backends) {
        const key = `${pool.name} ${backend.name}`;
        seen.add(key);
        let track = this.#backends.get(key);
        if (track === undefined) {
          track = {
            seenConnections: backend.connections + backend.active,
            seenFailures: backend.connectFailures,
            seenBytesIn: backend.bytesIn,
            seenBytesOut: backend.bytesOut,
            state: backend.state,
            since: now,
            checks: [],
            lastCheckAt: undefined,
            connections: [],
            errors: [],
            rates: { connections: 0, errors: 0, bytesIn: 0, bytesOut: 0 },
          };
          this.#backends.set(key, track);
        }
        // New connections: those that ended since, and those now open, less the open before.
        const total = backend.connections + backend.active;
        const started = Math.max(0, total - track.seenConnections);
        const failed = Math.max(0, backend.connectFailures - track.seenFailures);
        track.rates = {
          connections: started / seconds,
          errors: failed / seconds,
          bytesIn: Math.max(0, backend.bytesIn - track.seenBytesIn) / seconds,
          bytesOut: Math.max(0, backend.bytesOut - track.seenBytesOut) / seconds,
        };
        track.seenConnections = total;
        track.seenFailures = backend.connectFailures;
        track.seenBytesIn = backend.bytesIn;
        track.seenBytesOut = backend.bytesOut;
        push(track.connections, track.rates.connections);
        push(track.errors, track.rates.errors);
        if (backend.state !== track.state) {
          track.state = backend.state;
          track.since = now;
        }
        const check = backend.lastCheck;
        if (check !== undefined && check.at.getTime() !== track.lastCheckAt) {
          track.lastCheckAt = check.at.getTime();
          track.checks.push({ ok: check.ok, at: track.lastCheckAt });
          if (track.checks.length > CHECKS) track.checks.shift();
        }
      }
    }
    for (const key of this.#backends.keys()) if (!seen.has(key)) this.#backends.delete(key);
    // Causes are kept by address (a connect error names no pool): drop those of addresses gone.
    const addresses = new Set([...seen].map((key) => key.slice(key.indexOf(" ") + 1)));
    for (const address of this.#causes.keys()) {
      if (!addresses.has(address)) this.#causes.delete(address);
    }
    for (const listener of this.#source.listeners()) {
      const accepted = listener.durations.count + listener.activeConnections;
      let track = this.#listeners.get(listener.name);
      if (track === undefined) {
        track = { seenAccepted: accepted, accepted: [], rate: 0 };
        this.#listeners.set(listener.name, track);
      }
      track.rate = Math.max(0, accepted - track.seenAccepted) / seconds;
      track.seenAccepted = accepted;
      push(track.accepted, track.rate);
    }
  }

  /** Everything the page shows, as plain data. */
  snapshot(): unknown {
    const now = this.#clock.now();
    return {
      version: VERSION,
      time: new Date().toISOString(),
      listeners: this.#source.listeners().map((listener) => {
        const track = this.#listeners.get(listener.name);
        const where = this.#source.describe(listener.name);
        return {
          name: listener.name,
          pool: listener.pool.name,
          address: where.address ?? null,
          engine: where.engine,
          threads: where.threads,
          active: listener.activeConnections,
          accepted_per_s: round(track?.rate ?? 0),
          refused: Object.fromEntries(listener.rejected),
          failed: this.#failed.get(listener.name) ?? 0,
        };
      }),
      pools: this.#source.pools().map((pool) => ({
        name: pool.name,
        backends: pool.backends.map((backend) => {
          const track = this.#backends.get(`${pool.name} ${backend.name}`);
          return {
            address: backend.name,
            state: backend.state,
            for_s: Math.round((now - (track?.since ?? now)) / 1000),
            source: backend.source,
            weight: backend.configuredWeight,
            backup: backend.backup,
            active: backend.active,
            connections: backend.connections,
            connections_per_s: round(track?.rates.connections ?? 0),
            bytes_in_per_s: Math.round(track?.rates.bytesIn ?? 0),
            bytes_out_per_s: Math.round(track?.rates.bytesOut ?? 0),
            connect_ms: connectMs(backend.recentConnectTimes()),
            connect_failures: backend.connectFailures,
            errors_by_cause: Object.fromEntries(this.#causes.get(backend.name) ?? []),
            last_check: backend.lastCheck === undefined
              ? null
              : { ok: backend.lastCheck.ok, reason: backend.lastCheck.reason ?? null },
            checks: (track?.checks ?? []).map((c) => c.ok),
            history: {
              connections_per_s: (track?.connections ?? []).map(round),
              errors_per_s: (track?.errors ?? []).map(round),
            },
          };
        }),
      })),
      events: this.#events,
    };
  }
}

/**
 * Event streams open at once, at most: they last, and share the admin
 * port's connection cap with the requests an operator needs in an emergency.
 */
export const MAX_STREAMS = 16;

/** How often a stream sends a snapshot. */
const STREAM_EVERY_MS = 500;

/**
 * `GET /api/events`: a snapshot now and every half second, as server-sent
 * events (`event: snapshot`), until the client goes. The browser's
 * EventSource reconnects by itself (`retry:`), also across a restart.
 */
export function eventStream(
  dashboard: Dashboard,
  clock: Clock,
): ReadableStream<Uint8Array> | undefined {
  if (dashboard.streams >= MAX_STREAMS) return undefined;
  dashboard.streams++;
  const encoder = new TextEncoder();
  let timer: number | undefined;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      const send = () => {
        controller.enqueue(
          encoder.encode(`event: snapshot\ndata: ${JSON.stringify(dashboard.snapshot())}\n\n`),
        );
        timer = clock.setTimer(send, STREAM_EVERY_MS, { unref: true });
      };
      controller.enqueue(encoder.encode("retry: 2000\n\n"));
      send();
    },
    cancel() {
      clock.clearTimer(timer);
      dashboard.streams--;
    },
  });
}

function push(series: number[], value: number): void {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

const round = (value: number) => Math.round(value * 10) / 10;

function connectMs(times: number[]): { p50: number; p99: number } | null {
  if (times.length === 0) return null;
  return { p50: round(percentile(times, 0.5)), p99: round(percentile(times, 0.99)) };
}

// The value below which a share `p` of `values` falls (nearest rank).
function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!;
}
