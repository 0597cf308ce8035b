/**
 * The load balancer's entry point: `deno run --allow-net load_balancer.ts`.
 *
 * `main()` only: parse the command line, plan (validate and prepare, as
 * `--check` does), run (runtime.ts, on the `deno` engine), route signals,
 * and exit with one code. Every start-up failure arrives here as a
 * `StartError` and leaves as one stderr line per problem; nothing else in
 * the program exits. Nothing imports this module.
 *
 * @module
 */

import { parseHostPort } from "./address.ts";
import { realClock } from "./clock.ts";
import { ConfigError, watchConfig } from "./config.ts";
import { DenoEngine } from "./engine_deno.ts";
import { describe, StartError } from "./errors.ts";
import { type LoadBalancerFlags, parseFlags, usage, UsageError } from "./flags.ts";
import { canUseLibc, ignoreSigusr1, isSignalIgnored, resetConnection } from "./libc.ts";
import { logDiagnostic } from "./log.ts";
import {
  epollPossible,
  epollUnavailable,
  type Plan,
  prepare,
  resolveConfig,
  summarize,
  workerPermissions,
} from "./plan.ts";
import { LocalListeners, Runtime } from "./runtime.ts";
import { SplitListeners } from "./split_listeners.ts";
import { ThreadedListeners } from "./threads.ts";
import { SAME_REQUEST_MS, supervise } from "./supervisor.ts";
import { VERSION } from "./version.ts";

/** Exit codes: 0 done, 1 a bad setting under --check (or a forced stop), 2 a bad start, 70 a bug. */
const EXIT_BUG = 70;

/** Runs the load balancer from the command line; see `--help`. Never returns. */
export async function main(args: readonly string[]): Promise<never> {
  // Before anything else: no window in which SIGUSR1 opens a debugger.
  const sigusr1Warning = guardSigusr1();
  let code: number;
  try {
    code = await run(args, sigusr1Warning);
  } catch (error) {
    if (error instanceof StartError) {
      for (const line of error.message.split("\n")) console.error(`load_balancer: ${line}`);
      code = error.exitCode;
    } else {
      // A bug: say it on one line, and never report success.
      console.error(`load_balancer: internal error at start-up: ${describe(error)}`);
      code = EXIT_BUG;
    }
  }
  Deno.exit(code);
}

/**
 * Sets SIGUSR1 to "ignored" (libc.ts), or says why it could not: Deno starts
 * V8's inspector on SIGUSR1, which would let any local user run code in the
 * balancer.
 */
function guardSigusr1(): string | undefined {
  if (!canUseLibc()) {
    return Deno.build.os === "linux"
      ? "warning: SIGUSR1 would open a debugger on 127.0.0.1:9229 (Deno's inspector) that " +
        "any local user could attach to; run with --allow-ffi (deno task lb does) so the " +
        "balancer can ignore it, and never send SIGUSR1 (the access log reopens on SIGUSR2)"
      : undefined;
  }
  try {
    ignoreSigusr1();
    return undefined;
  } catch (error) {
    return `warning: could not ignore SIGUSR1, which opens a debugger: ${describe(error)}`;
  }
}

