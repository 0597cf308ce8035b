/**
 * A listener's front door: what is decided about a client before any backend
 * is dialled. In order: a PROXY header (who the client really is), the
 * source ACLs, the per-source limits, and the routes (which pool, by source,
 * by the first bytes, or by the SNI and ALPN of a TLS ClientHello read
 * without terminating it). Bytes read to decide stay with the client and are
 * forwarded unchanged, except the PROXY header, which was meant for us.
 *
 * Pure policy over the engine seam: it reads through `Engine.peek` and
 * never imports an engine. A listener with none of this configured skips it.
 *
 * @module
 */

import type { HostPort } from "./address.ts";
import { CidrSet, parseCidr } from "./cidr.ts";
import { parseClientHello, sniMatches } from "./client_hello.ts";
import type { Clock } from "./clock.ts";
import { Attempt, type Engine, type EngineConn, peerAddress } from "./engine.ts";
import type { RejectReason } from "./events.ts";
import { matcherAt } from "./modules.ts";
import type { MatchModule } from "./programmable.ts";
import { parseProxyHeader } from "./proxy_protocol.ts";
import { SourceLimits } from "./source_limits.ts";
import type { TimeoutQueue } from "./timeouts.ts";

/** One route: every condition given must hold; the first route that matches wins. */
export interface RouteSettings {
  readonly match: {
    readonly sni?: string;
    readonly alpn?: string;
    readonly source?: readonly string[];
    readonly prefix?: string;
    /** A matcher module's URL (modules.ts), loaded before the edge is built. */
    readonly module?: string;
  };
  readonly pool: string;
}

/** A listener's front-door settings, as plain data (the threads get them as a message). */
export interface EdgeSettings {
  /** Every connection starts with a PROXY v1 or v2 header. */
  readonly acceptProxy: boolean;
  /** When given, only these peers may send one; others are closed. */
  readonly acceptProxyFrom: readonly string[];
  /** When given, only these sources; `deny` wins over `allow`. */
  readonly allow: readonly string[];
  /** Never these sources. */
  readonly deny: readonly string[];
  readonly perSource?: {
    readonly maxconn?: number;
    readonly ratePerS?: number;
    readonly burst?: number;
    readonly ipv6Prefix: number;
    readonly tableSize: number;
  };
  /** How long a PROXY header or the bytes a route looks at may take to arrive. */
  readonly peekTimeoutMs: number;
  readonly routes: readonly RouteSettings[];
  /** Whether clients no route matched go to the listener's own pool (else they are closed). */
  readonly fallback: boolean;
  /** The listener's name, for matcher modules. */
  readonly name?: string;
}

/** Whether `settings` asks for anything at all: if not, a listener skips its front door. */
export function hasEdge(settings: EdgeSettings): boolean {
  return settings.acceptProxy || settings.allow.length > 0 || settings.deny.length > 0 ||
    settings.perSource !== undefined || settings.routes.length > 0;
}

/** What the front door decided about one client. */
export type Admission =
  | {
    readonly ok: true;
    /** The client's address: from its PROXY header when there was one, else its peer's. */
    readonly client: HostPort;
    /** The address it connected to: from its PROXY header, else undefined (ask the engine). */
    readonly destination: HostPort | undefined;
    /** The pool a route chose; undefined when none matched (the listener's own, if it has one). */
    readonly pool: string | undefined;
    /** The TLS server name, when a route read the ClientHello. */
    readonly sni?: string;
    /** Holds a per-source slot: give it back with {@linkcode Edge.release} when the connection ends. */
    readonly counted: boolean;
  }
  | {
    readonly ok: false;
    readonly reason: RejectReason;
    readonly client: HostPort;
    /** Why, for the log: what was wrong with the header, which list, which limit. */
    readonly detail: string;
  };

interface Route {
  readonly pool: string;
  readonly sni: string | undefined;
  readonly alpn: string | undefined;
  readonly source: CidrSet | undefined;
  readonly prefix: Uint8Array | undefined;
  readonly matcher: MatchModule | undefined;
}

const encoder = new TextEncoder();

