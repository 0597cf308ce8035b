/**
 * The admin API: Prometheus metrics, the backends' state as JSON, and
 * changes to a backend (drain, enable, disable, weight). Handlers are plain
 * `(Request) => Response` functions, tested without a socket; the CLI serves
 * them with `Deno.serve` on `--admin` (loopback unless an address is given).
 *
 * Changes made here last until the next reload: the file is the source of
 * truth.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import type { Backend, LoadBalancer } from "./load_balancer.ts";
import { type Family, type Labels, renderMetrics } from "./metrics.ts";

/** The version `lb_build_info` reports. */
export const VERSION = "0.9.0";

/** What the admin API can see of a running balancer. */
export interface AdminView {
  /** The balancers running now, one per listener. */
  balancers(): readonly LoadBalancer[];
  /** Reloads done, and reloads that failed and changed nothing. */
  readonly reloads: number;
  readonly reloadFailures: number;
}

const STATES = ["up", "down", "draining", "disabled"] as const;

/** Every metric, rendered in the Prometheus text format. */
export function metricsText(view: AdminView): string {
  const balancers = view.balancers();
  const perListener = balancers.map((b) => ({ listener: b.name, pool: b.pool }));
  const perBackend = balancers.flatMap((b) =>
    b.backends.map((backend) => ({
      labels: { listener: b.name, pool: b.pool, backend: backend.name },
      backend,
    }))
  );
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
    {
      name: "lb_connections_total",
      help: "Client connections bridged to the backend that have ended.",
      type: "counter",
      samples: perBackend.map(({ labels, backend }) => [labels, backend.connections]),
    },
    {
      name: "lb_bytes_received_total",
      help: "Bytes received from clients and passed to the backend, over ended connections.",
      type: "counter",
      samples: perBackend.map(({ labels, backend }) => [labels, backend.bytesIn]),
    },
    {
      name: "lb_bytes_sent_total",
      help: "Bytes received from the backend and sent to clients, over ended connections.",
      type: "counter",
      samples: perBackend.map(({ labels, backend }) => [labels, backend.bytesOut]),
    },
    {
      name: "lb_connect_failures_total",
      help: "Failed attempts to connect to the backend.",
      type: "counter",
      samples: perBackend.map(({ labels, backend }) => [labels, backend.connectFailures]),
    },
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
      name: "lb_health_check_duration_seconds",
      help: "How long active health checks took.",
      type: "histogram",
      samples: perBackend.map(({ labels, backend }) => [labels, backend.checkSeconds]),
    },
    {
      name: "lb_queue_length",
      help: "Clients waiting for a backend with room.",
      type: "gauge",
      samples: balancers.map((b, i) => [perListener[i]!, b.queueLength]),
    },
    {
      name: "lb_connection_duration_seconds",
      help: "How long client connections lasted, from accept to close.",
      type: "histogram",
      samples: balancers.map((b, i) => [perListener[i]!, b.durations]),
    },
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

/** One backend as `GET /api/backends` shows it. */
export function backendJson(pool: string, backend: Backend) {
  return {
    pool,
    address: backend.name,
    state: backend.state,
    weight: backend.configuredWeight,
    backup: backend.backup,
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
  /** The bearer token mutations need; none means every mutation is refused (403). */
  token?: string;
}

/** The admin API as one request handler. */
export function createAdminHandler(
  options: AdminOptions,
): (request: Request) => Response | Promise<Response> {
  const { view, token } = options;
  return (request) => {
    const url = new URL(request.url);
    const parts = url.pathname.split("/").slice(1);
    if (request.method === "GET" && url.pathname === "/metrics") {
      return new Response(metricsText(view), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (request.method === "GET" && url.pathname === "/api/backends") {
      return json(
        200,
        view.balancers().flatMap((b) => b.backends.map((backend) => backendJson(b.pool, backend))),
      );
    }
    if (parts[0] === "api" && parts[1] === "backends" && parts.length === 5) {
      if (request.method !== "POST") {
        return json(405, { error: `use POST for ${url.pathname}` }, { allow: "POST" });
      }
      return mutate(request, parts, view, token);
    }
    return json(404, { error: `no route ${request.method} ${url.pathname}` });
  };
}

function mutate(
  request: Request,
  parts: string[],
  view: AdminView,
  token: string | undefined,
): Response | Promise<Response> {
  if (token === undefined) {
    return json(403, {
      error: "changes are disabled: no admin token is configured " +
        "(--admin-token-file FILE, or the LB_ADMIN_TOKEN environment variable)",
    });
  }
  const presented = /^Bearer (.+)$/.exec(request.headers.get("authorization") ?? "")?.[1];
  if (presented === undefined || !tokenMatches(presented, token)) {
    return json(401, { error: "a valid 'Authorization: Bearer TOKEN' header is needed" }, {
      "www-authenticate": 'Bearer realm="lb-admin"',
    });
  }
  let pool: string, address: string;
  try {
    [pool, address] = [decodeURIComponent(parts[2]!), decodeURIComponent(parts[3]!)];
  } catch {
    return json(400, { error: `pool and address must be percent-encoded: ${parts.join("/")}` });
  }
  const action = parts[4]!;
  if (!["drain", "enable", "disable", "weight"].includes(action)) {
    return json(400, {
      error: `unknown action ${JSON.stringify(action)}; expected drain, enable, disable or weight`,
    });
  }
  const targets = view.balancers().filter((b) => b.pool === pool).flatMap((b) =>
    b.backends.filter((backend) => backend.name === address)
  );
  if (targets.length === 0) {
    return json(404, {
      error: `no backend ${JSON.stringify(address)} in pool ${JSON.stringify(pool)}`,
    });
  }
  const done = () => json(200, backendJson(pool, targets[0]!));
  if (action !== "weight") {
    const state = action === "drain" ? "draining" : action === "disable" ? "disabled" : "enabled";
    for (const backend of targets) backend.adminState = state;
    return done();
  }
  return request.text().then((text) => {
    let weight: unknown;
    try {
      weight = (JSON.parse(text) as { weight?: unknown })?.weight;
    } catch {
      return json(400, {
        error: `body must be JSON like {"weight": 5}, got ${JSON.stringify(text)}`,
      });
    }
    if (!Number.isInteger(weight) || (weight as number) < 1 || (weight as number) > 256) {
      return json(400, {
        error: `weight: expected a whole number 1-256, got ${JSON.stringify(weight)}`,
      });
    }
    for (const backend of targets) backend.configuredWeight = weight as number;
    return done();
  });
}
