/**
 * How events become log lines. Access lines (one per finished client
 * connection) go to stdout; diagnostics (start, stop, errors, backoff) go to
 * stderr, so the two can be collected apart.
 *
 * @module
 */

import type { AccessRecord, LoadBalancerEvent } from "./load_balancer.ts";

/** One access line: `key=value` fields in a fixed order, easy to grep and to split.
 *
 * `2026-11-26T10:00:00.000Z client=127.0.0.1:40000 backend=127.0.0.1:5001
 * bytes_in=6 bytes_out=17 duration_ms=2 end=client-fin` (on one line);
 * `backend=-` when no backend was reached.
 */
export function formatAccessLine(record: AccessRecord): string {
  return `${record.time.toISOString()} client=${record.client} backend=${
    record.backend ?? "-"
  } bytes_in=${record.bytesIn} bytes_out=${record.bytesOut} duration_ms=${
    Math.round(record.durationMs)
  } end=${record.end}`;
}

/** One diagnostic line for stderr, prefixed with the time. */
export function formatDiagnostic(message: string, time: Date = new Date()): string {
  return `${time.toISOString()} load_balancer: ${message}`;
}

/**
 * Collects lines and writes them together: at most `flushAfterMs` after the
 * first one, or as soon as `maxBytes` have gathered. One write per connection
 * would be a system call per connection on the busiest path. Call
 * {@linkcode LineWriter.flush} before exiting.
 */
export class LineWriter {
  readonly #write: (bytes: Uint8Array) => number;
  readonly #flushAfterMs: number;
  readonly #maxBytes: number;
  readonly #encoder = new TextEncoder();
  #pending = "";
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    write: (bytes: Uint8Array) => number,
    options: { flushAfterMs?: number; maxBytes?: number } = {},
  ) {
    this.#write = write;
    this.#flushAfterMs = options.flushAfterMs ?? 100;
    this.#maxBytes = options.maxBytes ?? 65536;
  }

  /** Queues one line (without its newline). */
  line(text: string): void {
    this.#pending += `${text}\n`;
    if (this.#pending.length >= this.#maxBytes) {
      this.flush();
    } else if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.flush(), this.#flushAfterMs);
      // A pending flush must not keep a finished process alive.
      Deno.unrefTimer(this.#timer as unknown as number);
    }
  }

  /** Writes everything queued, now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pending === "") return;
    const bytes = this.#encoder.encode(this.#pending);
    this.#pending = "";
    let written = 0;
    while (written < bytes.length) written += this.#write(bytes.subarray(written));
  }
}

/** Access lines on their way to stdout. */
export const accessLog = new LineWriter((bytes) => Deno.stdout.writeSync(bytes));

/** Writes each event where it belongs: access lines to stdout, the rest to stderr. */
export function logEvent(event: LoadBalancerEvent): void {
  switch (event.type) {
    case "connection":
      accessLog.line(formatAccessLine(event.record));
      break;
    case "connect-error":
      console.error(
        formatDiagnostic(
          `backend ${event.backend} unreachable for client ${event.client}: ${event.reason}`,
        ),
      );
      break;
    case "accept-error":
      console.error(formatDiagnostic(
        `accept failed: ${event.reason}; backing off from ${event.backoffMs} ms ` +
          `(said once until accepting works again)`,
      ));
      break;
    case "accept-recovered":
      console.error(formatDiagnostic(`accepting again after ${event.failures} failed accept(s)`));
      break;
    case "internal-error":
      console.error(formatDiagnostic(
        `internal error on connection from ${event.client}, closed it: ${event.reason}`,
      ));
      break;
  }
}
