/**
 * Soak clients: one connection each, through the balancer to a soak backend,
 * every byte checked both ways (the protocol is in pattern.ts).
 *
 * Each ends with an {@linkcode Outcome}: a stream that completed is `ok` only
 * when every byte matched both ways and the backend saw the client's stream
 * end where it should; a stream cut short must end in a reset or a clean
 * close (`reset`, `closed`), never in silence (`hung`, when the deadline ran
 * out).
 *
 * @module
 */

import { writeAll } from "../io.ts";
import {
  checkPattern,
  fillPattern,
  formatHeader,
  replySeed,
  type StreamHeader,
} from "./pattern.ts";

/** How one soak connection ended. */
export type Outcome =
  /** every byte exact both ways, and the backend's verdict OK */
  | "ok"
  /** the client reset it on purpose, as asked */
  | "reset-sent"
  /** cut by a reset (a killed backend, a drain cut, …) */
  | "reset"
  /** cut by a clean close before the end */
  | "closed"
  /** the balancer refused the connection */
  | "refused"
  /** a byte differed, or the backend saw a different stream than was sent */
  | "corrupt"
  /** nothing happened until the deadline */
  | "hung";

/** What one soak connection did. */
export interface StreamResult {
  outcome: Outcome;
  /** The backend's id, once it answered. */
  backend?: string;
  /** When the backend accepted the connection (Unix ms), once it answered. */
  acceptedAt?: number;
  /** When the client started connecting (Unix ms). */
  startedAt: number;
  /** For `corrupt`: what differed. */
  detail?: string;
}

/** How a soak client behaves, beyond what it sends and asks for. */
export interface ClientPlan {
  /** Longest the whole connection may take before it counts as hung. */
  deadlineMs: number;
  /** Quiet time after the header, before the body (an idle holder). */
  idleMs?: number;
  /** After each 64 KiB read, this long a stall (a slow reader). */
  stallMs?: number;
  /** Close without reading the rest once this many answer bytes are in: the kernel resets it. */
  resetAfter?: number;
}

const CHUNK = 64 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs one connection to `port` and says how it ended. */
export async function runClient(
  port: number,
  header: StreamHeader,
  plan: ClientPlan,
): Promise<StreamResult> {
  const startedAt = Date.now();
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
  } catch {
    return { outcome: "refused", startedAt };
  }
  let hung = false;
  const deadline = setTimeout(() => {
    hung = true;
    close(conn);
  }, plan.deadlineMs);
  const reader = new Answer(header);
  try {
    await writeAll(conn, encoder.encode(formatHeader(header)));
    const [sent, answered] = await Promise.allSettled([
      send(conn, header, plan),
      read(conn, reader, plan),
    ]);
    if (answered.status === "rejected") throw answered.reason;
    if (answered.value === "reset-sent") return result("reset-sent");
    if (sent.status === "rejected") throw sent.reason;
    return reader.verdict === `OK ${header.up}`
      ? result("ok")
      : reader.problem !== undefined || reader.verdict?.startsWith("BAD")
      ? result("corrupt", reader.problem ?? `backend said ${reader.verdict}`)
      : result("closed");
  } catch (error) {
    if (hung) return result("hung");
    if (reader.problem !== undefined) return result("corrupt", reader.problem);
    return result(isReset(error) ? "reset" : "closed");
  } finally {
    clearTimeout(deadline);
    close(conn);
  }

  function result(outcome: Outcome, detail?: string): StreamResult {
    return {
      outcome,
      backend: reader.backend,
      acceptedAt: reader.acceptedAt,
      startedAt,
      ...(detail ? { detail } : {}),
    };
  }
}

async function send(conn: Deno.TcpConn, header: StreamHeader, plan: ClientPlan): Promise<void> {
  if (plan.idleMs) await sleep(plan.idleMs);
  const chunk = new Uint8Array(CHUNK);
  for (let sent = 0; sent < header.up; sent += CHUNK) {
    const piece = chunk.subarray(0, Math.min(CHUNK, header.up - sent));
    fillPattern(header.seed, sent, piece);
    await writeAll(conn, piece);
  }
  await conn.closeWrite();
}

async function read(
  conn: Deno.TcpConn,
  answer: Answer,
  plan: ClientPlan,
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
    if (plan.resetAfter !== undefined && answer.bodyBytes >= plan.resetAfter) {
      // Unread bytes are waiting: closing now makes the kernel send a reset.
      close(conn);
      return "reset-sent";
    }
    if (plan.stallMs) await sleep(plan.stallMs);
  }
}

/** The backend's answer as it arrives: `HELLO id`, the body, the verdict. */
class Answer {
  backend: string | undefined;
  acceptedAt: number | undefined;
  bodyBytes = 0;
  verdict: string | undefined;
  problem: string | undefined;
  #line = "";
  readonly #seed: number;
  readonly #down: number;

  constructor(header: StreamHeader) {
    this.#seed = replySeed(header.seed);
    this.#down = header.down;
  }

  get complete(): boolean {
    return this.verdict !== undefined;
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
    if (this.verdict !== undefined) {
      this.problem = "bytes after the verdict";
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

function isReset(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.ConnectionAborted;
}

function close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
