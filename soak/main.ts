/**
 * `deno task soak [--minutes N] [--engine epoll|deno] [--quick] [--seed N] [--out DIR]`
 *
 * Runs the real balancer as a process in front of soak backends (processes
 * that check every byte they get), loads it with every kind of client at
 * once, causes faults on a seeded schedule meanwhile, and checks that no
 * byte was lost or changed, nothing hung, nothing reached a backend it should
 * not have, and memory and descriptors stayed flat. Writes a report (Markdown,
 * JSON, SVG) and exits 0 when every check passed, 1 when one failed, 2 on a
 * bad flag.
 *
 * @module
 */

import { seededRandom } from "../test_util.ts";
import { type ClientPlan, runClient, type StreamResult } from "./client.ts";
import {
  Admin,
  BackendProcess,
  configText,
  freePort,
  processUsage,
  startSoakBalancer,
} from "./cluster.ts";
import { parseSoakArgs, type SoakOptions, USAGE, UsageError } from "./flags.ts";
import {
  type Check,
  type FaultEvent,
  passed,
  renderMarkdown,
  renderSvg,
  slopePerMinute,
  type SoakReport,
} from "./report.ts";

// The balancer runs under this descriptor limit, so that a burst of clients
// runs it out of descriptors; the steady load uses about a fifth of it.
const MAX_OPEN_FILES = 1024;
const BURST_CLIENTS = 700;
// Descriptors the balancer may hold at the end beyond those at the start
// (a health check's connection in flight).
const FD_SLACK = 4;
// The bound on growth of memory and descriptors over the second half of the
// run, per minute. A run of a minute or two is mostly warm-up (the heap grows
// until the collector settles on a size): its bound catches only a gross
// leak; the 10-minute runs in docs/soak/ judge flatness.
const SLOPE_BOUND = 0.01;
const SLOPE_BOUND_SHORT = 1;

