/**
 * Backends from etcd v3, watched: every key under a prefix holds one backend
 * as JSON, `{"address": "127.0.0.1:5001", "weight": 2, "backup": false}`.
 *
 * It speaks etcd's own v3 JSON gateway over `fetch` (`/v3/kv/range` once,
 * then one long `/v3/watch` stream from the revision after it), not an npm
 * client: the maintained ones (`etcd3`) stand on `@grpc/grpc-js` and its
 * HTTP/2 internals, which is a large surface to trust under Deno's Node
 * layer for two calls that plain HTTP gives. A put or delete reaches the
 * balancer as soon as etcd streams it.
 *
 * When etcd cannot be reached, or the watch ends, it reads the whole prefix
 * again after a backoff and watches on from there; meanwhile the last good
 * set stays. A key whose value is not a usable backend is left out and
 * counted; a key that had a good value keeps it until the next good one.
 *
 * @module
 */

import { type Clock, nextBackoff, sleep } from "./clock.ts";
import { checkBackend } from "./config.ts";
import type { Discovered, DiscoverySource, SourceReport } from "./discovery.ts";
import { describe } from "./errors.ts";

const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 2000;

/** Where etcd is, and which keys to watch. */
export interface EtcdSettings {
  /** `http://127.0.0.1:2379` */
  endpoint: string;
  /** `/lb/pools/api/` */
  prefix: string;
}

/** Reads a prefix in etcd, then follows its changes. */
export class EtcdSource implements DiscoverySource {
  readonly kind = "etcd";
  readonly describe: string;
  readonly #url: string;
  readonly #prefix: Uint8Array;
  readonly #clock: Clock;
  readonly #stop = new AbortController();
  #running: Promise<void> | undefined;
  // The good value of each key, and the keys whose latest value was not.
  readonly #values = new Map<string, Discovered>();
  readonly #broken = new Map<string, string>();

  constructor(settings: EtcdSettings, options: { clock: Clock }) {
    this.#url = settings.endpoint.replace(/\/$/, "");
    this.#prefix = new TextEncoder().encode(settings.prefix);
    this.#clock = options.clock;
    this.describe = `etcd ${this.#url} ${settings.prefix}`;
  }

  start(report: (report: SourceReport) => void): void {
    this.#running ??= this.#follow(report);
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#running;
  }