// From the command line to a running balancer; resolves with the exit code
// when the process should end.
async function run(args: readonly string[], sigusr1Warning: string | undefined): Promise<number> {
  let flags: LoadBalancerFlags;
  try {
    flags = parseFlags(args);
  } catch (error) {
    if (error instanceof UsageError) throw new StartError(error.message);
    throw error;
  }
  if (flags.help) {
    console.log(usage());
    return 0;
  }
  if (flags.version) {
    console.log(`load_balancer ${VERSION} (deno ${Deno.version.deno})`);
    return 0;
  }
  const plan = await makePlan(flags);
  if (flags.check) {
    console.log(`load_balancer: ${sourceOf(flags)}: valid: ${summarize(plan.config)}`);
    return 0;
  }
  // The epoll engine runs in data-plane threads; the deno engine in this one.
  const epoll = plan.config.engine === "epoll" ||
    (plan.config.engine === "auto" && epollPossible());
  if (plan.config.workers > 1 && !flags.asWorker) {
    plan.accessLog.close(); // the workers write it
    if (epoll) {
      // Measured the same per request and per connection (docs/benchmark.md).
      logDiagnostic(
        `--workers ${plan.config.workers} on the epoll engine: --threads ${plan.config.workers} ` +
          "does the same in one process, with one admin API, one set of metrics and one access " +
          "log; prefer it",
      );
    }
    const listener = plan.config.listeners[0]!;
    return await supervise({
      listen: parseHostPort(listener.listen, { allowPortZero: true }),
      label: flags.config === undefined ? "--listen" : `listener ${listener.name}`,
      // The supervisor holds --allow-run: it needs the warning most.
      ...(sigusr1Warning === undefined ? {} : { warning: sigusr1Warning }),
      workers: plan.config.workers,
      args,
      permissions: workerPermissions(flags, plan.config),
    });
  }
  const stopped = Promise.withResolvers<number>();
  const signals = listenForSignals(stopped.resolve);
  const { threads } = plan.config;
  const runtime = new Runtime({
    flags,
    plan,
    engine: (listener) => epoll && listener.tls === undefined ? "epoll" : "deno",
    host: (onEvent) => {
      const local = new LocalListeners({
        engine: new DenoEngine(canUseLibc() ? { reset: resetConnection } : {}),
        onEvent,
        reusePort: flags.asWorker,
      });
      if (!epoll) return local;
      // Listeners that terminate TLS run on the deno engine, here; the rest in the threads.
      return new SplitListeners(
        new ThreadedListeners({ threads, onEvent, probe: !flags.asWorker }),
        local,
        (listener) => listener.tls !== undefined,
      );
    },
  });
  // Watched from before the readiness line: a change made as soon as it is
  // said is not missed, and reloads once serving has begun.
  let serving = false;
  let changedEarly = false;
  if (flags.watch && flags.config !== undefined) {
    watchConfig(
      flags.config,
      (why) => serving ? runtime.requestReload(why) : changedEarly = true,
      (error) => logDiagnostic(`--watch ${flags.config}: stopped watching: ${describe(error)}`),
    );
  }
  await runtime.start();
  const tlsOnDeno = epoll && plan.config.listeners.some((listener) => listener.tls !== undefined)
    ? "; listeners with tls on the deno engine, in this thread"
    : "";
  if (plan.config.engine === "auto") {
    logDiagnostic(
      epoll
        ? `engine epoll, ${threads} thread(s) (auto: Linux, --allow-ffi granted)${tlsOnDeno}`
        : `engine deno (auto: ${epollUnavailable()})`,
    );
  } else {
    // Asked for by name: said anyway, so every log names the engine it ran on.
    logDiagnostic(epoll ? `engine epoll, ${threads} thread(s)${tlsOnDeno}` : "engine deno");
  }
  if (sigusr1Warning !== undefined) logDiagnostic(sigusr1Warning);
  signals.serving(runtime);
  serving = true;
  if (changedEarly) runtime.requestReload("file changed");
  // Last line of defence: one connection's bug must not end every other one.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    logDiagnostic(`unexpected error, still serving: ${describe(event.reason)}`);
  });
  if (flags.supervisorPid !== undefined) {
    watchSupervisor(flags.supervisorPid, () => signals.stop("supervisor gone"));
  }
  if (canUseLibc()) {
    // In case a future Deno installs its SIGUSR1 handler anew after start-up.
    realClock.setTimer(
      () => {
        if (!isSignalIgnored()) logDiagnostic("SIGUSR1 had a handler again; ignoring it again");
      },
      2000,
      { unref: true },
    );
  }
  return await stopped.promise;
}

function sourceOf(flags: LoadBalancerFlags): string {
  return flags.config ?? "command line";
}

/** Resolves and prepares the configuration: the same checks for --check and a start. */
async function makePlan(flags: LoadBalancerFlags): Promise<Plan> {
  try {
    return await prepare(flags, await resolveConfig(flags));
  } catch (error) {
    if (error instanceof UsageError) throw new StartError(error.message);
    if (!(error instanceof ConfigError)) throw error;
    const lines = error.problems.map((problem) => `${sourceOf(flags)}: ${problem}`);
    throw new StartError(lines.join("\n"), flags.check ? 1 : 2);
  }
}

/**
 * Listens for signals from the start, so that one sent right after the
 * readiness line never meets the default action (which ends the process).
 * Before serving, SIGINT/SIGTERM end the start and the others are dropped.
 */
function listenForSignals(exit: (code: number) => void) {
  let runtime: Runtime | undefined;
  let stopping = false;
  let stoppingAt = 0;
  const stop = async (signal: string) => {
    if (runtime === undefined) {
      logDiagnostic(`${signal} before serving: exiting`);
      return exit(0);
    }
    // A signal to the whole process group may come twice (SAME_REQUEST_MS).
    if (stopping && performance.now() - stoppingAt < SAME_REQUEST_MS) return;
    if (stopping) {
      logDiagnostic(
        `${signal} again: exiting now, cutting ${runtime.activeConnections} connection(s)`,
      );
      runtime.flush();
      return exit(1);
    }
    stopping = true;
    stoppingAt = performance.now();
    await runtime.shutdown(signal);
    exit(0);
  };
  const on = {
    SIGHUP: () => runtime?.requestReload("SIGHUP"),
    SIGUSR2: () => {
      if (runtime === undefined) return;
      try {
        logDiagnostic(`SIGUSR2: reopened the access log ${runtime.reopenLogs()}`);
      } catch (error) {
        logDiagnostic(`SIGUSR2: could not reopen the access log: ${describe(error)}`);
      }
    },
    SIGINT: () => stop("SIGINT"),
    SIGTERM: () => stop("SIGTERM"),
  };
  for (const [signal, handler] of Object.entries(on)) {
    Deno.addSignalListener(signal as Deno.Signal, handler);
  }
  return {
    serving: (running: Runtime) => runtime = running,
    stop,
  };
}

// A supervisor killed outright cannot pass on a signal: a worker notices it
// was handed to another parent, and drains as if told to stop. The pid comes
// on the command line: a supervisor killed while this worker was starting is
// then seen at the first look, not taken for the parent.
function watchSupervisor(supervisor: number, onGone: () => void): void {
  const look = () => {
    if (Deno.ppid !== supervisor) return onGone();
    realClock.setTimer(look, 1000, { unref: true });
  };
  look();
}

if (import.meta.main) await main(Deno.args);
