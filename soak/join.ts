/**
 * The join of what the clients saw with what the backends said: each
 * backend prints one DONE line per stream it finished cleanly (pattern.ts),
 * and the soak matches them with its clients by seed once the run is over,
 * to find what a client alone cannot tell: a reply cut short on a stream its
 * backend finished (`lost`), and the verdict on a backend-first stream.
 *
 * @module
 */

import type { Outcome, StreamResult } from "./client.ts";
import { parseDone, type Verdict } from "./pattern.ts";

/** A part of the run: the load with its faults, or one of the rounds around it. */
export type Phase = "warm-up" | "load" | "final" | "drain";

/** One soak client's result, with what kind of client it was and when it ran. */
export interface ClientRecord extends StreamResult {
  kind: string;
  phase: Phase;
}

/**
 * How a connection ended once the backend's word is in: the client's
 * outcome, or `lost` (the backend finished the stream, the client did not get
 * it all), or `unconfirmed` (a backend-first stream whose backend was killed
 * before it could say whether the client's stream arrived whole).
 */
export type Finding = Outcome | "lost" | "unconfirmed";

/** A client record joined with its backend's DONE line. */
export interface JoinedRecord extends ClientRecord {
  finding: Finding;
  /** For `corrupt` and `lost`: why. */
  why?: string;
}

/** A line a backend printed on stdout, and which backend printed it. */
export interface BackendLine {
  backend: string;
  line: string;
}

/** A `kill -9` of a backend, at Unix ms. */
export interface Kill {
  backend: string;
  at: number;
}

/** Outcomes by which a client saw its stream cut short (not on its own initiative). */
const CUT: ReadonlySet<Finding> = new Set(["closed", "reset", "hung"]);

/**
 * Joins each client with the DONE line its backend printed for the same
 * seed. A backend prints one only for a stream it finished cleanly: its
 * answer handed to the kernel, the client's stream read to its end. So:
 *
 * - a DONE line saying `BAD`, or `OK` with another byte count, or a verdict
 *   this protocol does not know, or two DONE lines for one seed: `corrupt`;
 * - `OK` while the client saw a close, a reset or nothing until its
 *   deadline: `lost` (the bytes went missing on their way back; a client
 *   that reset on purpose, `reset-sent`, is not cut);
 * - a backend-first client that finished `ok` with no DONE line: `lost`,
 *   unless its backend was killed between the client's start and
 *   `killSlackMs` after its end (`unconfirmed`).
 *
 * A client already `corrupt` stays so, and a `hung` one is not blamed for
 * the `BAD` its own close at the deadline caused. Lines that are not DONE
 * lines at all are returned as `problems`.
 */
export function joinBackendLines(
  records: readonly ClientRecord[],
  lines: readonly BackendLine[],
  kills: readonly Kill[],
  killSlackMs = 1_000,
): { joined: JoinedRecord[]; problems: string[] } {
  const problems: string[] = [];
  const bySeed = new Map<number, (BackendLine & { verdict: Verdict | undefined })[]>();
  for (const line of lines) {
    const done = parseDone(line.line);
    if (done === undefined) {
      problems.push(`backend ${line.backend} printed ${JSON.stringify(line.line.slice(0, 80))}`);
      continue;
    }
    bySeed.set(done.seed, [...(bySeed.get(done.seed) ?? []), { ...line, ...done }]);
  }
  const joined = records.map((record): JoinedRecord => {
    const done = bySeed.get(record.seed) ?? [];
    const as = (finding: Finding, why?: string) => ({
      ...record,
      finding,
      ...(why ? { why } : {}),
    });
    const [first] = done;
    if (done.length > 1) {
      return as("corrupt", `one stream finished on ${done.map((d) => d.backend).join(" and ")}`);
    }
    if (record.outcome === "corrupt") return as("corrupt", record.detail);
    if (first === undefined) {
      if (record.backendFirst && record.outcome === "ok") {
        const killed = kills.some((k) =>
          k.backend === record.backend && k.at >= record.startedAt &&
          k.at <= record.endedAt + killSlackMs
        );
        return killed
          ? as("unconfirmed")
          : as("lost", `the client finished; backend ${record.backend} never saw its stream end`);
      }
      return as(record.outcome, record.detail);
    }
    const { verdict } = first;
    if (verdict === undefined) return as("corrupt", `backend said ${JSON.stringify(first.line)}`);
    if (!verdict.ok) {
      if (record.outcome === "hung") return as("hung");
      return as("corrupt", `backend ${first.backend} found byte ${verdict.at} of the stream wrong`);
    }
    if (verdict.count !== record.up) {
      return as("corrupt", `backend took ${verdict.count} bytes of ${record.up}`);
    }
    if (CUT.has(record.outcome)) {
      return as("lost", `${record.outcome} on a stream backend ${first.backend} finished`);
    }
    return as(record.outcome, record.detail);
  });
  return { joined, problems };
}
