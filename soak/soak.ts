/**
 * One soak run: sets up the balancer and its backends, warms up, runs the
 * load and the faults, a final round once the faults are over, holds
 * connections open across SIGTERM, takes everything down, and judges.
 *
 * Whatever fails on the way (a balancer that crashes, a measurement that
 * gets no answer, an interruption) becomes a failed check in the report: a
 * run always ends with a report, and with nothing it started left running.
 *
 * @module
 */

import { realClock, sleep } from "../clock.ts";
import { describe } from "../errors.ts";
import { seededRandom, until } from "../test_util.ts";
import {
  checkBurstsBit,
  checkBytesExact,
  checkDescriptorsBack,
  checkDescriptorsFlat,
  checkDrained,
  checkEveryKindServed,
  checkFinalRound,
  checkMemoryFlat,
  checkNoneHung,
  checkNoneLost,
  checkNoneMisrouted,
  checkNoneRefused,
  checkReloads,
} from "./checks.ts";
import { type ClientRecord, joinBackendLines, type Phase } from "./join.ts";
import { runClient } from "./client.ts";
import { type Cluster, DRAIN_TIMEOUT_MS, processUsage, startCluster } from "./cluster.ts";
import { BURST_GRACE_MS, Faults } from "./faults.ts";
import type { SoakOptions } from "./flags.ts";
import {
  type ClientSpec,
  finalRound,
  heldAcrossSigterm,
  type LoadKind,
  loadKinds,
  REFUSED_PAUSE_MS,
  shortClients,
} from "./load.ts";
import type { Check, SoakReport } from "./report.ts";

// The balancer runs under this descriptor limit, so that a burst of clients
// runs it out of descriptors; the steady load uses about a fifth of it.
const MAX_OPEN_FILES = 1024;
// Descriptors the balancer may hold at rest after the load beyond those at
// rest before it. Our own admin calls hold none between calls (each closes
// its connection), and the count is the fewest over a second; what is left
// is the health checks: one connection per backend (4) may be in flight.
const FD_SLACK = 4;
// The bound on growth of memory over the second half of the run, per minute.
// A run of a minute or two is mostly warm-up (the heap grows until the
// collector settles on a size): its bound catches only a gross leak; the
// 10-minute runs in docs/soak/ judge flatness.
const MEMORY_BOUND = 0.01;
const MEMORY_BOUND_SHORT = 1;
// No fault starts in the load's last seconds: it ends calm.
const CALM_END_MS = 8_000;
const HELD_ACROSS_SIGTERM = 5;

/** Runs one soak; never throws: what went wrong is a failed check in the report. */
export async function runSoak(options: SoakOptions, signal: AbortSignal): Promise<SoakReport> {
  const report: SoakReport = {
    engine: options.engine,
    seed: options.seed,
    minutes: options.minutes,
    startedAt: new Date().toISOString(),
    outcomes: {},
    accessEnds: {},
    examples: [],
    faults: [],
    checks: [],
    samples: [],
    balancerLog: [],
  };
  let run: SoakRun | undefined;
  try {
    run = new SoakRun(options, await Deno.makeTempDir({ prefix: "lb-soak-" }), signal, report);
    await run.run();
  } catch (error) {
    report.checks.push({
      name: signal.aborted ? "ran to its end" : "the soak itself ran",
      ok: false,
      detail: signal.aborted ? describe(signal.reason) : `stopped: ${describe(error)}`,
    });
  } finally {
    await run?.close();
  }
  run?.collect();
  if (run?.judgeable && !signal.aborted) run.judge();
  report.examples = report.checks.filter((c) => !c.ok).flatMap((c) => c.examples ?? [])
    .slice(0, 20);
  return report;
}

