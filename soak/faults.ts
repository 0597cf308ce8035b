/**
 * The faults the soak causes while the load runs, each on its own schedule
 * drawn from the seed: `kill -9` of a backend and its restart, reloads that
 * change weights and add or remove a backend, admin drains, a burst past the
 * balancer's descriptor limit, and a SIGHUP storm. It records what it did and
 * when, for the checks: the fault events, the windows in which a backend
 * must take no new connection, the kills, and the bursts.
 *
 * @module
 */

import { realClock, sleep } from "../clock.ts";
import { closeQuietly } from "../errors.ts";
import { seededRandom, until } from "../test_util.ts";
import type { Window } from "./checks.ts";
import type { Kill } from "./join.ts";
import type { BackendProcess, Cluster } from "./cluster.ts";
import { between } from "./load.ts";
import type { FaultEvent } from "./report.ts";

/**
 * What the faults act on: the balancer, its admin API and listener, the
 * steady backends (killed, drained, weighted), the extra one (added to the
 * pool and removed again by reloads; out of it at the start), and the config
 * file.
 */
export type FaultTarget = Pick<
  Cluster,
  "balancer" | "admin" | "listenPort" | "steady" | "extra" | "writeConfig"
>;

/** What the faults' schedule comes from, and what stops it early. */
export interface FaultSettings {
  /** The seed of every fault's schedule. */
  seed: number;
  /** The soak was interrupted: stop at once. */
  signal: AbortSignal;
  /** The balancer is gone: stop. */
  balancerGone(): boolean;
}

/** When the faults run. */
export interface FaultTiming {
  /** When the load started (Unix ms); fault times are seconds since then. */
  loadStart: number;
  /** How long the load runs. */
  runMs: number;
  /** No fault starts after this (Unix ms). */
  faultEnd: number;
}

/** Clients in one descriptor burst; with the steady load, well past the limit. */
export const BURST_CLIENTS = 700;
/** How long the burst's clients hold their connections. */
export const BURST_HOLD_MS = 2_000;
/** After a burst lets go, how long the balancer may take to catch up on its backlog. */
export const BURST_GRACE_MS = 5_000;

/** The faults of one soak run; {@linkcode Faults.run} runs them all. */
export class Faults {
  /** What was done, in order. */
  readonly events: FaultEvent[] = [];
  /** Per backend id, the windows in which it was drained or out of the pool. */
  readonly forbidden = new Map<string, Window[]>();
  /** Every descriptor burst, from its start to when its clients let go. */
  readonly bursts: Window[] = [];
  /** Every `kill -9`. */
  readonly kills: Kill[] = [];
  readonly #target: FaultTarget;
  readonly #settings: FaultSettings;
  #timing: FaultTiming = { loadStart: 0, runMs: 0, faultEnd: 0 };
  readonly #weights: Map<BackendProcess, number>;
  #extraInPool = false;
  #killed: BackendProcess | undefined;
  #drained: BackendProcess | undefined;
  // Reloads, drains and the storm, one at a time: a reload would end a drain.
  #exclusive = Promise.resolve();

  constructor(target: FaultTarget, settings: FaultSettings) {
    this.#target = target;
    this.#settings = settings;
    this.#weights = new Map(target.steady.map((b) => [b, 1]));
    this.#forbid(target.extra, 0);
  }

  /**
   * Runs every fault loop to the end; resolves with what went wrong in them.
   * The config file must hold the steady backends, weight 1 each.
   */
  async run(timing: FaultTiming): Promise<string[]> {
    this.#timing = timing;
    const loops = [this.#kills(), this.#reloads(), this.#drains(), this.#bursts(), this.#storms()];
    return (await Promise.allSettled(loops))
      .filter((r): r is PromiseRejectedResult => r.status === "rejected")
      .map((r) => String(r.reason));
  }

  /** Reloads the balancer said it applied so far. */
  reloadsSeen(): number {
    return this.#target.balancer.stderr.filter((l) => /reloaded \(SIGHUP\)/.test(l)).length;
  }

  #reloadFailures(): number {
    return this.#target.balancer.stderr.filter((l) => /reload .*failed/.test(l)).length;
  }

