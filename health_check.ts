/**
 * Active health checks: a loop per backend that probes it and records the
 * result. The probe and the timer are injected, so the loop is tested
 * without sockets or waiting; `tcpProbe` and `sendExpectProbe` are the real
 * probes `--health-check` chooses between.
 *
 * @module
 */

import { canonicalHost, formatHostPort, type HostPort } from "./address.ts";
import { type Clock, realClock } from "./clock.ts";
import { closeQuietly, describe, isOutOfDescriptors } from "./errors.ts";
import { type Health, nextCheckIn } from "./health.ts";
import { writeAll } from "./io.ts";
import { checkAt, checkConn } from "./modules.ts";

/**
 * Probes one address; resolves with undefined when healthy, or why not.
 * Rejects when the probe could not be made at all (out of descriptors):
 * the checker then records nothing and tries again at the interval.
 */
export type Probe = (address: HostPort) => Promise<string | undefined>;

/** What the checker needs of a backend. */
export interface Checkable {
  readonly address: HostPort;
  readonly health: Health;
  /** A backend `disabled` by the admin API is not checked. */
  readonly adminState?: string;
  recordCheck(ok: boolean, reason?: string, durationMs?: number): void;
}

/** Options for {@linkcode HealthChecker}. */
export interface HealthCheckerOptions {
  backends: readonly Checkable[];
  probe: Probe;
  /** Time between checks of a healthy backend. @default {2000} */
  intervalMs?: number;
  /** The clock checks are scheduled and timed on. @default {realClock} */
  clock?: Clock;
}

/** Probes every backend on its own schedule until stopped. */
export class HealthChecker {
  readonly #backends: readonly Checkable[];
  readonly #probe: Probe;
  readonly #intervalMs: number;
  readonly #clock: Clock;
  readonly #pending = new Map<Checkable, number>();
  readonly #running = new Set<Promise<void>>();
  #stopped = false;

  constructor(options: HealthCheckerOptions) {
    this.#backends = options.backends;
    this.#probe = options.probe;
    this.#intervalMs = options.intervalMs ?? 2000;
    this.#clock = options.clock ?? realClock;
  }

