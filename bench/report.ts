/**
 * The benchmark's figures and how they are reported: medians with their
 * spread, side by side per target, with the ratio to HAProxy measured in the
 * same run as the headline (for UDP, which HAProxy does not do, the ratio to
 * NGINX stream). Pure; tested in `report_test.ts`.
 *
 * @module
 */

import { ratio, summarize } from "./stats.ts";

/** Everything measured, per target. */
export const TARGETS = {
  direct: "direct",
  lb: "this LB, epoll engine",
  lbDeno: "this LB, deno engine",
  lbProxyV2: "this LB, sending PROXY v2",
  lbThreads: "this LB, --threads 2",
  lbWorkers: "this LB, --workers 2",
  haproxy: "HAProxy",
  nginx: "NGINX stream",
  floor: "Deno floor",
} as const;
/** A proxy (or none) under test. */
export type Target = keyof typeof TARGETS;

/** One figure the benchmark reports. */
export interface Figure {
  readonly label: string;
  readonly unit: string;
  /** Whether a smaller number is the better one. */
  readonly lowerIsBetter: boolean;
  readonly digits: number;
}

/** The figures, in the order the table shows them. */
export const FIGURES = {
  cpuUsPerRequest: {
    label: "proxy CPU per kept-alive request",
    unit: "µs",
    lowerIsBetter: true,
    digits: 1,
  },
  cpuUsPerConnection: {
    label: "proxy CPU per new connection",
    unit: "µs",
    lowerIsBetter: true,
    digits: 1,
  },
  keptAliveRequestsPerSecond: {
    label: "kept-alive requests per second",
    unit: "req/s",
    lowerIsBetter: false,
    digits: 0,
  },
  keptAliveP50Ms: { label: "kept-alive p50 latency", unit: "ms", lowerIsBetter: true, digits: 3 },
  keptAliveP99Ms: { label: "kept-alive p99 latency", unit: "ms", lowerIsBetter: true, digits: 3 },
  newConnectionsPerSecond: {
    label: "new connections per second",
    unit: "conn/s",
    lowerIsBetter: false,
    digits: 0,
  },
  throughputOneStreamGbps: {
    label: "one-stream throughput",
    unit: "Gbit/s",
    lowerIsBetter: false,
    digits: 2,
  },
  throughputFourStreamsGbps: {
    label: "four-stream throughput",
    unit: "Gbit/s",
    lowerIsBetter: false,
    digits: 2,
  },
  idleKiBPerConnection: {
    label: "memory per idle proxied connection",
    unit: "KiB",
    lowerIsBetter: true,
    digits: 1,
  },
  cpuUsPerDatagram: {
    label: "proxy CPU per UDP datagram and its reply",
    unit: "µs",
    lowerIsBetter: true,
    digits: 1,
  },
  udpDatagramsPerSecond: {
    label: "UDP datagrams answered per second",
    unit: "dgram/s",
    lowerIsBetter: false,
    digits: 0,
  },
} as const satisfies Record<string, Figure>;
/** The name of a figure. */
export type FigureKey = keyof typeof FIGURES;

/**
 * The UDP load's figures. HAProxy does not balance UDP (haproxy#62), so
 * these are compared with NGINX stream's UDP proxy and with direct.
 */
export const UDP_FIGURES: readonly FigureKey[] = ["cpuUsPerDatagram", "udpDatagramsPerSecond"];

/** Every run's value of every figure, per target. */
export type Measurements = Partial<Record<Target, Partial<Record<FigureKey, number[]>>>>;

/** Median of one target's runs of one figure, if it was measured. */
export function medianOf(
  measurements: Measurements,
  target: Target,
  figure: FigureKey,
): number | undefined {
  const values = measurements[target]?.[figure];
  return values && values.length > 0 ? summarize(values).median : undefined;
}

/** `target`'s median divided by `reference`'s, per figure measured for both. */
export function ratiosBetween(
  measurements: Measurements,
  target: Target,
  reference: Target,
): Partial<Record<FigureKey, number>> {
  const ratios: Partial<Record<FigureKey, number>> = {};
  for (const figure of Object.keys(FIGURES) as FigureKey[]) {
    const value = ratio(
      medianOf(measurements, target, figure),
      medianOf(measurements, reference, figure),
    );
    if (value !== undefined) ratios[figure] = value;
  }
  return ratios;
}

/** This LB's median divided by HAProxy's, per figure measured for both. */
export function ratiosToHaproxy(measurements: Measurements): Partial<Record<FigureKey, number>> {
  return ratiosBetween(measurements, "lb", "haproxy");
}

/** This LB's medians of the UDP figures divided by `reference`'s (NGINX stream, or direct). */
export function udpRatios(
  measurements: Measurements,
  reference: Target,
): Partial<Record<FigureKey, number>> {
  const all = ratiosBetween(measurements, "lb", reference);
  return Object.fromEntries(UDP_FIGURES.flatMap((key) => key in all ? [[key, all[key]]] : []));
}

function formatNumber(value: number, digits: number): string {
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** `median (min–max)`, or the median alone for a single run; `–` when not measured. */
export function formatCell(values: number[] | undefined, digits: number): string {
  if (!values || values.length === 0) return "–";
  const { median, min, max, runs } = summarize(values);
  if (runs === 1) return formatNumber(median, digits);
  return `${formatNumber(median, digits)} (${formatNumber(min, digits)}–${
    formatNumber(max, digits)
  })`;
}

/**
 * The results as a Markdown table: one row per figure, one column per
 * target, then this LB's ratio to each of `references` (HAProxy; and NGINX
 * stream when there are UDP figures, which HAProxy has none of).
 */
export function renderTable(
  measurements: Measurements,
  targets: readonly Target[],
  references: readonly Target[] = ["haproxy"],
): string {
  const ratios = references.map((reference) => ratiosBetween(measurements, "lb", reference));
  const header = [
    "figure",
    ...targets.map((t) => TARGETS[t]),
    ...references.map((reference) => `this LB ÷ ${TARGETS[reference]}`),
  ];
  const rows = [header, header.map(() => "---")];
  for (const [key, figure] of Object.entries(FIGURES) as [FigureKey, Figure][]) {
    const cells = targets.map((t) => formatCell(measurements[t]?.[key], figure.digits));
    if (cells.every((cell) => cell === "–")) continue;
    const verdicts = ratios.map((byFigure) => {
      const r = byFigure[key];
      return r === undefined
        ? "–"
        : `${r.toFixed(2)}× (${figure.lowerIsBetter ? "lower" : "higher"} is better)`;
    });
    rows.push([`${figure.label}, ${figure.unit}`, ...cells, ...verdicts]);
  }
  return rows.map((row) => `| ${row.join(" | ")} |`).join("\n");
}