/** A listener's front door, built from its settings; one per listener (per thread). */
export class Edge {
  readonly settings: EdgeSettings;
  readonly #proxyFrom: CidrSet | undefined;
  readonly #allow: CidrSet | undefined;
  readonly #deny: CidrSet | undefined;
  readonly #limits: SourceLimits | undefined;
  readonly #routes: readonly Route[];
  readonly #needsHello: boolean;

  /**
   * `previous`, on a reload: its per-source table carries over (counts of
   * connections still open stay right), under the new limits.
   */
  constructor(settings: EdgeSettings, clock: Clock, previous?: Edge) {
    this.settings = settings;
    const set = (cidrs: readonly string[]) =>
      cidrs.length === 0 ? undefined : new CidrSet(cidrs.map(parseCidr));
    this.#proxyFrom = set(settings.acceptProxyFrom);
    this.#allow = set(settings.allow);
    this.#deny = set(settings.deny);
    if (settings.perSource !== undefined) {
      const kept = previous === undefined ? undefined : previous.#limits;
      this.#limits = kept ?? new SourceLimits(settings.perSource, { clock });
      this.#limits.reconfigure(settings.perSource);
    }
    this.#routes = settings.routes.map(({ match, pool }) => ({
      pool,
      sni: match.sni?.toLowerCase(),
      alpn: match.alpn,
      source: match.source === undefined ? undefined : set(match.source),
      prefix: match.prefix === undefined ? undefined : encoder.encode(match.prefix),
      matcher: match.module === undefined ? undefined : matcherAt(match.module),
    }));
    this.#needsHello = this.#routes.some((r) => r.sni !== undefined || r.alpn !== undefined);
  }

  /**
   * Decides about `client`, reading what it sends first when a PROXY header
   * or a route needs it. `cut` is set to something that abandons the wait
   * (a drain); `timeouts` runs the peek timeout.
   */
  async admit(
    engine: Engine,
    client: EngineConn,
    timeouts: TimeoutQueue,
    setCut: (cut: () => void) => void,
  ): Promise<Admission> {
    const { settings } = this;
    const peer = peerAddress(client);
    let source = peer;
    let destination: HostPort | undefined;
    // One deadline for everything read here, as HAProxy's inspect-delay.
    const attempt = new Attempt();
    const timeoutMs = settings.peekTimeoutMs;
    const timeout = timeouts.add(timeoutMs, () => attempt.abort("timeout"));
    setCut(() => attempt.abort("cut"));
    let known = -1;
    let bytes: Uint8Array = new Uint8Array();
    let ended = false;
    // Waits for more than what was seen; false once nothing more will come in time.
    const more = async (): Promise<boolean> => {
      if (ended || attempt.aborted) return false;
      try {
        const peeked = await engine.peek(client, known, attempt);
        if (peeked.failed) return false;
        bytes = peeked.bytes;
        ended = peeked.ended;
        const grew = bytes.length > known;
        known = bytes.length;
        return grew || !ended;
      } catch {
        return false;
      }
    };
    try {
      if (settings.acceptProxy) {
        if (this.#proxyFrom !== undefined && !this.#proxyFrom.has(peer.hostname)) {
          const detail = "a peer not in accept_proxy_from";
          return { ok: false, reason: "proxy-not-allowed", client: peer, detail };
        }
        known = 0;
        while (true) {
          const parsed = parseProxyHeader(bytes);
          if (parsed.state === "invalid") {
            return { ok: false, reason: "proxy-header", client: peer, detail: parsed.reason };
          }
          if (parsed.state === "done") {
            engine.discard(client, parsed.length);
            bytes = bytes.subarray(parsed.length);
            known = bytes.length;
            if (parsed.header.source !== undefined) {
              source = parsed.header.source;
              destination = parsed.header.destination;
            }
            break;
          }
          if (!(await more())) {
            const detail = ended
              ? `it ended its stream after ${bytes.length} byte(s), before a whole PROXY header`
              : `no whole PROXY header in ${timeoutMs} ms (${bytes.length} byte(s) came)`;
            return { ok: false, reason: "proxy-header", client: peer, detail };
          }
        }
      }
      const host = source.hostname;
      if (this.#deny?.has(host)) {
        return { ok: false, reason: "acl", client: source, detail: "its source is in deny" };
      }
      if (this.#allow !== undefined && !this.#allow.has(host)) {
        return { ok: false, reason: "acl", client: source, detail: "its source is not in allow" };
      }
      let counted = false;
      if (this.#limits !== undefined) {
        const verdict = this.#limits.admit(host);
        if (verdict !== "ok") {
          const limits = settings.perSource!;
          const detail = verdict === "per-source-maxconn"
            ? `its source holds per_source.maxconn (${limits.maxconn}) connections already`
            : `its source opened more than per_source.rate_per_s (${limits.ratePerS}) a second`;
          return { ok: false, reason: verdict, client: source, detail };
        }
        counted = true;
      }
      // From here a slot is held: every way out gives it back but "ok".
      try {
        const { pool, sni } = await this.#route(source, () => ({ bytes, ended }), more);
        if (pool === undefined && this.#routes.length > 0 && !settings.fallback) {
          if (counted) this.release(source);
          const detail = `no route matched its first ${bytes.length} byte(s), and the ` +
            `listener has no pool of its own`;
          return { ok: false, reason: "no-route", client: source, detail };
        }
        return {
          ok: true,
          client: source,
          destination,
          pool,
          counted,
          ...(sni === undefined ? {} : { sni }),
        };
      } catch (error) {
        if (counted) this.release(source);
        throw error;
      }
    } finally {
      timeout.cancel();
    }
  }

  /**
   * Whether the source ACLs let `host` in (before a PROXY header or any
   * byte: a TLS listener asks this before it spends a handshake).
   */
  allows(host: string): boolean {
    if (this.#deny?.has(host)) return false;
    return this.#allow === undefined || this.#allow.has(host);
  }

  /** A connection admitted with a per-source slot has ended. */
  release(client: HostPort): void {
    this.#limits?.release(client.hostname);
  }

  // The first route that matches, reading only as much as the routes need.
  async #route(
    source: HostPort,
    seen: () => { bytes: Uint8Array; ended: boolean },
    more: () => Promise<boolean>,
  ): Promise<{ pool: string | undefined; sni: string | undefined }> {
    let hello: { sni?: string; alpn: string[] } | undefined;
    let helloSettled = !this.#needsHello;
    for (const route of this.#routes) {
      if (route.source !== undefined && !route.source.has(source.hostname)) continue;
      if (route.prefix !== undefined) {
        const prefix = route.prefix;
        // Enough bytes to compare, a byte that differs, or no more coming.
        while (true) {
          const { bytes } = seen();
          const common = Math.min(bytes.length, prefix.length);
          let differs = false;
          for (let i = 0; i < common && !differs; i++) differs = bytes[i] !== prefix[i];
          if (differs || bytes.length >= prefix.length) break;
          if (!(await more())) break;
        }
        const { bytes } = seen();
        if (!startsWith(bytes, prefix)) continue;
      }
      if (route.sni !== undefined || route.alpn !== undefined) {
        while (!helloSettled) {
          const parsed = parseClientHello(seen().bytes);
          if (parsed.state === "done") hello = parsed;
          if (parsed.state !== "incomplete" || !(await more())) helloSettled = true;
        }
        if (hello === undefined) continue;
        if (
          route.sni !== undefined && (hello.sni === undefined || !sniMatches(route.sni, hello.sni))
        ) {
          continue;
        }
        if (route.alpn !== undefined && !hello.alpn.includes(route.alpn)) continue;
      }
      if (
        route.matcher !== undefined && !(await this.#matches(route.matcher, source, seen, more))
      ) {
        continue;
      }
      return { pool: route.pool, sni: hello?.sni };
    }
    return { pool: undefined, sni: hello?.sni };
  }

  // Asks a matcher module, with more bytes each time it says "need-more",
  // until it decides or no more come (then it does not match). A throw, or
  // an answer it may not give, is no match.
  async #matches(
    matcher: MatchModule,
    source: HostPort,
    seen: () => { bytes: Uint8Array; ended: boolean },
    more: () => Promise<boolean>,
  ): Promise<boolean> {
    const context = { listener: this.settings.name ?? "", client: { address: source.hostname } };
    while (true) {
      let answer: unknown;
      try {
        answer = matcher.match(seen().bytes, context);
      } catch {
        return false;
      }
      if (answer !== "need-more") return answer === true;
      if (!(await more())) return false;
    }
  }
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}