  get #running(): boolean {
    const { signal, balancerGone } = this.#settings;
    return Date.now() < this.#timing.faultEnd && !signal.aborted && !balancerGone();
  }

  #sleep(ms: number): Promise<void> {
    return sleep(realClock, ms, this.#settings.signal);
  }

  #event(kind: FaultEvent["kind"], detail: string): void {
    const t = (Date.now() - this.#timing.loadStart) / 1000;
    this.events.push({ t, kind, detail });
    console.log(`soak: ${t.toFixed(1)} s ${kind} ${detail}`);
  }

  #forbid(backend: BackendProcess, from: number): void {
    this.forbidden.set(backend.id, [
      ...(this.forbidden.get(backend.id) ?? []),
      { from, to: Infinity },
    ]);
  }

  #allow(backend: BackendProcess, to: number): void {
    const last = this.forbidden.get(backend.id)?.at(-1);
    if (last !== undefined && last.to === Infinity) last.to = to;
  }

  #oneAtATime(work: () => Promise<void>): Promise<void> {
    const done = this.#exclusive.then(work);
    this.#exclusive = done.catch(() => {});
    return done;
  }

  // SIGHUP, until a reload is applied: one may fail, rightly, while the
  // balancer is out of descriptors (it cannot read the file).
  async #reload(): Promise<void> {
    // A reload puts every backend back to what the file says, a drain
    // included (docs/operations.md): the drain's window ends here.
    if (this.#drained !== undefined) this.#allow(this.#drained, Date.now());
    for (let attempt = 1;; attempt++) {
      const applied = this.reloadsSeen();
      const failed = this.#reloadFailures();
      this.#target.balancer.kill("SIGHUP");
      await until(
        () => {
          this.#settings.signal.throwIfAborted();
          return this.reloadsSeen() > applied || this.#reloadFailures() > failed;
        },
        "a reload to be applied or refused within 10 s",
        200,
        50,
      );
      if (this.reloadsSeen() > applied) return;
      if (attempt === 10) throw new Error("a reload was refused 10 times in a row");
      await this.#sleep(500);
    }
  }

  async #kills(): Promise<void> {
    const random = seededRandom(this.#settings.seed ^ 0xdead);
    const { steady } = this.#target;
    while (true) {
      await this.#sleep(between(random, 3_000, 6_000));
      if (!this.#running) break;
      const candidates = steady.filter((b) => b !== this.#drained);
      const victim = candidates[between(random, 0, candidates.length)]!;
      this.#killed = victim;
      this.kills.push({ backend: victim.id, at: Date.now() });
      this.#event("kill", `kill -9 ${victim.id} (${victim.address})`);
      await victim.kill();
      await this.#sleep(between(random, 500, 2_000));
      await victim.start();
      this.#event("restart", victim.id);
      this.#killed = undefined;
    }
  }

  async #reloads(): Promise<void> {
    const random = seededRandom(this.#settings.seed ^ 0x4e10ad);
    const { steady, extra } = this.#target;
    while (true) {
      await this.#sleep(between(random, 4_000, 7_000));
      if (!this.#running) break;
      await this.#oneAtATime(async () => {
        for (const b of steady) this.#weights.set(b, between(random, 1, 5));
        const adding = !this.#extraInPool;
        this.#extraInPool = adding;
        if (adding) this.#allow(extra, Date.now());
        await this.#target.writeConfig(
          [...steady, ...(adding ? [extra] : [])].map((b) => ({
            address: b.address,
            weight: this.#weights.get(b) ?? 1,
          })),
        );
        await this.#reload();
        if (!adding) this.#forbid(extra, Date.now());
        this.#event(
          "reload",
          `weights ${steady.map((b) => `${b.id}=${this.#weights.get(b)}`).join(" ")}; ` +
            `${adding ? "adds" : "removes"} ${extra.id}`,
        );
      });
    }
  }

  async #drains(): Promise<void> {
    const random = seededRandom(this.#settings.seed ^ 0xd4a1);
    const { steady, admin } = this.#target;
    while (true) {
      await this.#sleep(between(random, 5_000, 9_000));
      if (!this.#running) break;
      const candidates = steady.filter((b) => b !== this.#killed);
      const target = candidates[between(random, 0, candidates.length)]!;
      await this.#oneAtATime(async () => {
        this.#drained = target;
        await admin.change(target.address, "drain");
        this.#forbid(target, Date.now());
        this.#event("drain", target.id);
      });
      await this.#sleep(between(random, 1_500, 3_000));
      await this.#oneAtATime(async () => {
        this.#allow(target, Date.now());
        await admin.change(target.address, "enable");
        this.#drained = undefined;
        this.#event("enable", target.id);
      });
    }
  }

  // Once in a run, or every few minutes in a long one, at these shares of it.
  async #everyFewMinutes(firstShare: number, work: () => Promise<void>): Promise<void> {
    const { runMs, loadStart } = this.#timing;
    const everyMs = Math.max(runMs / 2, 180_000);
    for (let at = runMs * firstShare; at < runMs - 10_000; at += everyMs) {
      await this.#sleep(loadStart + at - Date.now());
      if (!this.#running) break;
      await work();
    }
  }

  // A burst past the descriptor limit: connects still pending when the hold
  // ends are given up, so the burst ends on time.
  #bursts(): Promise<void> {
    return this.#everyFewMinutes(0.25, async () => {
      this.#event(
        "descriptor-burst",
        `${BURST_CLIENTS} clients at once, held ${BURST_HOLD_MS / 1000} s`,
      );
      const from = Date.now();
      const release = new AbortController();
      const connecting = Array.from(
        { length: BURST_CLIENTS },
        () =>
          Deno.connect({
            hostname: "127.0.0.1",
            port: this.#target.listenPort,
            signal: release.signal,
          }).catch(() => undefined),
      );
      await this.#sleep(BURST_HOLD_MS);
      release.abort();
      for (const conn of await Promise.all(connecting)) closeQuietly(conn);
      this.bursts.push({ from, to: Date.now() });
    });
  }

  // Twenty SIGHUPs in one second, then a wait (at most 10 s) until no
  // reload has been applied for a second.
  #storms(): Promise<void> {
    return this.#everyFewMinutes(0.6, () =>
      this.#oneAtATime(async () => {
        this.#event("sighup-storm", "20 SIGHUPs in one second");
        if (this.#drained !== undefined) this.#allow(this.#drained, Date.now());
        for (let i = 0; i < 20; i++) {
          this.#target.balancer.kill("SIGHUP");
          await this.#sleep(50);
        }
        for (let second = 0, seen = -1; seen !== this.reloadsSeen() && second < 10; second++) {
          seen = this.reloadsSeen();
          await this.#sleep(1_000);
        }
      }));
  }
}