/** The state of one run, phase by phase. */
class SoakRun {
  readonly #options: SoakOptions;
  readonly #dir: string;
  readonly #signal: AbortSignal;
  readonly #report: SoakReport;
  readonly #runMs: number;
  readonly #shortRun: boolean;
  readonly #records: ClientRecord[] = [];
  #nextSeed: number;
  #cluster: Cluster | undefined;
  #faults: Faults | undefined;
  #finalRoundSize = 0;
  #faultErrors: string[] = [];
  #loadStart = 0;
  #loadEnd = 0;
  #baselineFds: number | undefined;
  #endFds: number | undefined;
  #told = false;
  #exitedEarly = false;
  #exit: { code: number } | undefined;
  #setUp = false;

  constructor(options: SoakOptions, dir: string, signal: AbortSignal, report: SoakReport) {
    this.#options = options;
    this.#dir = dir;
    this.#signal = signal;
    this.#report = report;
    this.#runMs = options.minutes * 60_000;
    this.#shortRun = options.quick || options.minutes < 5;
    this.#nextSeed = options.seed;
  }

  /** Whether there is anything to judge: the balancer and its backends were set up. */
  get judgeable(): boolean {
    return this.#setUp;
  }

  get #balancerGone(): boolean {
    return this.#exitedEarly;
  }

  async run(): Promise<void> {
    await this.#step("set up the balancer and its backends", () => this.#start());
    if (!this.#setUp) return;
    const random = seededRandom(this.#options.seed ^ 0x10ad);
    await this.#step("warm up", () => this.#round("warm-up", shortClients(20, random)));
    this.#baselineFds = await this.#step(
      "count descriptors at rest before the load",
      () => this.#quietDescriptors(),
    );
    await this.#step("run the load and the faults", () => this.#load(random));
    await this.#step("run the final round", async () => {
      for (const b of this.#cluster!.backends) if (!b.running) await b.start();
      const clients = finalRound(random);
      this.#finalRoundSize = clients.length;
      await this.#round("final", clients);
    });
    this.#endFds = await this.#step(
      "count descriptors at rest after the load",
      () => this.#quietDescriptors(),
    );
    await this.#step("hold connections across SIGTERM", () => this.#holdAcrossSigterm());
  }

  // Runs one phase; a failure becomes a failed check and the run goes on,
  // but an interruption ends it.
  async #step<T>(name: string, work: () => Promise<T>): Promise<T | undefined> {
    this.#signal.throwIfAborted();
    try {
      return await work();
    } catch (error) {
      this.#signal.throwIfAborted();
      this.#report.checks.push({ name, ok: false, detail: `failed: ${describe(error)}` });
      return undefined;
    }
  }

  #sleep(ms: number): Promise<void> {
    return sleep(realClock, ms, this.#signal);
  }

  // A bounded wait on `check`, asked every 100 ms; given up at once when the
  // balancer is gone.
  #waitFor(check: () => Promise<boolean>, what: string, timeoutMs: number): Promise<void> {
    return until(
      async () => {
        this.#signal.throwIfAborted();
        if (this.#balancerGone) throw new Error(`the balancer is gone, waiting for ${what}`);
        return await check();
      },
      what,
      Math.ceil(timeoutMs / 100),
      100,
    );
  }

  async #start(): Promise<void> {
    const { seed, engine } = this.#options;
    const cluster = await startCluster({
      dir: this.#dir,
      engine,
      token: `soak-token-${seed}`,
      maxOpenFiles: MAX_OPEN_FILES,
    });
    this.#cluster = cluster;
    cluster.balancer.status.then(() => this.#exitedEarly ||= !this.#told);
    await this.#waitFor(
      async () => (await cluster.admin.metric("lb_connections_active")) !== undefined,
      "the admin API to answer within 10 s",
      10_000,
    );
    this.#faults = new Faults(cluster, {
      seed,
      signal: this.#signal,
      balancerGone: () => this.#balancerGone,
    });
    this.#setUp = true;
    console.log(
      `soak: ${engine} engine, ${this.#options.minutes} min, seed ${seed}; balancer pid ` +
        `${cluster.balancer.pid} on 127.0.0.1:${cluster.listenPort}, ` +
        `limit ${MAX_OPEN_FILES} descriptors`,
    );
  }

  // One client, recorded.
  async #client(phase: Phase, spec: ClientSpec): Promise<ClientRecord> {
    const seed = this.#nextSeed = (this.#nextSeed + 1) >>> 0;
    const { kind, up, down, backendFirst, plan } = spec;
    const result = await runClient(this.#cluster!.listenPort, { seed, up, down, backendFirst }, {
      ...plan,
      signal: this.#signal,
    });
    const record = { ...result, kind, phase };
    this.#records.push(record);
    return record;
  }

  async #round(phase: Phase, specs: ClientSpec[]): Promise<void> {
    await Promise.all(specs.map((spec) => this.#client(phase, spec)));
  }

  async #loop(load: LoadKind, random: () => number): Promise<void> {
    while (Date.now() < this.#loadEnd && !this.#signal.aborted && !this.#balancerGone) {
      const { outcome } = await this.#client("load", load.next(random));
      const pauseMs = outcome === "refused"
        ? Math.max(load.pauseMs, REFUSED_PAUSE_MS)
        : load.pauseMs;
      if (pauseMs > 0) await this.#sleep(pauseMs);
    }
  }

  async #load(random: () => number): Promise<void> {
    this.#loadStart = Date.now();
    this.#loadEnd = this.#loadStart + this.#runMs;
    const loads = loadKinds(this.#shortRun).flatMap((load) =>
      Array.from({ length: load.loops }, () => this.#loop(load, random))
    );
    const sampler = this.#sample();
    this.#faultErrors = await this.#faults!.run({
      loadStart: this.#loadStart,
      runMs: this.#runMs,
      faultEnd: this.#loadEnd - CALM_END_MS,
    });
    await Promise.all([sampler, ...loads]);
  }

  // Every sampling interval: memory, descriptors, connections.
  async #sample(): Promise<void> {
    const everyMs = this.#shortRun ? 500 : 2_000;
    let lastCount = this.#records.length;
    let lastT = 0;
    while (Date.now() < this.#loadEnd && !this.#signal.aborted && !this.#balancerGone) {
      await this.#sleep(everyMs);
      const t = (Date.now() - this.#loadStart) / 1000;
      let usage;
      try {
        usage = await processUsage(this.#cluster!.balancer.pid);
      } catch {
        break;
      }
      const active = await this.#cluster!.admin.metric("lb_connections_active");
      this.#report.samples.push({
        t,
        ...usage,
        ...(active === undefined ? {} : { active }),
        rate: (this.#records.length - lastCount) / (t - lastT),
      });
      lastCount = this.#records.length;
      lastT = t;
    }
  }

  // The fewest descriptors the balancer holds over a second once its
  // connections have ended.
  async #quietDescriptors(): Promise<number> {
    const { admin, balancer } = this.#cluster!;
    await this.#waitFor(
      async () => (await admin.metric("lb_connections_active")) === 0,
      "no connection left in lb_connections_active within 30 s",
      30_000,
    );
    let fewest = Infinity;
    for (let i = 0; i < 10; i++) {
      fewest = Math.min(fewest, (await processUsage(balancer.pid)).fds);
      await this.#sleep(100);
    }
    return fewest;
  }

  // Connections that are open when SIGTERM comes, mid-stream, and finish
  // during the drain.
  async #holdAcrossSigterm(): Promise<void> {
    const { admin, balancer } = this.#cluster!;
    const release = Promise.withResolvers<void>();
    const held = this.#round("drain", heldAcrossSigterm(HELD_ACROSS_SIGTERM, release.promise));
    try {
      await this.#waitFor(
        async () => ((await admin.metric("lb_connections_active")) ?? 0) >= HELD_ACROSS_SIGTERM,
        `${HELD_ACROSS_SIGTERM} connections in lb_connections_active within 10 s`,
        10_000,
      );
      this.#told = true;
      balancer.kill("SIGTERM");
      await balancer.waitForLine("stderr", /SIGTERM: no longer accepting/, 10_000);
    } finally {
      release.resolve();
      await held;
    }
    this.#exit = await within(balancer.status, DRAIN_TIMEOUT_MS + 5_000);
  }

  /** Takes everything down, whatever state it is in; never throws. */
  async close(): Promise<void> {
    this.#told = true;
    await this.#cluster?.stop();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  /**
   * Puts what the balancer said and the faults done into the report; after
   * {@linkcode SoakRun.close}, so that the balancer's output is whole.
   */
  collect(): void {
    const report = this.#report;
    report.faults = this.#faults?.events ?? [];
    report.balancerLog = [...this.#cluster?.balancer.stderr ?? []];
    for (const line of this.#cluster?.balancer.stdout ?? []) {
      const end = / end=(\S+)/.exec(line)?.[1];
      if (end !== undefined) report.accessEnds[end] = (report.accessEnds[end] ?? 0) + 1;
    }
  }

  /** The checks, from what the run recorded; after {@linkcode SoakRun.collect}. */
  judge(): void {
    const report = this.#report;
    const { balancer, backends } = this.#cluster!;
    const faults = this.#faults!;
    const lines = backends.flatMap((b) => b.lines.map((line) => ({ backend: b.id, line })));
    const { joined, problems } = joinBackendLines(this.#records, lines, faults.kills);
    for (const record of joined) {
      const kind = record.phase === "load" ? record.kind : `${record.phase}: ${record.kind}`;
      const counts = report.outcomes[kind] ??= {};
      counts[record.finding] = (counts[record.finding] ?? 0) + 1;
    }
    const runSeconds = this.#runMs / 1000;
    const toSeconds = (ms: number) => (ms - this.#loadStart) / 1000;
    const burstSpans = faults.bursts.map((b) => ({
      from: toSeconds(b.from),
      to: toSeconds(b.to + BURST_GRACE_MS),
    }));
    const notMeasured = (name: string): Check => ({ name, ok: false, detail: "not measured" });
    report.checks.push(
      checkBytesExact(joined, problems),
      checkNoneLost(joined),
      checkNoneHung(joined),
      checkNoneRefused(joined, faults.bursts, BURST_GRACE_MS),
      checkEveryKindServed(joined, loadKinds(this.#shortRun)),
      checkFinalRound(joined, this.#finalRoundSize),
      {
        name: "the balancer ran until told",
        ok: !this.#exitedEarly,
        detail: this.#exitedEarly ? "it exited before SIGTERM" : "it exited only after SIGTERM",
      },
      checkNoneMisrouted(joined, faults.forbidden),
      this.#baselineFds === undefined || this.#endFds === undefined
        ? notMeasured("descriptors back where they started")
        : checkDescriptorsBack(this.#baselineFds, this.#endFds, FD_SLACK),
      checkMemoryFlat(
        report.samples,
        runSeconds,
        this.#shortRun ? MEMORY_BOUND_SHORT : MEMORY_BOUND,
        this.#shortRun,
        burstSpans,
      ),
      checkDescriptorsFlat(report.samples, runSeconds, burstSpans),
      checkBurstsBit(balancer.stderr, faults.bursts, joined, BURST_GRACE_MS),
      checkReloads(balancer.stderr),
      {
        name: "faults ran as scheduled",
        ok: this.#faultErrors.length === 0,
        detail: this.#faultErrors[0] ?? `${faults.events.length} events`,
      },
      checkDrained(joined, HELD_ACROSS_SIGTERM, balancer.stderr, this.#exit),
    );
  }
}

// `promise`'s value, or undefined if it takes longer than `ms`.
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((resolve) =>
    timer = setTimeout(() => resolve(undefined), ms)
  );
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}
