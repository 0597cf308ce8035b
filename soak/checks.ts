/**
 * What the soak checks, as pure functions of what it recorded: the clients'
 * results joined with the backends' DONE lines (join.ts), the fault windows,
 * the samples and the balancer's log. Each returns one {@linkcode Check};
 * none touches a socket, so each is tested on made-up records
 * (checks_test.ts), failing ones included.
 *
 * @module
 */

import type { StreamResult } from "./client.ts";
import type { Finding, JoinedRecord } from "./join.ts";
import type { Check, Sample } from "./report.ts";

/** A span of Unix ms; `to` is Infinity while it is still open. */
export interface Window {
  from: number;
  to: number;
}

function describe(record: JoinedRecord): string {
  return `${record.phase === "load" ? "" : `${record.phase} `}${record.kind} client ` +
    `(seed ${record.seed}, started ${new Date(record.startedAt).toISOString()}, ` +
    `backend ${record.backend ?? "?"})`;
}

const EXAMPLES = 5;

function examplesOf(records: readonly JoinedRecord[], say: (r: JoinedRecord) => string): string[] {
  return records.slice(0, EXAMPLES).map((r) => `${describe(r)}: ${say(r)}`);
}

/** Every stream checked at both ends: nothing `corrupt`, no stray backend line, something `ok`. */
export function checkBytesExact(joined: readonly JoinedRecord[], problems: string[]): Check {
  const corrupt = joined.filter((r) => r.finding === "corrupt");
  const completed = joined.filter((r) => r.finding === "ok").length;
  return {
    name: "bytes exact both ways",
    ok: corrupt.length === 0 && problems.length === 0 && completed > 0,
    detail: `${completed} streams completed, every byte checked at both ends; ` +
      `${corrupt.length} differed` +
      (problems.length > 0 ? `; ${problems.length} backend lines not understood` : ""),
    examples: [...examplesOf(corrupt, (r) => `corrupt, ${r.why}`), ...problems.slice(0, EXAMPLES)],
  };
}

/** No stream its backend finished reached its client cut short. */
export function checkNoneLost(joined: readonly JoinedRecord[]): Check {
  const lost = joined.filter((r) => r.finding === "lost");
  const confirmed = joined.filter((r) => r.backendFirst && r.finding === "ok").length;
  const unconfirmed = joined.filter((r) => r.finding === "unconfirmed").length;
  return {
    name: "no stream the backend finished was cut on its way back",
    ok: lost.length === 0,
    detail: `${lost.length} lost; ${confirmed} backend-first streams confirmed by their backend` +
      `, ${unconfirmed} unconfirmed (their backend was killed before it could say)`,
    examples: examplesOf(lost, (r) => `lost: ${r.why}`),
  };
}

/** Every client ended before its deadline. */
export function checkNoneHung(joined: readonly JoinedRecord[]): Check {
  const hung = joined.filter((r) => r.finding === "hung");
  return {
    name: "no client hung",
    ok: hung.length === 0,
    detail: `${joined.length} connections; every one cut short saw a reset or a close; ` +
      `${hung.length} hung`,
    examples: examplesOf(hung, () => "hung until its deadline"),
  };
}

/**
 * Every kind of client in the load was served as asked at least once: `ok`,
 * or for a kind that resets on purpose, `reset-sent`.
 */
export function checkEveryKindServed(
  joined: readonly JoinedRecord[],
  kinds: readonly { kind: string; served?: Finding }[],
): Check {
  const served = ({ kind, served = "ok" }: { kind: string; served?: Finding }) =>
    joined.some((r) => r.phase === "load" && r.kind === kind && r.finding === served);
  const unserved = kinds.filter((kind) => !served(kind));
  const say = (k: { kind: string; served?: Finding }) => `${k.kind} (${k.served ?? "ok"})`;
  return {
    name: "every kind of client served",
    ok: unserved.length === 0,
    detail: unserved.length === 0
      ? `at least one of each: ${kinds.map(say).join(", ")}`
      : `none served: ${unserved.map(say).join(", ")}`,
  };
}