  async #follow(report: (report: SourceReport) => void): Promise<void> {
    const signal = this.#stop.signal;
    let backoff = 0;
    while (!signal.aborted) {
      try {
        const revision = await this.#range();
        if (signal.aborted) break;
        report(this.#report());
        backoff = 0;
        // A watch that ends cleanly (etcd restarting, a proxy's idle timeout)
        // is followed by a new read, after a pause: never a tight loop.
        await this.#watch(revision + 1, () => report(this.#report()));
        await sleep(this.#clock, RETRY_FIRST_MS, signal);
      } catch (error) {
        if (signal.aborted) break;
        report({ error: problemOf(error) });
        backoff = nextBackoff(backoff, RETRY_FIRST_MS, RETRY_MAX_MS);
        await sleep(this.#clock, backoff, signal);
      }
    }
  }

  #report(): SourceReport {
    const backends = [...this.#values.values()];
    if (this.#broken.size === 0) return { backends };
    // The first unusable key only: the words stay the same while it stays
    // broken, however many others come and go.
    const [key, problem] = this.#broken.entries().next().value!;
    return { backends, error: `key ${key}: ${problem}` };
  }

  // Reads every key under the prefix; resolves with the revision it saw.
  async #range(): Promise<number> {
    const answer = await this.#post("/v3/kv/range", {
      key: base64(this.#prefix),
      range_end: base64(prefixEnd(this.#prefix)),
    }) as { header?: { revision?: string }; kvs?: { key: string; value?: string }[] };
    // Read afresh, but a key whose value is broken now keeps its last good one.
    const before = new Map(this.#values);
    this.#values.clear();
    this.#broken.clear();
    for (const kv of answer.kvs ?? []) {
      this.#put(kv.key, kv.value ?? "");
      const key = text(kv.key);
      const kept = before.get(key);
      if (this.#broken.has(key) && kept !== undefined) this.#values.set(key, kept);
    }
    return Number(answer.header?.revision ?? 0);
  }

  // Follows changes from `revision` until the stream ends or fails.
  async #watch(revision: number, changed: () => void): Promise<void> {
    const response = await fetch(`${this.#url}/v3/watch`, {
      method: "POST",
      body: JSON.stringify({
        create_request: {
          key: base64(this.#prefix),
          range_end: base64(prefixEnd(this.#prefix)),
          start_revision: String(revision),
        },
      }),
      signal: this.#stop.signal,
    });
    if (!response.ok || response.body === null) {
      await response.body?.cancel();
      throw new Error(`watch: HTTP ${response.status}`);
    }
    // The gateway writes one JSON object per line.
    let pending = "";
    const decoder = new TextDecoder();
    for await (const chunk of response.body) {
      pending += decoder.decode(chunk, { stream: true });
      let end: number;
      while ((end = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, end).trim();
        pending = pending.slice(end + 1);
        if (line === "") continue;
        const message = JSON.parse(line) as {
          result?: {
            canceled?: boolean;
            compact_revision?: string;
            events?: { type?: string; kv: { key: string; value?: string } }[];
          };
          error?: { message?: string };
        };
        const result = message.result;
        if (message.error !== undefined || result === undefined) {
          throw new Error(`watch: ${message.error?.message ?? line.slice(0, 200)}`);
        }
        if (result.canceled || (result.compact_revision ?? "0") !== "0") {
          throw new Error("watch: cancelled by etcd (compacted past it)");
        }
        if (result.events === undefined || result.events.length === 0) continue;
        for (const event of result.events) {
          // A put has no type in the gateway's JSON: it is the zero value.
          if (event.type === "DELETE") {
            const key = text(event.kv.key);
            this.#values.delete(key);
            this.#broken.delete(key);
          } else {
            this.#put(event.kv.key, event.kv.value ?? "");
          }
        }
        changed();
      }
    }
  }

  #put(rawKey: string, rawValue: string): void {
    const key = text(rawKey);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text(rawValue));
    } catch {
      this.#broken.set(key, `not JSON: ${JSON.stringify(text(rawValue).slice(0, 60))}`);
      return;
    }
    const checked = checkBackend(parsed);
    if ("problem" in checked) {
      this.#broken.set(key, checked.problem);
      return;
    }
    this.#broken.delete(key);
    const { address, weight, backup } = checked.backend;
    this.#values.set(key, { address, weight, backup });
  }

  async #post(path: string, body: unknown): Promise<unknown> {
    const response = await fetch(`${this.#url}${path}`, {
      method: "POST",
      body: JSON.stringify(body),
      signal: AbortSignal.any([this.#stop.signal, AbortSignal.timeout(5000)]),
    });
    const answer = await response.text();
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${answer.slice(0, 200)}`);
    return JSON.parse(answer);
  }
}

// The end of a prefix's range: the prefix with its last byte one higher
// (bytes of 0xff dropped first), as etcd's clients compute it.
function prefixEnd(prefix: Uint8Array): Uint8Array {
  const end = prefix.slice();
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  return new Uint8Array([0]); // every key
}

function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

function text(encoded: string): string {
  return new TextDecoder().decode(Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0)));
}

// What went wrong talking to etcd, in words that stay the same while it
// stays wrong (so it is said once): fetch hides the cause one level down.
function problemOf(error: unknown): string {
  if (error instanceof TypeError && error.cause instanceof Error) {
    const cause = error.cause.message;
    const reason = /connection refused/i.test(cause)
      ? "connection refused"
      : /timed? ?out/i.test(cause)
      ? "timed out"
      : /reset|broken pipe|closed/i.test(cause)
      ? "connection lost"
      : cause;
    return `cannot reach etcd: ${reason}`;
  }
  if (error instanceof DOMException && error.name === "TimeoutError") {
    return "cannot reach etcd: no answer in 5 s";
  }
  return `etcd: ${describe(error)}`;
}
