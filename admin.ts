/**
 * The admin API: Prometheus metrics, the backends' state as JSON, and
 * changes to a backend (drain, enable, disable, weight). Handlers are plain
 * `(Request) => Response` functions, tested without a socket; the CLI serves
 * them with `Deno.serve` on `--admin` (loopback unless an address is given).
 *
 * A drain, disable or weight lasts until the next reload of the file (the
 * file is the source of truth), unless `state_file:` keeps it; a change of
 * members (discovery, admin_pools.ts) keeps it either way.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { formatHostPort, parseHostPort } from "./address.ts";
import { type ChangeBackends, changeMembership, type Rebalance, rebalance } from "./admin_pools.ts";
import { AdminServer } from "./admin_server.ts";
import { describe, StartError } from "./errors.ts";
import { REJECT_REASONS } from "./events.ts";
import {
  type Family,
  FLOW_DROPS,
  type Labels,
  type ListenerStats,
  renderMetrics,
  type UdpBackendCounts,
  type UdpCounts,
} from "./metrics.ts";

export type { ListenerStats };
import type { Backend, Pool } from "./pool.ts";
import { VERSION } from "./version.ts";
import type { Clock } from "./clock.ts";
import { type Dashboard, eventStream, MAX_STREAMS } from "./dashboard.ts";
import { DASHBOARD_PAGE } from "./dashboard_page.ts";

/** What the admin API can see of a running balancer. */
export interface AdminView {
  /** The listeners running now. */
  listeners(): readonly ListenerStats[];
  /** The pools of the configuration running now, each backend once. */
  pools(): readonly Pool[];
  /** Reloads done, and reloads that failed and changed nothing. */
  readonly reloads: number;
  readonly reloadFailures: number;
  /** Each pool's discovery, for pools with a `discover:` block. */
  discoveries?(): readonly DiscoveryStats[];
  /** Errors of policy modules, by pool. */
  policyErrors?(): ReadonlyMap<string, number>;
}

/** What the admin API sees of a pool's discovery (discovery.ts). */
export interface DiscoveryStats {
  readonly pool: string;
  readonly source: { readonly kind: "dns" | "etcd"; readonly describe: string };
  /** Failed answers and unusable entries, counted. */
  readonly errors: number;
  /** The problem in effect, while the source is failing. */
  readonly failing: string | undefined;
  /** What the balancer left out of the last set, and why. */
  readonly leftOut: string | undefined;
  /** The last good set; undefined until the source has answered well. */
  readonly backends: readonly { readonly address: string }[] | undefined;
}

const STATES = ["up", "down", "draining", "disabled"] as const;

/** The counters every backend keeps: name, help, and how to read it. */
const BACKEND_COUNTERS: [string, string, (backend: Backend) => number][] = [
  [
    "lb_connections_total",
    "Client connections bridged to the backend that have ended.",
    (b) => b.connections,
  ],
  ["lb_bytes_received_total", "Bytes from clients, passed to the backend (ended connections).", (
    b,
  ) => b.bytesIn],
  [
    "lb_bytes_sent_total",
    "Bytes from the backend, passed to clients (ended connections).",
    (b) => b.bytesOut,
  ],
  [
    "lb_connect_failures_total",
    "Failed attempts to connect to the backend.",
    (b) => b.connectFailures,
  ],
];

