/**
 * Prometheus text exposition: a histogram type, and rendering of samples.
 * The balancer keeps plain counters on its own objects; nothing here runs
 * per connection except {@linkcode Histogram.observe}, and the text is only
 * built when `/metrics` is asked for.
 *
 * @module
 */

import type { RejectReason } from "./events.ts";

/**
 * Why a UDP flow was dropped. Flows that were open: `table-full` (the least
 * recently used, for room), `idle`. A new client's datagram refused:
 * `no-backend` (none up), `full` (every usable backend at its
 * `maxconn_per_backend`), `socket-error` (no socket for it), `draining`.
 */
export const FLOW_DROPS = [
  "table-full",
  "idle",
  "no-backend",
  "full",
  "socket-error",
  "draining",
] as const;
/** One of {@linkcode FLOW_DROPS}. */
export type FlowDrop = typeof FLOW_DROPS[number];

/** A UDP listener's counts: plain numbers, so threads can send them as they are. */
export interface UdpCounts {
  /** Datagrams and bytes from clients, those then dropped included. */
  datagramsIn: number;
  bytesIn: number;
  /** Datagrams and bytes from backends (sent back to clients). */
  datagramsOut: number;
  bytesOut: number;
  /**
   * Datagrams the kernel would not take (its buffer full): dropped, as UDP
   * may. On the deno engine, whose sends complete later, none are seen.
   */
  sendErrors: number;
  /** Flows dropped, by cause. */
  dropped: Record<FlowDrop, number>;
  /** Datagrams and bytes to (`In`) and from (`Out`) each backend, by `POOL BACKEND`. */
  backends: Record<string, UdpBackendCounts>;
}

/** What a UDP listener sent one backend, and had back from it. */
export interface UdpBackendCounts {
  pool: string;
  backend: string;
  datagramsIn: number;
  datagramsOut: number;
  bytesIn: number;
  bytesOut: number;
}

/** Counts of nothing yet. */
export function emptyUdpCounts(): UdpCounts {
  return {
    datagramsIn: 0,
    bytesIn: 0,
    datagramsOut: 0,
    bytesOut: 0,
    sendErrors: 0,
    dropped: {
      "table-full": 0,
      idle: 0,
      "no-backend": 0,
      full: 0,
      "socket-error": 0,
      draining: 0,
    },
    backends: {},
  };
}

/** Adds `more` to `into` (a thread's batch to the sum, or `-1` × what was reported). */
export function addUdpCounts(into: UdpCounts, more: UdpCounts, sign: 1 | -1 = 1): void {
  into.datagramsIn += sign * more.datagramsIn;
  into.bytesIn += sign * more.bytesIn;
  into.datagramsOut += sign * more.datagramsOut;
  into.bytesOut += sign * more.bytesOut;
  into.sendErrors += sign * more.sendErrors;
  for (const cause of FLOW_DROPS) into.dropped[cause] += sign * more.dropped[cause];
  for (const [key, entry] of Object.entries(more.backends)) {
    const mine = into.backends[key] ??= {
      ...entry,
      datagramsIn: 0,
      datagramsOut: 0,
      bytesIn: 0,
      bytesOut: 0,
    };
    mine.datagramsIn += sign * entry.datagramsIn;
    mine.datagramsOut += sign * entry.datagramsOut;
    mine.bytesIn += sign * entry.bytesIn;
    mine.bytesOut += sign * entry.bytesOut;
  }
}

/** What the admin API, the metrics and the dashboard see of a listener, wherever it runs. */
export interface ListenerStats {
  readonly name: string;
  readonly pool: { readonly name: string };
  readonly activeConnections: number;
  /** How long its connections lasted, in seconds. */
  readonly durations: Histogram;
  /** Clients it closed before dialling any backend, by reason (edge.ts). */
  readonly rejected: ReadonlyMap<RejectReason, number>;
  /** A UDP listener's datagram and flow counts. */
  readonly udp?: UdpCounts;
}

/** Upper bounds, in seconds, for connection durations. */
export const DURATION_BUCKETS = [0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600];
/** Upper bounds, in seconds, for health check durations. */
export const CHECK_BUCKETS = [0.001, 0.005, 0.025, 0.1, 0.5, 1, 5];

/** A cumulative histogram, Prometheus style. */
export class Histogram {
  readonly buckets: readonly number[];
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(buckets: readonly number[]) {
    this.buckets = buckets;
    this.counts = new Array(buckets.length).fill(0);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    // A loop, not findIndex: no closure per observation (one per connection).
    const buckets = this.buckets;
    for (let i = 0; i < buckets.length; i++) {
      if (value <= buckets[i]!) {
        this.counts[i]!++;
        return;
      }
    }
  }
}

/** Labels of one series. */
export type Labels = Record<string, string>;

/** One metric family: its samples, all of one type. */
export type Family =
  | { name: string; help: string; type: "counter" | "gauge"; samples: [Labels, number][] }
  | { name: string; help: string; type: "histogram"; samples: [Labels, Histogram][] };

function escape(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function series(name: string, labels: Labels, value: number): string {
  const text = Object.entries(labels).map(([k, v]) => `${k}="${escape(v)}"`).join(",");
  const number = Number.isFinite(value) ? String(value) : value > 0 ? "+Inf" : "-Inf";
  return text ? `${name}{${text}} ${number}` : `${name} ${number}`;
}

/** Renders metric families in the Prometheus text format (version 0.0.4). */
export function renderMetrics(families: readonly Family[]): string {
  const lines: string[] = [];
  for (const family of families) {
    lines.push(`# HELP ${family.name} ${family.help}`);
    lines.push(`# TYPE ${family.name} ${family.type}`);
    if (family.type === "histogram") {
      for (const [labels, histogram] of family.samples) {
        let cumulative = 0;
        histogram.buckets.forEach((bound, i) => {
          cumulative += histogram.counts[i]!;
          lines.push(series(`${family.name}_bucket`, { ...labels, le: String(bound) }, cumulative));
        });
        lines.push(series(`${family.name}_bucket`, { ...labels, le: "+Inf" }, histogram.count));
        lines.push(series(`${family.name}_sum`, labels, histogram.sum));
        lines.push(series(`${family.name}_count`, labels, histogram.count));
      }
    } else {
      for (const [labels, value] of family.samples) lines.push(series(family.name, labels, value));
    }
  }
  return lines.join("\n") + "\n";
}