/** Runs one soak and returns its report. */
export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const { engine, seed } = options;
  const runMs = options.minutes * 60_000;
  const dir = await Deno.makeTempDir({ prefix: "lb-soak-" });
  const token = `soak-token-${seed}`;
  const tokenFile = `${dir}/token`;
  await Deno.writeTextFile(tokenFile, token);
  const backends = ["b1", "b2", "b3", "b4"].map((id) => new BackendProcess(id, freePort()));
  const [b1, b2, b3, b4] = backends as [
    BackendProcess,
    BackendProcess,
    BackendProcess,
    BackendProcess,
  ];
  const steady = [b1, b2, b3];
  await Promise.all(backends.map((b) => b.start()));

  const listenPort = freePort();
  const adminPort = freePort();
  const configFile = `${dir}/lb.json`;
  const weights = new Map(steady.map((b) => [b, 1]));
  let b4InPool = false;
  const writeConfig = () =>
    Deno.writeTextFile(
      configFile,
      configText({
        listenPort,
        adminPort,
        tokenFile,
        backends: [...steady, ...(b4InPool ? [b4] : [])].map((b) => ({
          address: b.address,
          weight: weights.get(b) ?? 1,
        })),
      }),
    );
  await writeConfig();
  const balancer = await startSoakBalancer(configFile, engine, MAX_OPEN_FILES);
  const admin = new Admin(adminPort, token);
  let told = false;
  let exitedEarly = false;
  balancer.status.then(() => exitedEarly ||= !told);

  const report: SoakReport = {
    engine,
    seed,
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
  const checks: Check[] = report.checks;
  try {
    await until(async () => (await admin.metric("lb_connections_active")) !== undefined, 10_000);
    // Warm up, then note the descriptors the balancer holds at rest.
    await Promise.all(
      Array.from(
        { length: 20 },
        (_, i) => runClient(listenPort, { seed: i, up: 100, down: 100 }, { deadlineMs: 10_000 }),
      ),
    );
    const baselineFds = await quietDescriptors(balancer.pid, admin);

    const loadStart = Date.now();
    const elapsed = () => (Date.now() - loadStart) / 1000;
    const loadEnd = loadStart + runMs;
    const faultEnd = loadEnd - 8_000;
    const fault = (kind: FaultEvent["kind"], detail: string) => {
      report.faults.push({ t: elapsed(), kind, detail });
      console.log(`soak: ${elapsed().toFixed(1)} s ${kind} ${detail}`);
    };

    // Times (Unix ms) during which a backend must take no new connection.
    const forbidden = new Map<string, { from: number; to: number }[]>();
    const forbid = (b: BackendProcess, from: number) =>
      forbidden.set(b.id, [...(forbidden.get(b.id) ?? []), { from, to: Infinity }]);
    const allow = (b: BackendProcess, to: number) => {
      const last = forbidden.get(b.id)?.at(-1);
      if (last !== undefined && last.to === Infinity) last.to = to;
    };
    forbid(b4, 0);
    let misrouted = 0;
    let corrupt = 0;
    let hung = 0;
    let finished = 0;
    const record = (kind: string, result: StreamResult) => {
      const counts = report.outcomes[kind] ??= {};
      counts[result.outcome] = (counts[result.outcome] ?? 0) + 1;
      finished++;
      const example = (what: string) => {
        if (report.examples.length < 20) {
          report.examples.push(
            `${(result.startedAt - loadStart) / 1000} s, ${kind} client: ${what}`,
          );
        }
      };
      if (result.outcome === "corrupt") {
        corrupt++;
        example(`corrupt (${result.detail}), backend ${result.backend ?? "?"}`);
      }
      if (result.outcome === "hung") {
        hung++;
        example(`hung until its deadline, backend ${result.backend ?? "?"}`);
      }
      // The balancer picked the backend after the client started connecting
      // and before the backend accepted: if both fall in one window, so did
      // the pick.
      const windows = result.backend === undefined ? [] : forbidden.get(result.backend) ?? [];
      const { startedAt, acceptedAt = -Infinity } = result;
      if (windows.some((w) => startedAt > w.from + 1 && acceptedAt < w.to - 1)) {
        misrouted++;
        example(
          `reached ${result.backend} while it was drained or removed (started ${
            new Date(result.startedAt).toISOString()
          })`,
        );
      }
    };

    // The load: every kind of client at once, each kind a few loops.
    const loadRandom = seededRandom(seed ^ 0x10ad);
    const between = (random: () => number, low: number, high: number) =>
      Math.floor(low + random() * (high - low));
    let nextSeed = seed;
    const loop = async (
      kind: string,
      make: () => { up: number; down: number; plan: ClientPlan },
      pauseMs: number,
    ) => {
      while (Date.now() < loadEnd) {
        const { up, down, plan } = make();
        nextSeed = (nextSeed + 1) >>> 0;
        record(kind, await runClient(listenPort, { seed: nextSeed, up, down }, plan));
        if (pauseMs > 0) await sleep(pauseMs);
      }
    };
    const quick = options.quick || options.minutes < 5;
    const loads = [
      ...times(6, () =>
        loop("short", () => ({
          up: between(loadRandom, 1, 2048),
          down: between(loadRandom, 1, 2048),
          plan: { deadlineMs: 15_000 },
        }), 40)),
      ...times(2, () =>
        loop("stream", () => ({
          up: between(loadRandom, 1 << 20, 8 << 20),
          down: between(loadRandom, 1 << 20, 8 << 20),
          plan: { deadlineMs: 60_000 },
        }), 100)),
      ...times(30, () =>
        loop("idle", () => ({
          up: 16,
          down: 16,
          plan: { idleMs: between(loadRandom, 3_000, quick ? 8_000 : 20_000), deadlineMs: 60_000 },
        }), 0)),
      ...times(2, () =>
        loop("slow-reader", () => ({
          up: 1024,
          down: quick ? 512 << 10 : 2 << 20,
          plan: { stallMs: between(loadRandom, 1_000, 2_500), deadlineMs: 120_000 },
        }), 0)),
      loop("reset", () => ({
        up: 1024,
        down: 1 << 20,
        plan: { resetAfter: between(loadRandom, 1, 256 << 10), deadlineMs: 15_000 },
      }), 200),
    ];

    // The faults, each on its own seeded schedule.
    const faultsRunning = () => Date.now() < faultEnd && !exitedEarly;
    let killed: BackendProcess | undefined;
    let drained: BackendProcess | undefined;
    let reloading = Promise.resolve();
    const exclusive = (work: () => Promise<void>) => {
      const done = reloading.then(work);
      reloading = done.catch(() => {});
      return done;
    };
    const reloadsSeen = () => balancer.stderr.filter((l) => /reloaded \(SIGHUP\)/.test(l)).length;
    const reloadFailures = () => balancer.stderr.filter((l) => /reload .*failed/.test(l));
    const badReloads = () => reloadFailures().filter((l) => !/Too many open files/.test(l));

    // SIGHUP, until a reload is applied: one may fail, rightly, while the
    // balancer is out of descriptors (it cannot read the file).
    const reload = async () => {
      // A reload puts every backend back to what the file says, a drain
      // included (docs/operations.md): the drain's window ends here.
      if (drained !== undefined) allow(drained, Date.now());
      for (let attempt = 1;; attempt++) {
        const before = reloadsSeen();
        const failedBefore = reloadFailures().length;
        balancer.kill("SIGHUP");
        await until(
          () => reloadsSeen() > before || reloadFailures().length > failedBefore,
          10_000,
          "a reload to be applied or refused",
        );
        if (reloadsSeen() > before) return;
        if (attempt === 10) throw new Error(`reload refused 10 times: ${reloadFailures().at(-1)}`);
        await sleep(500);
      }
    };
    const killLoop = async () => {
      const random = seededRandom(seed ^ 0xdead);
      while (true) {
        await sleep(between(random, 3_000, 6_000));
        if (!faultsRunning()) break;
        const candidates = steady.filter((b) => b !== drained);
        killed = candidates[between(random, 0, candidates.length)]!;
        fault("kill", `kill -9 ${killed.id} (${killed.address})`);
        await killed.kill();
        await sleep(between(random, 500, 2_000));
        await killed.start();
        fault("restart", killed.id);
        killed = undefined;
      }
    };
    const reloadLoop = async () => {
      const random = seededRandom(seed ^ 0x4e10ad);
      while (true) {
        await sleep(between(random, 4_000, 7_000));
        if (!faultsRunning()) break;
        await exclusive(async () => {
          for (const b of steady) weights.set(b, between(random, 1, 5));
          const adding = !b4InPool;
          b4InPool = adding;
          if (adding) allow(b4, Date.now());
          await writeConfig();
          await reload();
          if (!adding) forbid(b4, Date.now());
          fault(
            "reload",
            `weights ${steady.map((b) => `${b.id}=${weights.get(b)}`).join(" ")}; ` +
              `${adding ? "adds" : "removes"} b4`,
          );
        });
      }
    };
    const drainLoop = async () => {
      const random = seededRandom(seed ^ 0xd4a1);
      while (true) {
        await sleep(between(random, 5_000, 9_000));
        if (!faultsRunning()) break;
        const candidates = steady.filter((b) => b !== killed);
        const target = candidates[between(random, 0, candidates.length)]!;
        // Never at once with a reload, which would end the drain itself.
        await exclusive(async () => {
          drained = target;
          await admin.change(target.address, "drain");
          forbid(target, Date.now());
          fault("drain", target.id);
        });
        await sleep(between(random, 1_500, 3_000));
        await exclusive(async () => {
          allow(target, Date.now());
          await admin.change(target.address, "enable");
          drained = undefined;
          fault("enable", target.id);
        });
      }
    };
    // Once a run, or every few minutes in a long one: a burst past the
    // descriptor limit, and twenty SIGHUPs in one second.
    const burstLoop = async () => {
      const everyMs = Math.max(runMs / 2, 180_000);
      for (let at = runMs * 0.25; at < runMs - 10_000; at += everyMs) {
        await sleep(loadStart + at - Date.now());
        if (!faultsRunning()) break;
        fault(
          "descriptor-burst",
          `${BURST_CLIENTS} clients at once, held 2 s (limit ${MAX_OPEN_FILES})`,
        );
        const held = await Promise.all(
          times(
            BURST_CLIENTS,
            () => Deno.connect({ hostname: "127.0.0.1", port: listenPort }).catch(() => undefined),
          ),
        );
        await sleep(2_000);
        for (const conn of held) conn?.close();
      }
    };
    const stormLoop = async () => {
      const everyMs = Math.max(runMs / 2, 180_000);
      for (let at = runMs * 0.6; at < runMs - 10_000; at += everyMs) {
        await sleep(loadStart + at - Date.now());
        if (!faultsRunning()) break;
        await exclusive(async () => {
          fault("sighup-storm", "20 SIGHUPs in one second");
          if (drained !== undefined) allow(drained, Date.now());
          for (let i = 0; i < 20; i++) {
            balancer.kill("SIGHUP");
            await sleep(50);
          }
          // Settled once no reload has been applied for a second.
          let seen = -1;
          while (seen !== reloadsSeen()) {
            seen = reloadsSeen();
            await sleep(1_000);
          }
        });
      }
    };

    // Every sampling interval: memory, descriptors, connections.
    const sampleMs = quick ? 500 : 2_000;
    const sampler = (async () => {
      let lastFinished = 0;
      let lastT = 0;
      while (Date.now() < loadEnd && !exitedEarly) {
        await sleep(sampleMs);
        const t = elapsed();
        let usage;
        try {
          usage = await processUsage(balancer.pid);
        } catch {
          break;
        }
        const active = await admin.metric("lb_connections_active");
        report.samples.push({
          t,
          ...usage,
          ...(active === undefined ? {} : { active }),
          rate: (finished - lastFinished) / (t - lastT),
        });
        lastFinished = finished;
        lastT = t;
      }
    })();

    console.log(
      `soak: ${engine} engine, ${options.minutes} min, seed ${seed}; balancer pid ${balancer.pid} ` +
        `on 127.0.0.1:${listenPort}, limit ${MAX_OPEN_FILES} descriptors`,
    );
    const faultLoops = [killLoop(), reloadLoop(), drainLoop(), burstLoop(), stormLoop()];
    const faultErrors = (await Promise.allSettled(faultLoops))
      .filter((r) => r.status === "rejected").map((r) =>
        String((r as PromiseRejectedResult).reason)
      );
    await sampler;
    await Promise.all(loads);
    // Every backend back, for the end of the run.
    for (const b of steady) if (!b.running) await b.start();

    const endFds = await quietDescriptors(balancer.pid, admin);
    const secondHalf = report.samples.filter((s) => s.t >= runMs / 2000);
    const rssSlope = slopePerMinute(secondHalf.map((s) => s.t), secondHalf.map((s) => s.rssKiB));
    // Descriptors follow the connections: leave out the bursts' few seconds.
    const bursts = report.faults.filter((f) => f.kind === "descriptor-burst").map((f) => f.t);
    const outsideBursts = secondHalf.filter((s) => !bursts.some((t) => s.t >= t && s.t <= t + 6));
    const fdSlope = slopePerMinute(outsideBursts.map((s) => s.t), outsideBursts.map((s) => s.fds));
    const bound = quick ? SLOPE_BOUND_SHORT : SLOPE_BOUND;
    const boundText = `under ${bound * 100}% per minute${quick ? ", for a short run" : ""}`;
    const completed = Object.values(report.outcomes).reduce((n, c) => n + (c.ok ?? 0), 0);

    told = true;
    balancer.kill("SIGTERM");
    const status = await Promise.race([balancer.status, sleep(30_000).then(() => undefined)]);
    report.balancerLog = balancer.stderr;
    for (const line of await accessLines(balancer.stdout)) {
      report.accessEnds[line] = (report.accessEnds[line] ?? 0) + 1;
    }

    checks.push(
      {
        name: "bytes exact both ways",
        ok: corrupt === 0 && completed > 0,
        detail: `${completed} streams completed, every byte checked both ways; ${corrupt} differed`,
      },
      {
        name: "no client hung",
        ok: hung === 0,
        detail: `${finished} connections; every one that failed was reset or closed; ${hung} hung`,
      },
      {
        name: "the balancer ran until told",
        ok: !exitedEarly,
        detail: exitedEarly ? "it exited before SIGTERM" : "it exited only after SIGTERM",
      },
      {
        name: "nothing new reached a drained or removed backend",
        ok: misrouted === 0,
        detail: `${
          [...forbidden.values()].flat().length
        } windows; ${misrouted} connections in them`,
      },
      {
        name: "descriptors back where they started",
        ok: endFds <= baselineFds + FD_SLACK,
        detail: `${baselineFds} at rest before the load, ${endFds} at rest after it ` +
          `(slack ${FD_SLACK}, for a health check in flight)`,
      },
      {
        name: "memory flat over the second half",
        ok: rssSlope < bound && secondHalf.length >= 2,
        detail: `RSS slope ${(rssSlope * 100).toFixed(2)}% per minute (${boundText}); ` +
          `${Math.round((secondHalf[0]?.rssKiB ?? 0) / 1024)} → ` +
          `${Math.round((secondHalf.at(-1)?.rssKiB ?? 0) / 1024)} MiB`,
      },
      {
        name: "descriptors flat over the second half",
        ok: fdSlope < bound && outsideBursts.length >= 2,
        detail: `slope ${(fdSlope * 100).toFixed(2)}% per minute (${boundText}), outside ` +
          `the descriptor bursts; ${Math.min(...outsideBursts.map((s) => s.fds))}–` +
          `${Math.max(...outsideBursts.map((s) => s.fds))} open`,
      },
      {
        name: "reloads applied",
        ok: badReloads().length === 0,
        detail: `${reloadsSeen()} applied; ${reloadFailures().length} refused, the old config ` +
          `kept, while out of descriptors (then sent again)` +
          (badReloads().length > 0 ? `; refused otherwise: ${badReloads()[0]}` : ""),
      },
      {
        name: "faults ran as scheduled",
        ok: faultErrors.length === 0,
        detail: faultErrors.length === 0 ? `${report.faults.length} events` : faultErrors[0]!,
      },
      {
        name: "SIGTERM drained and exited 0",
        ok: status?.code === 0,
        detail: status === undefined
          ? "still running 30 s after SIGTERM"
          : `exit code ${status.code}`,
      },
    );
    return report;
  } finally {
    await balancer.close();
    await Promise.all(backends.map((b) => b.kill()));
    await Deno.remove(dir, { recursive: true });
  }
}

