/**
 * Loading the modules a config names (programmable.ts has their contracts),
 * and fitting them to the balancer: a policy as a {@linkcode Strategy}, a
 * health check as a {@linkcode Probe}, a matcher looked up by the front door.
 *
 * A module is named by a path relative to the config file. It is imported
 * by a `file:` URL that carries a hash of its text (`…/policy.ts?v=3f2a…`):
 * a reload with the file unchanged reuses what is loaded, and one with new
 * text imports the new code beside the old, which connections already
 * placed never notice. (Modules it imports in turn are loaded once per
 * process: change the one the config names to pick them up.) Each thread
 * imports what its config names before it takes the config, so a policy or
 * matcher is called without waiting, in the thread that moves the bytes.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import {
  type Candidate,
  createStrategy,
  eligible,
  type PickContext as Attempt,
  RoundRobin,
  type Strategy,
  type StrategyName,
} from "./balancer.ts";
import type {
  BackendView,
  CheckConn,
  CheckModule,
  MatchModule,
  PickContext,
  PolicyModule,
} from "./programmable.ts";

/** What a module must export, by kind. */
const EXPORTS = { policy: "pick", check: "check", matcher: "match" } as const;
/** The kinds of module a config may name. */
export type ModuleKind = keyof typeof EXPORTS;

// Every module imported in this thread, by URL (with its version).
const loaded = new Map<string, Record<string, unknown>>();

/**
 * The URL a config's module path is imported by: absolute, relative to
 * `base` (the config file's folder), with the hash of its text.
 * @throws {Error} when it cannot be read
 */
export async function moduleUrl(path: string, base: string): Promise<string> {
  const file = resolve(base, path);
  let text: Uint8Array;
  try {
    text = await Deno.readFile(file);
  } catch (error) {
    throw new Error(`cannot read ${file}: ${(error as Error).message}`);
  }
  const version = createHash("sha256").update(text).digest("hex").slice(0, 16);
  return `${pathToFileURL(file).href}?v=${version}`;
}

/** The folder a config file's module paths are relative to. */
export function moduleBase(configFile: string | undefined): string {
  return configFile === undefined ? Deno.cwd() : dirname(resolve(configFile));
}

/**
 * Imports `url` and checks it exports what a `kind` module must; once per
 * URL per thread. @throws {Error} saying what is wrong
 */
export async function loadModule(url: string, kind: ModuleKind): Promise<void> {
  if (loaded.has(url)) return;
  let module: Record<string, unknown>;
  try {
    module = await import(url);
  } catch (error) {
    // The first lines say what and where (a syntax error's line and column).
    const lines = String((error as Error)?.message ?? error).split("\n").map((l) => l.trim());
    throw new Error(
      `cannot load it: ${lines.filter(Boolean).slice(0, 3).join(" ").slice(0, 300)}`,
    );
  }
  const name = EXPORTS[kind];
  if (typeof module[name] !== "function") {
    const exported = name in module
      ? `its ${name} is a ${typeof module[name]}`
      : `it exports ${Object.keys(module).join(", ") || "nothing"}`;
    throw new Error(`a ${kind} module must export function ${name}(); ${exported}`);
  }
  // A policy or matcher is called per connection and must answer at once.
  const exported = module[name] as { constructor?: { name?: string } };
  if (kind !== "check" && exported.constructor?.name === "AsyncFunction") {
    throw new Error(`${name}() is async: a ${kind} must decide at once, without await`);
  }
  if (kind === "policy" && module.init !== undefined && typeof module.init !== "function") {
    throw new Error("init, when exported, must be a function");
  }
  loaded.set(url, module);
}

function get<T>(url: string): T {
  const module = loaded.get(url);
  if (module === undefined) throw new Error(`module ${url} was not loaded first`);
  return module as T;
}

/** The matcher at `url`, loaded already. */
export function matcherAt(url: string): MatchModule {
  return get<MatchModule>(url);
}

/** The check at `url`, loaded already. */
export function checkAt(url: string): CheckModule {
  return get<CheckModule>(url);
}

/** What a policy may see of a backend: a candidate with a state and a connect time. */
export interface PolicyCandidate extends Candidate {
  readonly state: "up" | "down" | "draining" | "disabled";
  readonly connectMs: number | undefined;
}

// A policy module's state object for a pool, kept per thread across reloads
// (by pool and module file), and the versions of the module handed it.
const states = new Map<string, { state: Record<string, unknown>; inited: Set<string> }>();

/**
 * Told of each policy error: `say` is true at most once a second per pool
 * (for the log); every one counts.
 */
export type PolicyErrorSink = (problem: string, say: boolean) => void;

/** A pool's `balance`: a built-in strategy, or a policy module (loaded already). */
export function strategyFor<B extends PolicyCandidate>(
  balance: StrategyName | { readonly module: string; readonly options?: Record<string, unknown> },
  pool: string,
  onError: PolicyErrorSink,
  now: () => number,
): Strategy<B> {
  if (typeof balance === "string") return createStrategy<B>(balance);
  return new ModulePolicy<B>(balance.module, pool, onError, now, balance.options ?? {});
}

