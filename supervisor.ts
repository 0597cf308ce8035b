/**
 * `--workers N`: N balancer processes sharing one listening port.
 *
 * JavaScript runs on one thread, so one process uses one core. With
 * `SO_REUSEPORT` (Linux) several processes can each listen on the same
 * address, and the kernel spreads new connections across them. The
 * supervisor is the same program started with `--workers N`:
 *
 * 1. it binds the address once *without* reuse, so a port held by another
 *    program is still reported as in use, and learns the port (for port 0);
 * 2. it starts N workers (`--as-worker`, listening with `reusePort`);
 * 3. it restarts a worker that dies, after a backoff that doubles while
 *    workers keep dying young;
 * 4. it forwards SIGINT/SIGTERM, so every worker drains, and exits when all
 *    have; a second signal is forwarded too, and it exits at once;
 * 5. it forwards SIGHUP, so every worker reloads its configuration, and
 *    SIGUSR2, so every worker reopens its access log. It never forwards
 *    SIGUSR1, on which Deno opens a debugger (see libc.ts).
 *
 * Workers write access lines straight to the shared stdout (each write holds
 * whole lines, at most 4 KiB, so lines from different workers never mix);
 * their stderr is relayed line by line, prefixed with the worker's number.
 *
 * @module
 */

import { formatHostPort, type HostPort } from "./address.ts";
import { type Clock, nextBackoff, realClock } from "./clock.ts";
import { describe } from "./errors.ts";
import { READY, readyAddress } from "./events.ts";
import { eachLine } from "./io.ts";
import { logDiagnostic } from "./log.ts";

/** What the supervisor needs to know. */
export interface SupervisorOptions {
  /** The address the workers share. */
  listen: HostPort;
  /** How messages name that address: `--listen` or `listener NAME`. @default {"--listen"} */
  label?: string;
  /** How many workers. */
  workers: number;
  /** The command line the supervisor was given; passed on to each worker. */
  args: readonly string[];
  /** The load balancer's entry module. @default {Deno.mainModule} */
  mainModule?: string;
  /** Permissions workers need beyond --allow-net (reading a config file, …). */
  permissions?: string[];
  /** The clock restarts are timed on. @default {realClock} */
  clock?: Clock;
  /** Said once the address is bound (the SIGUSR1 warning). */
  warning?: string;
}

// A worker that dies sooner than this after its start counts as dying young.
const HEALTHY_AFTER_MS = 10_000;
const RESTART_FIRST_MS = 100;
const RESTART_MAX_MS = 10_000;
// A worker exits 2 when its command line or listen address is wrong; starting
// it again would fail the same way.
const EXIT_USAGE = 2;

interface Slot {
  readonly id: number;
  child?: Deno.ChildProcess;
  startedAt: number;
  backoffMs: number;
  restartTimer?: number;
}

/**
 * The V8 flags `deno task lb` runs the balancer with (deno.json), given to
 * every worker too. A semi-space (half of V8's young generation) of at most
 * 1 MiB: by default a burst of allocation grows the young generation to as
 * much as 62 MiB (measured on Deno 2.9.6), and the process keeps it. An
 * idle connection cost 4.5 KiB instead of 7.5–8.0 in a same-run bench, with
 * no change in CPU per request or per connection above its noise
 * (docs/benchmark.md).
 */
export const V8_FLAGS = "--v8-flags=--max-semi-space-size=1";

/**
 * How soon after a first SIGINT/SIGTERM a second one is taken for the same
 * request, here and in every balancer process: a signal sent to a whole
 * process group (Ctrl-C, `timeout`, a service manager stopping a cgroup)
 * arrives twice where a parent passes it on too (`deno task`, this
 * supervisor). Only a later one means "now".
 */
export const SAME_REQUEST_MS = 1000;

