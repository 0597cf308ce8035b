/**
 * Healthy when an HTTP GET answers 2xx: a readiness endpoint, or Patroni's
 * `/primary` (200 only on the leader). HTTP/1.1, no TLS.
 *
 * ```yaml
 * health:
 *   check: { module: ./checks/http_ok.ts, options: { path: /healthz, host: api.internal } }
 * ```
 *
 * Options: `path` (default `/`), `host` (the Host header; default the
 * backend's address), `port` (ask another port of the same host, as
 * HAProxy's `check port` does; default the backend's own connection).
 *
 * @module
 */

import { checkConn } from "../modules.ts";
import type { CheckConn, CheckContext } from "../programmable.ts";

/** The status of one `GET path` on `conn`. */
export async function status(conn: CheckConn, path: string, host: string): Promise<number> {
  await conn.write(
    `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: lb-check\r\nConnection: close\r\n\r\n`,
  );
  const head = await conn.readText("\r\n", 4096);
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(head);
  if (match === null) throw new Error(`not an HTTP answer: ${JSON.stringify(head.slice(0, 40))}`);
  return Number(match[1]);
}

export async function check(conn: CheckConn, ctx: CheckContext): Promise<boolean> {
  const path = typeof ctx.options.path === "string" ? ctx.options.path : "/";
  const host = typeof ctx.options.host === "string" ? ctx.options.host : ctx.backend;
  const port = ctx.options.port;
  if (typeof port !== "number") return isOk(await status(conn, path, host));
  // Another port of the same host (Patroni's REST API beside PostgreSQL).
  const hostname = ctx.backend.replace(/^\[(.*)\]:\d+$/, "$1").replace(/:\d+$/, "");
  const other = await Deno.connect({ hostname, port, signal: ctx.signal } as Deno.ConnectOptions);
  try {
    return isOk(await status(checkConn(other, ctx.signal), path, host));
  } finally {
    other.close();
  }
}

const isOk = (code: number) => code >= 200 && code < 300;