  /** Checks every backend now, then on its schedule. */
  start(): void {
    for (const backend of this.#backends) this.#schedule(backend, 0);
  }

  /** Stops scheduling and waits for probes in progress to finish. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const id of this.#pending.values()) this.#clock.clearTimer(id);
    this.#pending.clear();
    await Promise.all(this.#running);
  }

  #schedule(backend: Checkable, ms: number): void {
    if (this.#stopped) return;
    const id = this.#clock.setTimer(
      () => {
        this.#pending.delete(backend);
        const run = this.#check(backend);
        this.#running.add(run);
        run.finally(() => this.#running.delete(run));
      },
      ms,
      { unref: true },
    );
    this.#pending.set(backend, id);
  }

  async #check(backend: Checkable): Promise<void> {
    if (backend.adminState === "disabled") {
      this.#schedule(backend, this.#intervalMs);
      return;
    }
    let reason: string | undefined;
    const started = this.#clock.now();
    try {
      reason = await this.#probe(backend.address);
    } catch (error) {
      if (isOutOfDescriptors(error)) {
        // No verdict: leave the backend's health as it is and look again later.
        if (!this.#stopped) this.#schedule(backend, this.#intervalMs);
        return;
      }
      reason = describe(error);
    }
    if (this.#stopped) return;
    backend.recordCheck(reason === undefined, reason, this.#clock.now() - started);
    this.#schedule(backend, nextCheckIn(backend.health, this.#clock.now(), this.#intervalMs));
  }
}

/** Healthy when a TCP connect succeeds within `timeoutMs`. */
export function tcpProbe(timeoutMs: number): Probe {
  return (address) =>
    withConnection(address, timeoutMs, () => Promise.resolve<string | undefined>(undefined));
}

/**
 * Healthy when, after `send` is written, the reply starts with `expect`
 * within `timeoutMs` (from connect to the last byte needed).
 */
export function sendExpectProbe(send: Uint8Array, expect: Uint8Array, timeoutMs: number): Probe {
  return (address) =>
    withConnection(address, timeoutMs, async (conn) => {
      await writeAll(conn, send);
      const reply = new Uint8Array(expect.length);
      let got = 0;
      while (got < expect.length) {
        const read = await conn.read(reply.subarray(got));
        if (read === null) return `closed after ${got} of ${expect.length} expected bytes`;
        got += read;
      }
      return reply.every((byte, i) => byte === expect[i])
        ? undefined
        : `reply did not start with the expected bytes (got ${hex(reply)})`;
    });
}

/**
 * Healthy when a datagram `send` to the backend's UDP port is answered,
 * within `timeoutMs`, by a datagram from it that starts with `expect`.
 * (UDP has no connection: silence and a closed port both fail, the latter
 * only by timing out.)
 */
export function udpProbe(send: Uint8Array, expect: Uint8Array, timeoutMs: number): Probe {
  return async (address) => {
    const wildcard = address.hostname.includes(":") ? "::" : "0.0.0.0";
    let conn: Deno.DatagramConn;
    try {
      conn = Deno.listenDatagram({ hostname: wildcard, port: 0, transport: "udp" });
    } catch (error) {
      return describe(error);
    }
    const timer = setTimeout(() => closeQuietly(conn), timeoutMs);
    try {
      await conn.send(send, { transport: "udp", ...address });
      const backend = canonicalHost(address.hostname);
      while (true) {
        const [reply, from] = await conn.receive();
        const peer = from as Deno.NetAddr;
        if (peer.port !== address.port || canonicalHost(peer.hostname) !== backend) continue;
        const head = reply.subarray(0, expect.length);
        if (head.length === expect.length && head.every((byte, i) => byte === expect[i])) {
          return undefined;
        }
        return `reply did not start with the expected bytes (got ${hex(head)})`;
      }
    } catch (error) {
      return (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted)
        ? `no reply within ${timeoutMs} ms`
        : describe(error);
    } finally {
      clearTimeout(timer);
      closeQuietly(conn);
    }
  };
}

/**
 * Healthy when the check module at `url` (loaded already) says so about a
 * connection to the backend, within `timeoutMs`.
 */
export function moduleProbe(
  url: string,
  timeoutMs: number,
  options: Record<string, unknown> = {},
): Probe {
  const frozen = Object.freeze({ ...options });
  return (address) =>
    withConnection(address, timeoutMs, async (conn, signal) => {
      const module = checkAt(url);
      let verdict: unknown;
      try {
        // Raced with the deadline: a check that awaits something else
        // forever must not hold the checker (or a reload, or a stop) up.
        verdict = await new Promise((resolve, reject) => {
          const late = () => reject(new Error("timed out"));
          if (signal.aborted) return late();
          signal.addEventListener("abort", late, { once: true });
          Promise.resolve().then(() =>
            module.check(checkConn(conn, signal), {
              backend: formatHostPort(address),
              signal,
              options: frozen,
            })
          ).then(resolve, reject).finally(() => signal.removeEventListener("abort", late));
        });
      } catch (error) {
        if (signal.aborted) throw error; // said as a timeout
        return `check threw: ${shown(error instanceof Error ? error.message : error)}`;
      }
      if (verdict === true || verdict === "up") return undefined;
      if (verdict === false || verdict === "down") return "the check said down";
      return `the check returned ${
        shown(verdict, JSON.stringify)
      }, not true, false, "up" or "down"`;
    });
}

// A value for a message, whatever it is (some cannot even be made a string).
function shown(value: unknown, as: (value: unknown) => string | undefined = String): string {
  try {
    return as(value) ?? String(value);
  } catch {
    return "a value that cannot be shown";
  }
}

async function withConnection(
  address: HostPort,
  timeoutMs: number,
  use: (conn: Deno.TcpConn, signal: AbortSignal) => Promise<string | undefined>,
): Promise<string | undefined> {
  const abort = new AbortController();
  let timedOut = false;
  let conn: Deno.TcpConn | undefined;
  const timer = setTimeout(() => {
    timedOut = true;
    abort.abort();
    closeQuietly(conn);
  }, timeoutMs);
  try {
    conn = await Deno.connect({ ...address, signal: abort.signal });
    return await use(conn, abort.signal);
  } catch (error) {
    if (!timedOut && isOutOfDescriptors(error)) throw error;
    return timedOut ? `no answer in ${timeoutMs} ms` : describe(error);
  } finally {
    clearTimeout(timer);
    closeQuietly(conn); // unless the timeout already did
  }
}

/** Lower-case hex of some bytes. */
export function hex(bytes: Uint8Array): string {
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** Bytes from hex; throws a RangeError naming the bad text. */
export function fromHex(text: string): Uint8Array {
  if (!/^([0-9a-fA-F]{2})+$/.test(text)) {
    throw new RangeError(`expected an even number of hex digits, got ${JSON.stringify(text)}`);
  }
  return new Uint8Array(text.match(/../g)!.map((pair) => parseInt(pair, 16)));
}