/** Every metric, rendered in the Prometheus text format. */
export function metricsText(view: AdminView): string {
  const balancers = view.listeners();
  const pools = view.pools();
  const perListener = balancers.map((b) => ({ listener: b.name, pool: b.pool.name }));
  // A backend is counted once per pool, however many listeners use the pool.
  const perBackend = pools.flatMap((pool) =>
    pool.backends.map((backend) => ({
      labels: { pool: pool.name, backend: backend.name },
      backend,
    }))
  );
  // A counter per backend, one series each.
  const backendFamily = (name: string, help: string, count: (b: Backend) => number): Family => ({
    name,
    help,
    type: "counter",
    samples: perBackend.map(({ labels, backend }) => [labels, count(backend)]),
  });
  const discoveries = view.discoveries?.() ?? [];
  const families: Family[] = [
    {
      name: "lb_build_info",
      help: "Version of the balancer and of Deno; always 1.",
      type: "gauge",
      samples: [[{ version: VERSION, deno: Deno.version.deno }, 1]],
    },
    {
      name: "lb_connections_active",
      help: "Client connections in progress.",
      type: "gauge",
      samples: balancers.map((b, i) => [perListener[i]!, b.activeConnections]),
    },
    ...BACKEND_COUNTERS.map(([name, help, count]) => backendFamily(name, help, count)),
    {
      name: "lb_backend_up",
      help: "1 when the backend is healthy, 0 when it is down.",
      type: "gauge",
      samples: perBackend.map((
        { labels, backend },
      ) => [labels, backend.health.state === "up" ? 1 : 0]),
    },
    {
      name: "lb_backend_state",
      help: "1 for the state the backend is in (up, down, draining, disabled), 0 for the others.",
      type: "gauge",
      samples: perBackend.flatMap(({ labels, backend }) =>
        STATES.map((state): [Labels, number] => [
          { ...labels, state },
          backend.state === state ? 1 : 0,
        ])
      ),
    },
    {
      name: "lb_backend_info",
      help: "Where each backend came from (source: config, admin, dns, etcd); always 1.",
      type: "gauge",
      samples: perBackend.map(({ labels, backend }) => [{ ...labels, source: backend.source }, 1]),
    },
    {
      name: "lb_policy_errors_total",
      help:
        "Attempts a policy module threw on or gave no backend it was offered (round robin took them).",
      type: "counter",
      samples: view.policyErrors === undefined ? [] : pools.map((pool) => [
        { pool: pool.name },
        view.policyErrors!().get(pool.name) ?? 0,
      ]),
    },
    {
      name: "lb_discovery_errors_total",
      help: "Discovery answers that failed, and discovered entries that could not be used.",
      type: "counter",
      samples: discoveries.map((d) => [{ pool: d.pool, source: d.source.kind }, d.errors]),
    },
    {
      name: "lb_health_check_duration_seconds",
      help: "How long active health checks took.",
      type: "histogram",
      samples: perBackend.map(({ labels, backend }) => [labels, backend.checkSeconds]),
    },
    {
      name: "lb_queue_length",
      help: "Clients waiting for a backend with room.",
      type: "gauge",
      samples: pools.map((pool) => [{ pool: pool.name }, pool.queue.length]),
    },
    {
      name: "lb_rejected_total",
      help: "Client connections closed before any backend was dialled, by reason.",
      type: "counter",
      // Every reason for every listener, zeros included, so rates work from the start.
      samples: balancers.flatMap((b) =>
        REJECT_REASONS.map((reason): [Labels, number] => [
          { listener: b.name, reason },
          b.rejected.get(reason) ?? 0,
        ])
      ),
    },
    {
      name: "lb_connection_duration_seconds",
      help: "How long client connections lasted, from accept to close.",
      type: "histogram",
      samples: balancers.map((b, i) => [perListener[i]!, b.durations]),
    },
    ...udpFamilies(balancers, pools),
    {
      name: "lb_reloads_total",
      help: "Configuration reloads done.",
      type: "counter",
      samples: [[{}, view.reloads]],
    },
    {
      name: "lb_reload_failures_total",
      help: "Configuration reloads that failed and changed nothing.",
      type: "counter",
      samples: [[{}, view.reloadFailures]],
    },
  ];
  return renderMetrics(families);
}

