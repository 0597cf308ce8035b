/**
 * How events become log lines. Access lines (one per finished client
 * connection) go to stdout; diagnostics (start, stop, errors, backoff) go to
 * stderr, so the two can be collected apart.
 *
 * @module
 */

import { type Clock, realClock } from "./clock.ts";
import type { AccessRecord, LoadBalancerEvent } from "./events.ts";

/** The two access log formats. */
export type LogFormat = "text" | "json";

// Date.prototype.toISOString() costs about a microsecond in Deno 2.9.6, as
// much as the rest of an access line; within one second only the
// milliseconds change, so the rest of the text is kept.
let isoSecond = NaN;
let isoPrefix = "";

/** `time` as `toISOString()` writes it (UTC, milliseconds, `Z`), cheaply. */
export function isoTime(time: Date): string {
  const ms = time.getTime();
  const second = Math.floor(ms / 1000);
  if (second !== isoSecond) {
    const text = time.toISOString();
    // Years past 9999 (or before 0) are written with a sign and six digits: leave those alone.
    if (text.length !== 24) return text;
    isoSecond = second;
    isoPrefix = text.slice(0, 20);
  }
  const millis = ms - second * 1000;
  return `${isoPrefix}${millis < 10 ? "00" : millis < 100 ? "0" : ""}${millis}Z`;
}

// A value that needs no quotes: printable ASCII but space, '"', '=' and '\'.
const BARE = /^[!#-<>-[\]-~]+$/;
// What JSON.stringify leaves raw that a terminal or a log reader may still
// take as a control or a line break: DEL, the C1 controls, U+2028 and U+2029.
const RAW_CONTROLS = /[\u007f-\u009f\u2028\u2029]/g;
const escapeControl = (char: string) => `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`;

// A text field's value: as it is when plain (names and addresses always
// are), else JSON-quoted, so that no value can start a line or a field.
function field(text: string): string {
  return BARE.test(text) && text !== "-" ? text : quoteJson(text);
}

// A JSON string as JSON.stringify writes it, with the controls above escaped too.
function quoteJson(text: string): string {
  return JSON.stringify(text).replace(RAW_CONTROLS, escapeControl);
}

/** One access line: `key=value` fields in a fixed order, easy to grep and to split.
 *
 * `2026-11-26T10:00:00.000Z listener=web client=127.0.0.1:40000
 * backend=127.0.0.1:5001 bytes_in=6 bytes_out=17 duration_ms=2
 * end=client-fin` (on one line); `backend=-` when no backend was reached. A
 * value with a space, a quote, `=`, `\` or anything but printable ASCII is
 * written as a JSON string (`listener="a b"`).
 */
export function formatAccessLine(record: AccessRecord): string {
  return `${isoTime(record.time)} listener=${field(record.listener)} ` +
    `client=${field(record.client)} ` +
    `backend=${record.backend === undefined ? "-" : field(record.backend)} ` +
    `bytes_in=${record.bytesIn} bytes_out=${record.bytesOut} ` +
    `duration_ms=${Math.round(record.durationMs)} end=${field(record.end)}`;
}

/**
 * The same fields as one JSON object; `backend` is null when none was
 * reached. DEL, C1 controls, U+2028 and U+2029 are escaped as well.
 */
export function formatAccessJson(record: AccessRecord): string {
  // Written out field by field, the way JSON.stringify would write the
  // object: a line per connection, and the object and its stringify cost
  // the main thread about twice as much.
  const backend = record.backend === undefined ? "null" : jsonString(record.backend);
  return `{"time":"${isoTime(record.time)}","listener":${jsonString(record.listener)},` +
    `"client":${jsonString(record.client)},"backend":${backend},` +
    `"bytes_in":${jsonNumber(record.bytesIn)},"bytes_out":${jsonNumber(record.bytesOut)},` +
    `"duration_ms":${jsonNumber(Math.round(record.durationMs))},"end":${jsonString(record.end)}}`;
}

// A number as JSON.stringify writes it: null when not finite.
function jsonNumber(value: number): string {
  return Number.isFinite(value) ? `${value}` : "null";
}

// A JSON string: a plain value (no quote, backslash or control) as it is,
// in quotes; anything else as JSON.stringify writes it, with the controls
// above escaped too.
function jsonString(text: string): string {
  return BARE.test(text) ? `"${text}"` : quoteJson(text);
}

/** One diagnostic line for stderr, prefixed with the time. */
export function formatDiagnostic(message: string, time: Date = new Date()): string {
  return `${time.toISOString()} load_balancer: ${message}`;
}

/**
 * Collects lines and writes them together: at most `flushAfterMs` after the
 * first one, or as soon as `maxBytes` have gathered. One write per connection
 * would be a system call per connection on the busiest path. Each write holds
 * whole lines and at most `maxBytes` (unless one line is longer): writes of
 * up to 4 KiB to a pipe are atomic, so several processes sharing one stdout
 * never mix their lines. Call {@linkcode LineWriter.flush} before exiting.
 */
export class LineWriter {
  readonly #write: (bytes: Uint8Array) => number;
  readonly #flushAfterMs: number;
  readonly #maxBytes: number;
  readonly #encoder = new TextEncoder();
  readonly #clock: Clock;
  #lines: string[] = [];
  #length = 0;
  #timer: number | undefined;

  constructor(
    write: (bytes: Uint8Array) => number,
    options: { flushAfterMs?: number; maxBytes?: number; clock?: Clock } = {},
  ) {
    this.#write = write;
    this.#flushAfterMs = options.flushAfterMs ?? 100;
    this.#maxBytes = options.maxBytes ?? 4096;
    this.#clock = options.clock ?? realClock;
  }

  /** Queues one line (without its newline). */
  line(text: string): void {
    this.#lines.push(text);
    this.#length += text.length + 1;
    if (this.#length >= this.#maxBytes) {
      this.flush();
    } else if (this.#timer === undefined) {
      // A pending flush must not keep a finished process alive.
      this.#timer = this.#clock.setTimer(() => this.flush(), this.#flushAfterMs, { unref: true });
    }
  }

  /** Writes everything queued, now. */
  flush(): void {
    this.#clock.clearTimer(this.#timer);
    this.#timer = undefined;
    let chunk = "";
    for (const line of this.#lines) {
      // Lengths are counted in UTF-16 units: exact for the ASCII we log.
      if (chunk !== "" && chunk.length + line.length + 1 > this.#maxBytes) {
        this.#writeAll(chunk);
        chunk = "";
      }
      chunk += `${line}\n`;
    }
    this.#lines = [];
    this.#length = 0;
    if (chunk !== "") this.#writeAll(chunk);
  }

  #writeAll(text: string): void {
    const bytes = this.#encoder.encode(text);
    let written = 0;
    while (written < bytes.length) written += this.#write(bytes.subarray(written));
  }
}