/**
 * No connect refused, but while the balancer is out of descriptors: from a
 * burst's start to `graceMs` after its clients let go.
 */
export function checkNoneRefused(
  joined: readonly JoinedRecord[],
  bursts: readonly Window[],
  graceMs: number,
): Check {
  const refused = joined.filter((r) => r.finding === "refused");
  const outside = refused.filter((r) =>
    !bursts.some((b) => r.startedAt >= b.from && r.startedAt <= b.to + graceMs)
  );
  return {
    name: "no connect refused outside a descriptor burst",
    ok: outside.length === 0,
    detail:
      `${outside.length} refused outside; ${refused.length - outside.length} during a burst ` +
      `or within ${graceMs / 1000} s after it`,
    examples: examplesOf(outside, (r) => `refused: ${r.detail ?? "?"}`),
  };
}

/** Once the faults were over, every client of the final round was `ok`. */
export function checkFinalRound(joined: readonly JoinedRecord[], expected: number): Check {
  const final = joined.filter((r) => r.phase === "final");
  const bad = final.filter((r) => r.finding !== "ok");
  return {
    name: "served again once the faults stopped",
    ok: expected > 0 && final.length === expected && bad.length === 0,
    detail: `${final.length - bad.length} of ${expected} clients ok in the final round` +
      (bad.length > 0 ? ` (${bad.map((r) => r.finding).join(", ")})` : ""),
    examples: examplesOf(bad, (r) => `${r.finding}${r.why ? `, ${r.why}` : ""}`),
  };
}

/**
 * The misroute rule. The balancer picked the backend after the client
 * started connecting and before the backend accepted: when both fall inside
 * one window in which the backend was drained or out of the pool (1 ms of
 * slack for clocks read in different processes), so did the pick. A client
 * no backend answered was picked for nothing.
 */
export function misrouted(record: StreamResult, windows: readonly Window[]): boolean {
  const { startedAt, acceptedAt } = record;
  if (acceptedAt === undefined) return false;
  return windows.some((w) => startedAt > w.from + 1 && acceptedAt < w.to - 1);
}

/** No connection reached a backend in a window in which it was drained or removed. */
export function checkNoneMisrouted(
  joined: readonly JoinedRecord[],
  forbidden: ReadonlyMap<string, readonly Window[]>,
): Check {
  const wrong = joined.filter((r) =>
    r.backend !== undefined && misrouted(r, forbidden.get(r.backend) ?? [])
  );
  return {
    name: "nothing new reached a drained or removed backend",
    ok: wrong.length === 0,
    detail: `${[...forbidden.values()].flat().length} windows; ${wrong.length} connections in them`,
    examples: examplesOf(wrong, () => "reached its backend while it was drained or removed"),
  };
}

/** The median of `values` (the mean of the middle two for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** The samples from `from` up to `to` (seconds), but none inside the `excluded` spans. */
function samplesBetween(
  samples: readonly Sample[],
  from: number,
  to: number,
  excluded: readonly Window[],
): Sample[] {
  return samples.filter((s) =>
    s.t >= from && s.t < to && !excluded.some((w) => s.t >= w.from && s.t <= w.to)
  );
}

/**
 * Open descriptors did not grow over the second half: the median over the
 * last quarter of the run is at most max(4, 5%) above the median over the
 * quarter before, leaving out the `excluded` spans (seconds; the descriptor
 * bursts). Medians, not a slope: under load the count swings by tens from
 * one sample to the next, while a leak moves every sample.
 */