// A UDP listener's datagrams, bytes and flows; none without UDP listeners.
// Per-backend series only for backends in a pool now: one that left (a
// reload, discovery) stops being shown, as a gone target's series does.
function udpFamilies(balancers: readonly ListenerStats[], pools: readonly Pool[]): Family[] {
  const present = new Set(pools.flatMap((p) => p.backends.map((b) => `${p.name} ${b.name}`)));
  const udp = balancers.flatMap((b) =>
    b.udp === undefined ? [] : [{ listener: b.name, active: b.activeConnections, ...b.udp }]
  );
  if (udp.length === 0) return [];
  const eachWay = (
    count: (u: UdpCounts, direction: "in" | "out") => number,
  ): [Labels, number][] =>
    udp.flatMap((u) =>
      (["in", "out"] as const).map((direction): [Labels, number] => [
        { listener: u.listener, direction },
        count(u, direction),
      ])
    );
  const shown = (u: UdpCounts) =>
    Object.values(u.backends).filter((b) => present.has(`${b.pool} ${b.backend}`));
  const perBackend = (
    count: (b: UdpBackendCounts, direction: "in" | "out") => number,
  ): [Labels, number][] =>
    udp.flatMap((u) =>
      shown(u).flatMap((b) =>
        (["in", "out"] as const).map((direction): [Labels, number] => [
          { listener: u.listener, pool: b.pool, backend: b.backend, direction },
          count(b, direction),
        ])
      )
    );
  return [
    {
      name: "lb_udp_datagrams_total",
      help: "Datagrams at a UDP listener: in from clients (dropped ones too), out back to them.",
      type: "counter",
      samples: eachWay((u, d) => d === "in" ? u.datagramsIn : u.datagramsOut),
    },
    {
      name: "lb_udp_bytes_total",
      help: "Bytes of datagrams through a UDP listener: in from clients, out back to them.",
      type: "counter",
      samples: eachWay((u, d) => d === "in" ? u.bytesIn : u.bytesOut),
    },
    {
      name: "lb_udp_backend_datagrams_total",
      help: "Datagrams a UDP listener sent to each backend (in) and had back from it (out).",
      type: "counter",
      samples: perBackend((b, d) => d === "in" ? b.datagramsIn : b.datagramsOut),
    },
    {
      name: "lb_udp_backend_bytes_total",
      help: "Bytes of datagrams a UDP listener sent to each backend (in) and had back (out).",
      type: "counter",
      samples: perBackend((b, d) => d === "in" ? b.bytesIn : b.bytesOut),
    },
    {
      name: "lb_udp_flows_active",
      help: "UDP flows open (a client's address and port, placed on a backend).",
      type: "gauge",
      samples: udp.map((u) => [{ listener: u.listener }, u.active]),
    },
    {
      name: "lb_udp_flows_dropped_total",
      help: "UDP flows ended for room (table-full) or silence (idle), and new clients' " +
        "datagrams refused (no-backend, full, socket-error, draining).",
      type: "counter",
      samples: udp.flatMap((u) =>
        FLOW_DROPS.map((cause): [Labels, number] => [
          { listener: u.listener, cause },
          u.dropped[cause],
        ])
      ),
    },
    {
      name: "lb_udp_send_errors_total",
      help: "Datagrams the kernel would not take (its buffer full), dropped.",
      type: "counter",
      samples: udp.map((u) => [{ listener: u.listener }, u.sendErrors]),
    },
  ];
}

/** One backend as `GET /api/backends` shows it. */
export function backendJson(pool: string, backend: Backend) {
  return {
    pool,
    address: backend.name,
    state: backend.state,
    weight: backend.configuredWeight,
    backup: backend.backup,
    source: backend.source,
    active: backend.active,
    total: backend.connections,
    bytes_in: backend.bytesIn,
    bytes_out: backend.bytesOut,
    connect_failures: backend.connectFailures,
    last_check: backend.lastCheck === undefined ? null : {
      ok: backend.lastCheck.ok,
      time: backend.lastCheck.at.toISOString(),
      ...(backend.lastCheck.reason === undefined ? {} : { reason: backend.lastCheck.reason }),
    },
  };
}