/** Runs the supervisor until its workers have all exited; resolves with the exit code. */
export async function supervise(options: SupervisorOptions): Promise<number> {
  if (Deno.build.os !== "linux") {
    console.error(
      `load_balancer: --workers ${options.workers}: needs Linux (SO_REUSEPORT); ` +
        `this is ${Deno.build.os}. Run one process per port instead.`,
    );
    return EXIT_USAGE;
  }
  // Bind once without reuse: fails if anything else holds the port.
  let port: number;
  try {
    const probe = Deno.listen({ hostname: options.listen.hostname, port: options.listen.port });
    port = probe.addr.port;
    probe.close();
  } catch (error) {
    console.error(
      `load_balancer: ${options.label ?? "--listen"} ${formatHostPort(options.listen)}: ` +
        describe(error),
    );
    return EXIT_USAGE;
  }
  const listen = formatHostPort({ hostname: options.listen.hostname, port });
  if (options.warning !== undefined) logDiagnostic(options.warning);
  const mainModule = options.mainModule ?? Deno.mainModule;
  const clock = options.clock ?? realClock;
  // Workers listen where the configuration says; only a port the kernel
  // chose (port 0) must be handed down, as the one they share.
  const workerArgs = options.listen.port === 0
    ? [...withoutListen(options.args), "--listen", listen, `--as-worker=${Deno.pid}`]
    : [...options.args, `--as-worker=${Deno.pid}`];

  const slots: Slot[] = Array.from({ length: options.workers }, (_, i) => ({
    id: i + 1,
    startedAt: 0,
    backoffMs: 0,
  }));
  let stopping = false;
  let fatal = false;
  let forced = false;
  let signals = 0;
  let listening = 0;
  const exited = Promise.withResolvers<void>();
  const running = () => slots.filter((slot) => slot.child !== undefined).length;

  const start = (slot: Slot) => {
    slot.restartTimer = undefined;
    slot.startedAt = clock.now();
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        V8_FLAGS,
        "--allow-net",
        "--unstable-net",
        ...(options.permissions ?? []),
        mainModule,
        ...workerArgs,
      ],
      stdin: "null",
      stdout: "inherit",
      stderr: "piped",
    }).spawn();
    slot.child = child;
    relay(child.stderr, slot.id, (line) => {
      if (readyAddress(line) !== undefined && ++listening === options.workers) {
        logDiagnostic(`${READY}${listen} with ${options.workers} workers`);
      }
    });
    child.status.then((status) => {
      slot.child = undefined;
      if (stopping || fatal) {
        if (running() === 0) exited.resolve();
        return;
      }
      const how = status.signal ? `signal ${status.signal}` : `code ${status.code}`;
      if (status.code === EXIT_USAGE) {
        logDiagnostic(`worker ${slot.id} could not start (${how}); stopping`);
        fatal = true;
        for (const other of slots) other.child?.kill("SIGKILL");
        if (running() === 0) exited.resolve();
        return;
      }
      const diedYoung = clock.now() - slot.startedAt < HEALTHY_AFTER_MS;
      slot.backoffMs = diedYoung
        ? nextBackoff(slot.backoffMs, RESTART_FIRST_MS, RESTART_MAX_MS)
        : RESTART_FIRST_MS;
      logDiagnostic(
        `worker ${slot.id} (pid ${child.pid}) exited with ${how}; restarting in ${slot.backoffMs} ms`,
      );
      slot.restartTimer = clock.setTimer(() => start(slot), slot.backoffMs);
    });
  };

  let firstSignalAt = 0;
  const onSignal = (signal: Deno.Signal) => {
    if (signals > 0 && clock.now() - firstSignalAt < SAME_REQUEST_MS) return;
    if (signals === 0) firstSignalAt = clock.now();
    signals++;
    stopping = true;
    for (const slot of slots) {
      clock.clearTimer(slot.restartTimer);
      slot.restartTimer = undefined;
      try {
        slot.child?.kill(signal);
      } catch {
        // It just exited.
      }
    }
    if (signals > 1) {
      logDiagnostic(`${signal} again: exiting now`);
      forced = true;
      exited.resolve();
      return;
    }
    logDiagnostic(`${signal}: passed to ${running()} worker(s); waiting for them`);
    if (running() === 0) exited.resolve();
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => onSignal(signal));
  }
  // A reload, or reopening the access log, is each worker's own: pass it on.
  // SIGUSR1 is never passed on: Deno would open a debugger on it.
  for (const signal of ["SIGHUP", "SIGUSR2"] as const) {
    Deno.addSignalListener(signal, () => {
      for (const slot of slots) {
        try {
          slot.child?.kill(signal);
        } catch {
          // It just exited.
        }
      }
    });
  }

  for (const slot of slots) start(slot);
  await exited.promise;
  if (forced) return 1;
  if (fatal) return EXIT_USAGE;
  logDiagnostic("all workers have exited");
  return 0;
}

/** Copies a worker's stderr to ours, line by line, naming the worker. */
async function relay(
  stream: ReadableStream<Uint8Array>,
  id: number,
  onLine: (line: string) => void,
): Promise<void> {
  try {
    await eachLine(stream, (line) => {
      console.error(`[worker ${id}] ${line}`);
      onLine(line);
    });
  } catch {
    // The worker is gone; its last words were relayed.
  }
}

// `args` without its `--listen ADDRESS` (or `--listen=ADDRESS`): a flag given
// twice is refused, so the port chosen is passed on in its place.
function withoutListen(args: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--listen") i++;
    else if (!args[i]!.startsWith("--listen=")) kept.push(args[i]!);
  }
  return kept;
}
