/**
 * Healthy when the backend is the PostgreSQL primary, as Patroni says it:
 * `GET /primary` on Patroni's REST API (port 8008 unless `options.port`)
 * of the same host answers 200 only on the leader.
 *
 * ```yaml
 * health:
 *   check: { module: ./checks/postgres_primary.ts, options: { port: 8008 } }
 *   on_down: shutdown-sessions
 * ```
 *
 * Why Patroni's endpoint and not `SELECT pg_is_in_recovery()` over the
 * wire protocol: a query needs a database user and its password (SCRAM) in
 * the balancer and a backend session per check, and it says only what the
 * node thinks of itself. Patroni answers from its leader lock in the
 * cluster's store, so a node cut off from the cluster stops being "primary"
 * even before it notices — the split-brain case that matters. It is also
 * what HAProxy setups for Patroni check (`option httpchk GET /primary`,
 * `check port 8008`).
 *
 * @module
 */

import type { CheckConn, CheckContext } from "../programmable.ts";
import { check as httpOk } from "./http_ok.ts";

export function check(conn: CheckConn, ctx: CheckContext): Promise<boolean> {
  const port = typeof ctx.options.port === "number" ? ctx.options.port : 8008;
  return httpOk(conn, { ...ctx, options: { path: "/primary", ...ctx.options, port } });
}