export function checkDescriptorsFlat(
  samples: readonly Sample[],
  runSeconds: number,
  excluded: readonly Window[],
): Check {
  const between = (from: number, to: number) =>
    samplesBetween(samples, from, to, excluded).map((s) => s.fds);
  const early = between(runSeconds * 0.5, runSeconds * 0.75);
  const late = between(runSeconds * 0.75, runSeconds + 1);
  const name = "descriptors flat over the second half";
  if (early.length < 3 || late.length < 3) {
    return {
      name,
      ok: false,
      detail: `${early.length} and ${late.length} samples in the last two quarters`,
    };
  }
  const before = median(early);
  const after = median(late);
  const bound = Math.max(4, Math.ceil(before * 0.05));
  const span = (from: number, to: number) => `${Math.round(from)}–${Math.round(to)} s`;
  return {
    name,
    ok: after - before <= bound,
    detail: `median ${before} open over ${span(runSeconds * 0.5, runSeconds * 0.75)} ` +
      `(${early.length} samples), ${after} over ${span(runSeconds * 0.75, runSeconds)} ` +
      `(${late.length}); bound: at most max(4, 5%) = ${bound} more, ` +
      `leaving out the descriptor bursts`,
  };
}

/** The balancer holds, at rest after the load, at most `slack` more descriptors than before it. */
export function checkDescriptorsBack(before: number, after: number, slack: number): Check {
  return {
    name: "descriptors back where they started",
    ok: after <= before + slack,
    detail: `${before} at rest before the load, ${after} at rest after it (slack ${slack}: ` +
      `one health check in flight per backend)`,
  };
}

/**
 * Resident memory did not grow in the run's second half. A collected heap's
 * RSS is a sawtooth (it grows in steps and comes back when the collector
 * gives pages back), so a line fitted through it says more about where the
 * teeth fall than about a leak. What a leak moves is the high-water mark:
 * the highest RSS over the last quarter may be at most `boundPerMinute` (a
 * share, per minute) above the highest over the second quarter, for the half
 * a run between them. The `excluded` spans (seconds; the descriptor bursts,
 * which hold thousands of clients for a moment) are left out of both.
 */
export function checkMemoryFlat(
  samples: readonly Sample[],
  runSeconds: number,
  boundPerMinute: number,
  shortRun: boolean,
  excluded: readonly Window[] = [],
): Check {
  const between = (from: number, to: number) =>
    samplesBetween(samples, from, to, excluded).map((s) => s.rssKiB);
  const early = between(runSeconds * 0.25, runSeconds * 0.5);
  const late = between(runSeconds * 0.75, runSeconds + 1);
  const name = "memory flat in the second half";
  if (early.length < 3 || late.length < 3) {
    return {
      name,
      ok: false,
      detail: `${early.length} and ${late.length} samples in the second and last quarters`,
    };
  }
  const before = Math.max(...early);
  const after = Math.max(...late);
  if (!(before > 0)) return { name, ok: false, detail: "no RSS read in the second quarter" };
  const allowed = boundPerMinute * (runSeconds / 2) / 60;
  const span = (from: number, to: number) => `${Math.round(from)}–${Math.round(to)} s`;
  return {
    name,
    ok: after <= before * (1 + allowed),
    detail: `highest RSS ${mib(before)} MiB over ${span(runSeconds * 0.25, runSeconds * 0.5)}, ` +
      `${mib(after)} MiB over ${span(runSeconds * 0.75, runSeconds)} ` +
      `(${after > before ? "+" : ""}${percent((after - before) / before)}); bound: ` +
      `${percent(boundPerMinute)} a minute${shortRun ? " for a short run" : ""}, ` +
      `${percent(allowed)} over the half a run between; descriptor bursts left out`,
  };
}

function percent(share: number): string {
  return `${(share * 100).toFixed(1)}%`;
}

function mib(kib: number | undefined): number {
  return Math.round((kib ?? 0) / 1024);
}

/** The Unix ms of a balancer diagnostic (`2026-11-27T20:53:37.812Z load_balancer: …`). */
export function logTime(line: string): number | undefined {
  const time = Date.parse(/^(\S+Z) /.exec(line)?.[1] ?? "");
  return Number.isNaN(time) ? undefined : time;
}