/** One pool's discovery as `GET /api/discovery` shows it. */
function discoveryJson(discovery: DiscoveryStats) {
  return {
    pool: discovery.pool,
    source: discovery.source.kind,
    asks: discovery.source.describe,
    backends: discovery.backends ?? null,
    errors: discovery.errors,
    failing: discovery.failing ?? null,
    left_out: discovery.leftOut ?? null,
  };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body, null, 2) + "\n", {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

const digest = (text: string) => createHash("sha256").update(text).digest();

/** Compares a presented token with the configured one in constant time. */
export function tokenMatches(presented: string, expected: string): boolean {
  // Hashing first makes the lengths equal, so the comparison leaks neither.
  return timingSafeEqual(digest(presented), digest(expected));
}

/** Options for {@linkcode createAdminHandler}. */
export interface AdminOptions {
  view: AdminView;
  /**
   * The bearer token changes need, or a function giving the current one (a
   * reload may rotate it); none means every change is refused (403).
   */
  token?: string | (() => string | undefined);
  /** Told of every change made, as one line naming it and who made it. */
  audit?: (message: string) => void;
  /** `POST /api/logs/reopen`: reopens the access log; returns what was reopened. */
  reopenLogs?: () => string;
  /**
   * Told after a change to a backend of pool `pool`; the answer waits for
   * it, so a 200 means every thread running the pool has it.
   */
  changed?: (pool: string) => void | Promise<void>;
  /** Adds a backend to a pool or removes one, as a reload of that pool would (admin_pools.ts). */
  changeBackends?: ChangeBackends;
  /** Evens out a pool's long-lived connections (admin_pools.ts, rebalance.ts). */
  rebalance?: Rebalance;
  /** The live page at `/` and its stream at `/api/events` (dashboard.ts); off without it. */
  dashboard?: { state: Dashboard; clock: Clock };
}

const ACTIONS = ["drain", "enable", "disable", "weight"] as const;

/** The admin API as one request handler; `peer` (`HOST:PORT`) is named in audit lines. */
export function createAdminHandler(
  options: AdminOptions,
): (request: Request, peer?: string) => Response | Promise<Response> {
  const { view, audit = () => {} } = options;
  const token = typeof options.token === "function" ? options.token : () =>
    options.token as
      | string
      | undefined;
  return (request, peer = "-") => {
    const url = new URL(request.url);
    const parts = url.pathname.split("/").slice(1);
    // HEAD answers as GET does, without the body (the server drops it).
    const reading = request.method === "GET" || request.method === "HEAD";
    if ((url.pathname === "/" || url.pathname === "/api/events") && options.dashboard) {
      if (!reading) {
        return json(405, { error: `use GET for ${url.pathname}` }, { allow: "GET, HEAD" });
      }
      if (url.pathname === "/") {
        return new Response(DASHBOARD_PAGE, {
          headers: {
            "content-type": "text/html; charset=utf-8",
            // Everything it needs is in the page: nothing from elsewhere may load.
            "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; " +
              "style-src 'unsafe-inline'; img-src 'self' data:",
          },
        });
      }
      const { state, clock } = options.dashboard;
      const stream = eventStream(state, clock);
      if (stream === undefined) {
        return json(503, {
          error: `too many event streams open (${MAX_STREAMS}); close a dashboard tab`,
        }, { "retry-after": "10" });
      }
      return new Response(stream, {
        headers: { "content-type": "text/event-stream; charset=utf-8" },
      });
    }
    if (url.pathname === "/api/discovery") {
      if (!reading) {
        return json(405, { error: `use GET for ${url.pathname}` }, { allow: "GET, HEAD" });
      }
      return json(200, (view.discoveries?.() ?? []).map(discoveryJson));
    }
    if (url.pathname === "/metrics" || url.pathname === "/api/backends") {
      if (!reading) {
        return json(405, { error: `use GET for ${url.pathname}` }, { allow: "GET, HEAD" });
      }
      if (url.pathname === "/metrics") {
        return new Response(metricsText(view), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      }
      return json(
        200,
        view.pools().flatMap((pool) =>
          pool.backends.map((backend) => backendJson(pool.name, backend))
        ),
      );
    }
    // POST /api/pools/{pool}/rebalance evens out its long-lived connections.
    if (
      parts[0] === "api" && parts[1] === "pools" && parts[3] === "rebalance" && parts.length === 4
    ) {
      if (request.method !== "POST") {
        return json(405, { error: `use POST for ${url.pathname}` }, { allow: "POST" });
      }
      const refused = authorize(request, token());
      if (refused !== undefined) return refused;
      return rebalance(request, parts, options.rebalance, audit, peer);
    }
    // POST /api/pools/{pool}/backends adds one; DELETE …/backends/{address} removes one.
    if (parts[0] === "api" && parts[1] === "pools" && parts[3] === "backends") {
      const method = parts.length === 4 ? "POST" : parts.length === 5 ? "DELETE" : undefined;
      if (method === undefined) {
        return json(404, { error: `no route ${request.method} ${truncate(url.pathname)}` });
      }
      if (request.method !== method) {
        return json(405, { error: `use ${method} for ${url.pathname}` }, { allow: method });
      }
      const refused = authorize(request, token());
      if (refused !== undefined) return refused;
      return changeMembership(request, parts, options.changeBackends, audit, peer);
    }
    const isAction = parts[0] === "api" && parts[1] === "backends" && parts.length === 5 &&
      (ACTIONS as readonly string[]).includes(parts[4]!);
    const isReopen = url.pathname === "/api/logs/reopen";
    if (isAction || isReopen) {
      if (request.method !== "POST") {
        return json(405, { error: `use POST for ${url.pathname}` }, { allow: "POST" });
      }
      const refused = authorize(request, token());
      if (refused !== undefined) return refused;
      if (isReopen) return reopen(options.reopenLogs, audit, peer);
      return mutate(request, parts, view, audit, peer, options.changed ?? (() => {}));
    }
    return json(404, { error: `no route ${request.method} ${truncate(url.pathname)}` });
  };
}

/** Undefined when the request carries the token; else the refusal. */
function authorize(request: Request, token: string | undefined): Response | undefined {
  if (token === undefined) {
    return json(403, {
      error: "changes are disabled: no admin token is configured " +
        "(--admin-token-file FILE, or the LB_ADMIN_TOKEN environment variable)",
    });
  }
  // The scheme name is case-insensitive (RFC 7235, section 2.1).
  const presented = /^bearer +(\S+) *$/i.exec(request.headers.get("authorization") ?? "")?.[1];
  if (presented === undefined || !tokenMatches(presented, token)) {
    return json(401, { error: "a valid 'Authorization: Bearer TOKEN' header is needed" }, {
      "www-authenticate": 'Bearer realm="lb-admin"',
    });
  }
  return undefined;
}

function reopen(
  reopenLogs: (() => string) | undefined,
  audit: (message: string) => void,
  peer: string,
): Response {
  if (reopenLogs === undefined) return json(404, { error: "no access log to reopen" });
  try {
    const what = reopenLogs();
    audit(`admin: reopened the access log ${what} (by ${peer})`);
    return json(200, { reopened: what });
  } catch (error) {
    const why = `could not reopen the access log: ${describe(error)}`;
    audit(`admin: ${why} (by ${peer})`);
    return json(500, { error: why });
  }
}

// Input shown back in an error is cut short: never echo a body whole.
function truncate(text: string): string {
  return text.length > 64 ? `${text.slice(0, 61)}...` : text;
}

function mutate(
  request: Request,
  parts: string[],
  view: AdminView,
  audit: (message: string) => void,
  peer: string,
  changed: (pool: string) => void | Promise<void>,
): Response | Promise<Response> {
  let pool: string, address: string;
  try {
    [pool, address] = [decodeURIComponent(parts[2]!), decodeURIComponent(parts[3]!)];
  } catch {
    return json(400, {
      error: `pool and address must be percent-encoded: ${truncate(parts.join("/"))}`,
    });
  }
  const action = parts[4]! as typeof ACTIONS[number];
  const targets = view.pools().filter((p) => p.name === pool).flatMap((p) =>
    p.backends.filter((backend) => backend.name === address)
  );
  if (!view.pools().some((p) => p.name === pool)) {
    return json(404, { error: `no pool ${JSON.stringify(truncate(pool))}` });
  }
  if (targets.length === 0) {
    return json(404, {
      error: `no backend ${JSON.stringify(truncate(address))} in pool ${
        JSON.stringify(truncate(pool))
      }`,
    });
  }
  const done = async () => {
    await changed(pool);
    return json(200, backendJson(pool, targets[0]!));
  };
  if (action !== "weight") {
    const state = action === "drain" ? "draining" : action === "disable" ? "disabled" : "enabled";
    const before = targets[0]!.state;
    for (const backend of targets) backend.adminState = state;
    const after = targets[0]!.state;
    audit(
      `admin: ${action} backend ${address} of pool ${pool}: ${before} -> ${after} (by ${peer})`,
    );
    return done();
  }
  return request.text().then((text) => {
    const expected = `body must be JSON like {"weight": 5}`;
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return json(400, { error: `${expected}, got ${JSON.stringify(truncate(text))}` });
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      return json(400, { error: `${expected}, got ${truncate(text)}` });
    }
    const unknown = Object.keys(body).filter((key) => key !== "weight");
    if (unknown.length > 0) {
      return json(400, {
        error: `unknown key(s) ${truncate(JSON.stringify(unknown))}; ${expected}`,
      });
    }
    const weight = (body as { weight?: unknown }).weight;
    if (!Number.isInteger(weight) || (weight as number) < 1 || (weight as number) > 256) {
      const shown = typeof weight === "number" ? String(weight) : JSON.stringify(weight);
      return json(400, {
        error: `weight: expected a whole number 1-256, got ${truncate(shown ?? "nothing")}`,
      });
    }
    const before = targets[0]!.configuredWeight;
    for (const backend of targets) {
      backend.configuredWeight = weight as number;
      backend.adminWeight = weight as number;
    }
    audit(
      `admin: weight of backend ${address} in pool ${pool}: ${before} -> ${weight} (by ${peer})`,
    );
    return done();
  });
}

/**
 * Binds the admin API's address and serves it. @throws {StartError} when the
 * address cannot be bound.
 */
export function startAdmin(listen: string, options: AdminOptions): AdminServer {
  let listener: Deno.TcpListener;
  try {
    listener = Deno.listen(parseHostPort(listen, { allowPortZero: true }));
  } catch (error) {
    throw new StartError(`admin ${listen}: ${describe(error)}`);
  }
  return new AdminServer({ listener, handler: createAdminHandler(options) });
}

/** Where an admin server listens, as a URL. */
export function adminUrl(server: AdminServer): string {
  return `http://${formatHostPort(server.addr)}`;
}