/**
 * A policy module as a strategy. A throw, or a return that is not one of
 * the backends offered, counts through `onError`, and that attempt goes
 * round robin instead.
 */
export class ModulePolicy<B extends PolicyCandidate> implements Strategy<B> {
  readonly #module: PolicyModule;
  readonly #pool: string;
  readonly #state: Record<string, unknown>;
  readonly #fallback = new RoundRobin<B>();
  readonly #onError: (problem: string) => void;
  readonly #options: Readonly<Record<string, unknown>>;

  constructor(
    url: string,
    pool: string,
    onError: PolicyErrorSink,
    now: () => number,
    options: Record<string, unknown> = {},
  ) {
    this.#module = get<PolicyModule>(url);
    this.#options = Object.freeze({ ...options });
    this.#pool = pool;
    let saidAt = -Infinity;
    this.#onError = (problem) => {
      const at = now();
      const say = at - saidAt >= 1000;
      if (say) saidAt = at;
      onError(problem, say);
    };
    // The module's own state: by pool and file, whatever version of it.
    const key = `${pool} ${url.replace(/\?v=\w+$/, "")}`;
    let kept = states.get(key);
    if (kept === undefined) states.set(key, kept = { state: {}, inited: new Set() });
    this.#state = kept.state;
    if (!kept.inited.has(url)) {
      kept.inited.add(url);
      try {
        this.#module.init?.(this.#state);
      } catch (error) {
        this.#onError(`init() threw: ${messageOf(error)}`);
      }
    }
  }

  pick(backends: readonly B[], attempt: Attempt<B>): B | undefined {
    const offered = eligible(backends, attempt.tried);
    if (offered.length === 0) return undefined;
    const views = offered.map(viewOf);
    // Frozen, so a policy that sorts or empties the list it is given fails
    // loudly instead of having its answer matched to the wrong backend.
    const given = Object.freeze([...views]);
    let chosen: BackendView | string | undefined;
    try {
      const context: PickContext = {
        pool: this.#pool,
        listener: attempt.listener ?? "",
        client: { address: attempt.clientAddress ?? "" },
        sni: attempt.sni,
        backends: given,
        state: this.#state,
        options: this.#options,
      };
      chosen = this.#module.pick(context);
      if (isThenable(chosen)) {
        // Its rejection must not escape into the data-plane thread.
        (chosen as unknown as PromiseLike<unknown>).then(undefined, () => {});
        this.#onError("pick() returned a Promise: pick must decide at once, without await");
        return this.#fallback.pick(backends, attempt);
      }
    } catch (error) {
      this.#onError(`pick() threw: ${messageOf(error)}`);
      return this.#fallback.pick(backends, attempt);
    }
    const index = typeof chosen === "string"
      ? views.findIndex((v) => v.address === chosen)
      : views.indexOf(chosen as BackendView);
    if (index >= 0) return offered[index];
    this.#onError(
      `pick() returned ${
        describeReturn(chosen)
      }, not one of the ${views.length} backend(s) offered`,
    );
    return this.#fallback.pick(backends, attempt);
  }
}

function viewOf(backend: PolicyCandidate): BackendView {
  return Object.freeze({
    address: backend.name,
    weight: backend.weight,
    backup: backend.backup,
    active: backend.active,
    state: backend.state,
    connectMs: backend.connectMs,
  });
}

function describeReturn(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "object" && value !== null && "address" in value) {
    return `an object for ${String((value as { address: unknown }).address)}`;
  }
  try {
    return JSON.stringify(value)?.slice(0, 60) ?? String(value);
  } catch {
    return String(value);
  }
}

function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return String(error);
  } catch {
    return "a value that cannot be shown";
  }
}

function isThenable(value: unknown): boolean {
  return typeof value === "object" && value !== null &&
    typeof (value as { then?: unknown }).then === "function";
}

/** A socket to a backend as a check sees it: reads and writes with a deadline. */
export function checkConn(conn: Deno.Conn, signal: AbortSignal): CheckConn {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(16 * 1024);
  const guarded = <T>(work: Promise<T>): Promise<T> => {
    if (signal.aborted) return Promise.reject(new Error("timed out"));
    return new Promise<T>((resolve, reject) => {
      const stop = () => reject(new Error("timed out"));
      signal.addEventListener("abort", stop, { once: true });
      work.then(resolve, reject).finally(() => signal.removeEventListener("abort", stop));
    });
  };
  const read = async () => {
    const count = await guarded(conn.read(buffer));
    return count === null ? null : buffer.slice(0, count);
  };
  return {
    async write(data) {
      let bytes = typeof data === "string" ? encoder.encode(data) : data;
      while (bytes.length > 0) bytes = bytes.subarray(await guarded(conn.write(bytes)));
    },
    read,
    async readText(marker, limit = 64 * 1024) {
      let text = "";
      while (text.length < limit && (marker === undefined || !text.includes(marker))) {
        const chunk = await read();
        if (chunk === null) break;
        text += decoder.decode(chunk, { stream: true });
      }
      return text;
    },
  };
}
