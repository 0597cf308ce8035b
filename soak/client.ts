/**
 * Soak clients: one connection each, through the balancer to a soak backend,
 * every byte checked both ways (the protocol is in pattern.ts).
 *
 * Each ends with an {@linkcode Outcome}: a stream that completed is `ok` only
 * when every byte matched both ways and the backend saw the client's stream
 * end where it should (for a `backend-first` stream, the backend says that
 * only on its DONE line, which the soak joins in later); a stream cut short
 * must end in a reset or a clean close (`reset`, `closed`), never in silence
 * (`hung`, when the deadline ran out).
 *
 * @module
 */

import { realClock, sleep } from "../clock.ts";
import { closeQuietly } from "../errors.ts";
import { writeAll } from "../io.ts";
import {
  checkPattern,
  fillPattern,
  formatHeader,
  replySeed,
  type StreamHeader,
} from "./pattern.ts";

/** How one soak connection ended, as the client saw it. */
export type Outcome =
  /** every byte exact both ways, and the backend's verdict OK */
  | "ok"
  /** the client reset it on purpose, as asked */
  | "reset-sent"
  /** cut by a reset (a killed backend, a drain cut, …), the connect included */
  | "reset"
  /** cut by a clean close before the end */
  | "closed"
  /** the connect was refused, or failed otherwise than by a reset (see the detail) */
  | "refused"
  /** a byte differed, or the backend saw a different stream than was sent */
  | "corrupt"
  /** nothing happened until the deadline (the connect included) */
  | "hung";

/** What one soak connection did. */
export interface StreamResult {
  outcome: Outcome;
  /** The stream's seed, which the backend's DONE line names. */
  seed: number;
  /** The bytes the client sent (or meant to). */
  up: number;
  /** Whether the backend was asked to finish first. */
  backendFirst: boolean;
  /** The backend's id, once it answered. */
  backend?: string;
  /** When the backend accepted the connection (Unix ms), once it answered. */
  acceptedAt?: number;
  /** When the client started connecting (Unix ms). */
  startedAt: number;
  /** When the client was done with it (Unix ms). */
  endedAt: number;
  /** For `corrupt`, `refused` and a reset while connecting: what went wrong. */
  detail?: string;
}

/** How a soak client behaves, beyond what it sends and asks for. */
export interface ClientPlan {
  /** Longest the whole connection may take, connecting included, before it counts as hung. */
  deadlineMs: number;
  /** Quiet time after the header, before the body (an idle holder). @default 0 */
  idleMs?: number;
  /** Sends no body byte until this settles (a connection held open across a signal). */
  holdUntil?: Promise<unknown>;
  /**
   * A slow reader: after every read (each up to 64 KiB), this long a stall
   * before the next. @default 0
   */
  stallMs?: number;
  /**
   * Close without reading the rest once this many answer bytes are in, so
   * that the balancer sees a reset. @default never
   */
  resetAfter?: number;
  /** Ends the connection early (the soak was interrupted); it then counts as closed. */
  signal?: AbortSignal;
}

const CHUNK = 64 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Runs one connection to `port` and says how it ended. */
export async function runClient(
  port: number,
  header: StreamHeader,
  plan: ClientPlan,
): Promise<StreamResult> {
  const startedAt = Date.now();
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), plan.deadlineMs);
  const stop = plan.signal === undefined
    ? deadline.signal
    : AbortSignal.any([deadline.signal, plan.signal]);
  const reader = new Answer(header);
  const result = (outcome: Outcome, detail?: string): StreamResult => ({
    outcome,
    seed: header.seed,
    up: header.up,
    backendFirst: header.backendFirst ?? false,
    backend: reader.backend,
    acceptedAt: reader.acceptedAt,
    startedAt,
    endedAt: Date.now(),
    ...(detail ? { detail } : {}),
  });
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port, signal: stop });
  } catch (error) {
    clearTimeout(timer);
    if (deadline.signal.aborted) return result("hung");
    // Reset as it opened: the balancer took it and passed on a reset at
    // once (its backend died as it was dialled); not a refusal.
    if (isReset(error)) return result("reset", `while connecting: ${error}`);
    return result("refused", String(error));
  }
  // Past the connect, a deadline or an interruption closes the socket: every
  // read and write then fails, and the outcome says which it was.
  const closeOnStop = () => closeQuietly(conn);
  stop.addEventListener("abort", closeOnStop);
  try {
    await writeAll(conn, encoder.encode(formatHeader(header)));
    const answerEnded = Promise.withResolvers<void>();
    const reading = read(conn, reader, plan, stop).finally(() => answerEnded.resolve());
    const [sent, answered] = await Promise.allSettled([
      send(conn, header, plan, stop, reader, answerEnded.promise),
      reading,
    ]);
    if (answered.status === "rejected") throw answered.reason;
    if (answered.value === "reset-sent") {
      // The whole stream was handed over first (allSettled waited for it),
      // so the backend's view of it is whole; unread answer bytes are
      // waiting, and closing now makes the kernel send a reset.
      closeQuietly(conn);
      return result("reset-sent");
    }
    if (sent.status === "rejected") throw sent.reason;
    if (header.backendFirst) return result("ok");
    return reader.verdict === `OK ${header.up}`
      ? result("ok")
      : reader.problem !== undefined || reader.verdict?.startsWith("BAD")
      ? result("corrupt", reader.problem ?? `backend said ${reader.verdict}`)
      : result("closed");
  } catch (error) {
    if (deadline.signal.aborted) return result("hung");
    if (reader.problem !== undefined) return result("corrupt", reader.problem);
    return result(isReset(error) ? "reset" : "closed");
  } finally {
    clearTimeout(timer);
    stop.removeEventListener("abort", closeOnStop);
    closeQuietly(conn);
  }
}