// The fewest descriptors the balancer holds over a second once its
// connections have ended (a health check may be in flight at any moment).
async function quietDescriptors(pid: number, admin: Admin): Promise<number> {
  await until(async () => (await admin.metric("lb_connections_active")) === 0, 30_000);
  let fewest = Infinity;
  for (let i = 0; i < 10; i++) {
    fewest = Math.min(fewest, (await processUsage(pid)).fds);
    await sleep(100);
  }
  return fewest;
}

async function accessLines(stdout: readonly string[]): Promise<string[]> {
  await sleep(0);
  return stdout.map((line) => / end=(\S+)/.exec(line)?.[1]).filter((end) => end !== undefined);
}

async function until(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what = "the balancer",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}`);
    await sleep(50);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

function times<T>(n: number, make: (i: number) => T): T[] {
  return Array.from({ length: n }, (_, i) => make(i));
}

if (import.meta.main) {
  let options: SoakOptions;
  try {
    options = parseSoakArgs(Deno.args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`soak: ${error.message}\n${USAGE}`);
    Deno.exit(2);
  }
  if (options.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const report = await runSoak(options);
  await Deno.mkdir(options.out, { recursive: true });
  const base = `${options.out}/soak-${options.engine}`;
  await Deno.writeTextFile(`${base}.json`, JSON.stringify(report, null, 1) + "\n");
  await Deno.writeTextFile(`${base}.svg`, renderSvg(report));
  await Deno.writeTextFile(`${base}.md`, renderMarkdown(report, `soak-${options.engine}.svg`));
  await Deno.writeTextFile(`${base}.log`, report.balancerLog.join("\n") + "\n");
  for (const check of report.checks) {
    console.log(`soak: ${check.ok ? "ok    " : "FAILED"} ${check.name}: ${check.detail}`);
  }
  console.log(`soak: ${passed(report) ? "passed" : "FAILED"}; report in ${base}.md`);
  Deno.exit(passed(report) ? 0 : 1);
}