/**
 * Where access lines go: stdout, or a file opened for appending, which
 * {@linkcode AccessLog.reopen} closes and opens again (after log rotation
 * moved it; SIGUSR1).
 */
export class AccessLog {
  #file: Deno.FsFile | undefined;
  readonly #path: string | undefined;
  readonly #writer: LineWriter;
  /** The format lines are written in. */
  format: LogFormat;

  constructor(options: { path?: string; format?: LogFormat } = {}) {
    this.#path = options.path;
    this.#file = this.#path === undefined ? undefined : AccessLog.#open(this.#path);
    this.#writer = new LineWriter((bytes) => (this.#file ?? Deno.stdout).writeSync(bytes));
    this.format = options.format ??
      (this.#file === undefined && Deno.stdout.isTerminal() ? "text" : "json");
  }

  static #open(path: string): Deno.FsFile {
    return Deno.openSync(path, { append: true, create: true });
  }

  /** Queues the line for one finished connection. */
  write(record: AccessRecord): void {
    this.#writer.line(this.format === "json" ? formatAccessJson(record) : formatAccessLine(record));
  }

  /** Writes everything queued, now. */
  flush(): void {
    this.#writer.flush();
  }

  /** Writes what is queued and closes the file, if any. */
  close(): void {
    this.flush();
    this.#file?.close();
    this.#file = undefined;
  }

  /** Closes the file and opens the same path again; a no-op for stdout. */
  reopen(): void {
    if (this.#path === undefined) return;
    this.flush();
    const next = AccessLog.#open(this.#path);
    this.#file?.close();
    this.#file = next;
  }
}

/** Writes one diagnostic line to stderr. A stderr nobody reads any more
 * (a supervisor that died) must not stop the balancer, so failures are dropped. */
export function logDiagnostic(message: string): void {
  try {
    console.error(formatDiagnostic(message));
  } catch {
    // Nowhere left to say it.
  }
}

/**
 * The event sink the entry point hands to listeners and pools: access lines
 * to `accessLog`, the rest to stderr.
 */
export function eventLogger(accessLog: AccessLog): (event: LoadBalancerEvent) => void {
  return (event) => logEvent(event, accessLog);
}

function logEvent(event: LoadBalancerEvent, accessLog: AccessLog): void {
  switch (event.type) {
    case "connection":
      accessLog.write(event.record);
      break;
    case "connect-error":
      logDiagnostic(
        `backend ${event.backend} unreachable for client ${event.client}: ${event.reason}`,
      );
      break;
    case "descriptor-shortage":
      logDiagnostic(
        `no descriptor to connect client ${event.client} to backend ${event.backend}: ` +
          `${event.reason}; trying again in ${Math.round(event.waitMs)} ms`,
      );
      break;
    case "accept-error":
      logDiagnostic(
        `accept failed: ${event.reason}; backing off from ${event.backoffMs} ms ` +
          `(said once until accepting works again)`,
      );
      break;
    case "accept-recovered":
      logDiagnostic(`accepting again after ${event.failures} failed accept(s)`);
      break;
    case "backend-state":
      logDiagnostic(`backend ${event.backend} ${event.from} -> ${event.to}: ${event.why}`);
      break;
    case "policy-error":
      if (event.say) {
        logDiagnostic(
          `pool ${event.pool}: policy module: ${event.problem}; such attempts go round robin ` +
            `(said at most once a second; lb_policy_errors_total counts each)`,
        );
      }
      break;
    case "rejected":
      logDiagnostic(
        `listener ${event.listener}: closed ${event.count} client(s) before any dial: ` +
          `${event.reason}; the last, ${event.client}: ${event.detail}`,
      );
      break;
    case "internal-error":
      logDiagnostic(
        `internal error on connection from ${event.client}, closed it: ${event.reason}`,
      );
      break;
  }
}