// Sends the body and finishes the stream. A backend-first stream holds back
// its second half until the backend's stream has ended.
async function send(
  conn: Deno.TcpConn,
  header: StreamHeader,
  plan: ClientPlan,
  stop: AbortSignal,
  answer: Answer,
  answerEnded: Promise<void>,
): Promise<void> {
  if (plan.idleMs) await sleep(realClock, plan.idleMs, stop);
  if (plan.holdUntil) await settledOrAborted(plan.holdUntil, stop);
  const heldBack = header.backendFirst ? Math.floor(header.up / 2) : 0;
  const chunk = new Uint8Array(CHUNK);
  let sent = 0;
  const sendUpTo = async (end: number) => {
    while (sent < end) {
      const piece = chunk.subarray(0, Math.min(CHUNK, end - sent));
      fillPattern(header.seed, sent, piece);
      await writeAll(conn, piece);
      sent += piece.length;
    }
  };
  await sendUpTo(header.up - heldBack);
  if (header.backendFirst) {
    await answerEnded;
    if (!answer.complete) throw new Error("the backend's stream did not end whole");
  }
  await sendUpTo(header.up);
  await conn.closeWrite();
}

async function read(
  conn: Deno.TcpConn,
  answer: Answer,
  plan: ClientPlan,
  stop: AbortSignal,
): Promise<"done" | "reset-sent"> {
  const buffer = new Uint8Array(CHUNK);
  while (true) {
    const n = await conn.read(buffer);
    if (n === null) {
      if (!answer.complete) throw new Deno.errors.UnexpectedEof("closed before the end");
      return "done";
    }
    answer.take(buffer.subarray(0, n));
    if (answer.problem !== undefined) throw new Error(answer.problem);
    if (plan.resetAfter !== undefined && answer.bodyBytes >= plan.resetAfter) return "reset-sent";
    if (plan.stallMs) await sleep(realClock, plan.stallMs, stop);
  }
}

/** The backend's answer as it arrives: `HELLO id`, the body, the verdict (unless backend-first). */
class Answer {
  backend: string | undefined;
  acceptedAt: number | undefined;
  bodyBytes = 0;
  verdict: string | undefined;
  problem: string | undefined;
  #line = "";
  readonly #seed: number;
  readonly #down: number;
  readonly #withVerdict: boolean;

  constructor(header: StreamHeader) {
    this.#seed = replySeed(header.seed);
    this.#down = header.down;
    this.#withVerdict = !header.backendFirst;
  }

  get complete(): boolean {
    return this.#withVerdict
      ? this.verdict !== undefined
      : this.backend !== undefined && this.bodyBytes === this.#down;
  }

  take(bytes: Uint8Array): void {
    let at = 0;
    if (this.backend === undefined) {
      at = this.#lineFrom(bytes, 0);
      if (at < 0) return;
      const match = /^HELLO (\S+) (\d+)$/.exec(this.#line);
      if (match === null) {
        this.problem = `expected HELLO, got ${JSON.stringify(this.#line.slice(0, 40))}`;
        return;
      }
      this.backend = match[1];
      this.acceptedAt = Number(match[2]);
      this.#line = "";
    }
    const body = bytes.subarray(at, at + (this.#down - this.bodyBytes));
    const badAt = checkPattern(this.#seed, this.bodyBytes, body);
    if (badAt >= 0) {
      this.problem = `answer byte ${badAt} differs`;
      return;
    }
    this.bodyBytes += body.length;
    at += body.length;
    if (at >= bytes.length) return;
    if (this.verdict !== undefined || !this.#withVerdict) {
      this.problem = `bytes after the ${this.#withVerdict ? "verdict" : "answer"}`;
      return;
    }
    if (this.#lineFrom(bytes, at) >= 0) {
      this.verdict = this.#line;
      this.#line = "";
    }
  }

  // Gathers a line; returns the offset after its newline, or -1 if not yet whole.
  #lineFrom(bytes: Uint8Array, from: number): number {
    const newline = bytes.indexOf(10, from);
    const end = newline < 0 ? bytes.length : newline;
    this.#line += decoder.decode(bytes.subarray(from, end));
    if (this.#line.length > 128) this.problem = "a line over 128 bytes";
    return newline < 0 ? -1 : newline + 1;
  }
}

// Resolves once `promise` settles or `signal` aborts, whichever comes first.
function settledOrAborted(promise: Promise<unknown>, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      signal.removeEventListener("abort", done);
      resolve();
    };
    signal.addEventListener("abort", done, { once: true });
    promise.then(done, done);
  });
}

function isReset(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.ConnectionAborted;
}
