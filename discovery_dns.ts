/**
 * Backends from DNS: A or AAAA records with a port from the config, or SRV
 * records (what Kubernetes headless services and Consul serve), resolved
 * again every `interval_ms` with `Deno.resolveDns`.
 *
 * SRV: each record's target is resolved (A and AAAA, on the same name
 * server) to the addresses connected to; weights (0-65535) are kept as
 * they are up to 256, else all scaled down to fit (0 counts as 1); records of the lowest priority are the backends, the
 * others backups. `Deno.resolveDns` does not give record TTLs, so the
 * interval alone sets how often a name is asked again.
 *
 * @module
 */

import { formatHostPort, isIpLiteral, parseHostPort } from "./address.ts";
import { type Clock, sleep } from "./clock.ts";
import type { Discovered, DiscoverySource, SourceReport } from "./discovery.ts";
import { describe } from "./errors.ts";

/** What to resolve, and how often. */
export interface DnsSettings {
  name: string;
  type: "A" | "AAAA" | "SRV";
  /** The backends' port, for A and AAAA. */
  port?: number;
  /** The name server as IP:PORT; the system's when left out. */
  resolver?: string;
  intervalMs: number;
}

/** The part of `Deno.resolveDns` used here, so tests may answer themselves. */
export type Resolve = {
  (name: string, type: "A" | "AAAA", options: Deno.ResolveDnsOptions): Promise<string[]>;
  (name: string, type: "SRV", options: Deno.ResolveDnsOptions): Promise<Deno.SrvRecord[]>;
};

// How long one question may take: a name server that does not answer must
// not hold the next round back.
const QUERY_TIMEOUT_MS = 5000;

/** Resolves a name every interval and reports the backends it gives. */
export class DnsSource implements DiscoverySource {
  readonly kind = "dns";
  readonly describe: string;
  readonly #settings: DnsSettings;
  readonly #clock: Clock;
  readonly #resolve: Resolve;
  readonly #stop = new AbortController();
  #running: Promise<void> | undefined;

  constructor(settings: DnsSettings, options: { clock: Clock; resolve?: Resolve }) {
    this.#settings = settings;
    this.#clock = options.clock;
    this.#resolve = options.resolve ?? (Deno.resolveDns as Resolve);
    this.describe = `dns ${settings.name} ${settings.type}` +
      (settings.resolver === undefined ? "" : ` via ${settings.resolver}`);
  }

  start(report: (report: SourceReport) => void): void {
    this.#running ??= (async () => {
      while (!this.#stop.signal.aborted) {
        const answer = await this.resolveOnce();
        if (this.#stop.signal.aborted) break;
        report(answer);
        await sleep(this.#clock, this.#settings.intervalMs, this.#stop.signal);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#running;
  }

  /** One round: the backends the name gives now, or why there are none. */
  async resolveOnce(): Promise<SourceReport> {
    const { name, type, port } = this.#settings;
    try {
      if (type !== "SRV") {
        const addresses = await this.#ask(name, type);
        return {
          backends: addresses.map((host) => ({
            address: formatHostPort({ hostname: host, port: port! }),
            weight: 1,
            backup: false,
          })),
        };
      }
      return await this.#services(name);
    } catch (error) {
      return { error: problemOf(error) };
    }
  }

  async #services(name: string): Promise<SourceReport> {
    const records = await this.#ask(name, "SRV");
    const first = Math.min(...records.map((r) => r.priority));
    // SRV weights run to 65535, ours to 256: scaled down together when they
    // must be, so their proportions stay.
    const heaviest = Math.max(...records.map((r) => r.weight));
    const scale = heaviest > 256 ? 256 / heaviest : 1;
    const backends = new Map<string, Discovered>();
    const unresolved: string[] = [];
    for (const record of records) {
      const target = record.target.replace(/\.$/, "");
      let hosts: string[];
      try {
        hosts = isIpLiteral(target) ? [target] : await this.#addressesOf(target);
      } catch (error) {
        unresolved.push(`${target}: ${problemOf(error)}`);
        continue;
      }
      for (const hostname of hosts) {
        const address = formatHostPort({ hostname, port: record.port });
        if (backends.has(address)) continue;
        backends.set(address, {
          address,
          weight: Math.min(256, Math.max(1, Math.round(record.weight * scale))),
          backup: record.priority > first,
        });
      }
    }
    const error = unresolved.length > 0
      ? `SRV target(s) without an address: ${unresolved.join("; ")}`
      : undefined;
    if (backends.size === 0) return { error: error ?? "no SRV records" };
    return { backends: [...backends.values()], ...(error === undefined ? {} : { error }) };
  }

  // A target's IPv4 and IPv6 addresses; it fails only when it has neither.
  async #addressesOf(target: string): Promise<string[]> {
    const [v4, v6] = await Promise.allSettled([
      this.#ask(target, "A"),
      this.#ask(target, "AAAA"),
    ]);
    const hosts = [
      ...(v4.status === "fulfilled" ? v4.value : []),
      ...(v6.status === "fulfilled" ? v6.value : []),
    ];
    if (hosts.length > 0) return hosts;
    throw v4.status === "rejected" ? v4.reason : new Error("no A or AAAA records");
  }

  #ask(name: string, type: "A" | "AAAA"): Promise<string[]>;
  #ask(name: string, type: "SRV"): Promise<Deno.SrvRecord[]>;
  #ask(name: string, type: "A" | "AAAA" | "SRV"): Promise<string[] | Deno.SrvRecord[]> {
    const options: Deno.ResolveDnsOptions = {
      signal: AbortSignal.any([this.#stop.signal, AbortSignal.timeout(QUERY_TIMEOUT_MS)]),
    };
    if (this.#settings.resolver !== undefined) {
      const { hostname, port } = parseHostPort(this.#settings.resolver);
      options.nameServer = { ipAddr: hostname, port };
    }
    return type === "SRV" ? this.#resolve(name, type, options) : this.#resolve(name, type, options);
  }
}

// The resolver's words are long and carry the query's internals; say what an
// operator can act on, the same way every time (so it is logged once).
function problemOf(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "no such name, or no records of that type";
  if (error instanceof Deno.errors.TimedOut) return "the name server did not answer";
  if (error instanceof DOMException && error.name === "TimeoutError") {
    return "the name server did not answer";
  }
  return describe(error);
}