/**
 * Each descriptor burst ran the balancer out of descriptors and it got over
 * it: within the burst (or `graceMs` after) it logged an `EMFILE` accept
 * failure, after the last of them `accepting again`, and clients started
 * after that were served `ok`.
 */
export function checkBurstsBit(
  log: readonly string[],
  bursts: readonly Window[],
  joined: readonly JoinedRecord[],
  graceMs: number,
): Check {
  const timed = log.map((line) => ({ line, at: logTime(line) ?? NaN }));
  const findings = bursts.map((burst) => {
    const failures = timed.filter(({ line, at }) =>
      at >= burst.from && at <= burst.to + graceMs && /accept failed: .*EMFILE/.test(line)
    );
    const last = failures.at(-1);
    if (last === undefined) return { ok: false, say: "no EMFILE accept failure logged" };
    const recovered = timed.find(({ line, at }) => at >= last.at && /accepting again/.test(line));
    const since = (at: number) => `${((at - burst.from) / 1000).toFixed(1)} s in`;
    const failed = `EMFILE ${since(failures[0]!.at)} (${failures.length}×)`;
    if (recovered === undefined) return { ok: false, say: `${failed}, never accepting again` };
    const served = joined.filter((r) => r.startedAt >= recovered.at && r.finding === "ok").length;
    return {
      ok: served > 0,
      say: `${failed}, accepting again ${since(recovered.at)}, ${served} clients ok after`,
    };
  });
  return {
    name: "each descriptor burst ran the balancer out, and it recovered",
    ok: bursts.length > 0 && findings.every((f) => f.ok),
    detail: bursts.length === 0 ? "no burst ran" : findings.map((f) => f.say).join("; "),
  };
}

/**
 * SIGTERM drained: the clients held open across it were all `ok`, the
 * balancer said it was draining them, cut none, and exited 0.
 */
export function checkDrained(
  joined: readonly JoinedRecord[],
  expected: number,
  log: readonly string[],
  exit: { code: number } | undefined,
): Check {
  const held = joined.filter((r) => r.phase === "drain");
  const ok = held.filter((r) => r.finding === "ok").length;
  const draining = Number(
    /SIGTERM: no longer accepting; draining (\d+) /.exec(log.join("\n"))?.[1],
  );
  const cut = /stopped; (\d+) connection\(s\) cut/.exec(log.join("\n"))?.[1];
  return {
    name: "SIGTERM drained and exited 0",
    ok: held.length === expected && ok === expected && draining >= expected && cut === "0" &&
      exit?.code === 0,
    detail: `${ok} of ${expected} connections held across SIGTERM finished ok; ` +
      `the balancer drained ${Number.isNaN(draining) ? "?" : draining}, cut ${cut ?? "?"}, ` +
      (exit === undefined ? "no exit seen after a SIGTERM" : `exit code ${exit.code}`),
    examples: examplesOf(held.filter((r) => r.finding !== "ok"), (r) => r.finding),
  };
}

/**
 * Every reload was applied; one refused for want of a descriptor (the
 * balancer cannot read the file while it is out of them) is allowed, as the
 * soak sends it again.
 */
export function checkReloads(log: readonly string[]): Check {
  const applied = log.filter((l) => /reloaded \(SIGHUP\)/.test(l)).length;
  const failed = log.filter((l) => /reload .*failed/.test(l));
  const bad = failed.filter((l) => !/Too many open files/.test(l));
  return {
    name: "reloads applied",
    ok: applied > 0 && bad.length === 0,
    detail: `${applied} applied; ${failed.length - bad.length} refused while out of ` +
      `descriptors, the old config kept (then sent again)` +
      (bad.length > 0 ? `; refused otherwise: ${bad[0]}` : ""),
  };
}
