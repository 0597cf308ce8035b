/**
 * Reading what the load generators print: wrk's text report, iperf3's JSON
 * and our UDP generator's JSON (udp_flood.ts). Pure functions, tested in
 * `parse_test.ts` against real output.
 *
 * @module
 */

import type { FloodReport } from "./udp_flood.ts";

/** What one wrk run measured. */
export interface WrkResult {
  /** Requests completed in the run. */
  requests: number;
  /** The run's length as wrk measured it, in seconds. */
  seconds: number;
  /** wrk's own Requests/sec line. */
  requestsPerSecond: number;
  /** Median latency, milliseconds. */
  p50Ms: number;
  /** 99th percentile latency, milliseconds. */
  p99Ms: number;
  /** Connect, read, write and timeout errors together (0 when wrk reports none). */
  socketErrors: number;
  /** Responses that were not 2xx or 3xx. */
  badResponses: number;
}

function durationMs(text: string): number {
  const match = /^([0-9.]+)(us|ms|s|m)$/.exec(text);
  if (!match) throw new Error(`wrk: cannot read duration ${JSON.stringify(text)}`);
  const value = Number(match[1]);
  // Divide rather than multiply by 0.001, so 823us is exactly 0.823 ms.
  switch (match[2]) {
    case "us":
      return value / 1000;
    case "ms":
      return value;
    case "s":
      return value * 1000;
    default:
      return value * 60_000;
  }
}

function durationSeconds(text: string): number {
  return durationMs(text) / 1e3;
}

/** Parses the report of `wrk --latency …`. @throws {Error} naming what is missing. */
export function parseWrk(output: string): WrkResult {
  const need = (pattern: RegExp, what: string): RegExpExecArray => {
    const match = pattern.exec(output);
    if (!match) throw new Error(`wrk: no ${what} in its output:\n${output}`);
    return match;
  };
  const total = need(/^\s*(\d+) requests in ([0-9.]+(?:us|ms|s|m)),/m, "request count");
  const rate = need(/^Requests\/sec:\s+([0-9.]+)/m, "Requests/sec line");
  const p50 = need(/^\s*50%\s+([0-9.]+(?:us|ms|s|m))/m, "50% latency (run wrk with --latency)");
  const p99 = need(/^\s*99%\s+([0-9.]+(?:us|ms|s|m))/m, "99% latency (run wrk with --latency)");
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(
    output,
  );
  const bad = /Non-2xx or 3xx responses: (\d+)/.exec(output);
  return {
    requests: Number(total[1]),
    seconds: durationSeconds(total[2]!),
    requestsPerSecond: Number(rate[1]),
    p50Ms: durationMs(p50[1]!),
    p99Ms: durationMs(p99[1]!),
    socketErrors: errors ? errors.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0,
    badResponses: bad ? Number(bad[1]) : 0,
  };
}

/** Parses `iperf3 -J` output; returns the received throughput in Gbit/s. */
export function parseIperf3(json: string): number {
  let report: { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  try {
    report = JSON.parse(json);
  } catch {
    throw new Error(`iperf3: output is not JSON: ${json.slice(0, 200)}`);
  }
  if (report.error) throw new Error(`iperf3: ${report.error}`);
  const bits = report.end?.sum_received?.bits_per_second;
  if (typeof bits !== "number") throw new Error("iperf3: no end.sum_received.bits_per_second");
  return bits / 1e9;
}

/** Parses the JSON line `udp_flood.ts` prints. @throws {Error} naming what is missing. */
export function parseUdpFlood(json: string): FloodReport {
  let report: Record<string, unknown>;
  try {
    report = JSON.parse(json.trim().split("\n").at(-1) ?? "");
  } catch {
    throw new Error(`udp_flood: output is not JSON: ${json.slice(0, 200)}`);
  }
  const counts = [
    "sent",
    "received",
    "drained",
    "mismatched",
    "lost",
    "late",
    "seconds",
  ] as const;
  for (const key of counts) {
    if (typeof report[key] !== "number") {
      throw new Error(`udp_flood: no number ${key} in ${JSON.stringify(report)}`);
    }
  }
  const servers = report.servers;
  if (typeof servers !== "object" || servers === null) {
    throw new Error(`udp_flood: no servers in ${JSON.stringify(report)}`);
  }
  return report as unknown as FloodReport;
}
