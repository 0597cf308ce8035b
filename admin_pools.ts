/**
 * The admin API's run-time changes to a pool's members:
 * `POST /api/pools/{pool}/backends` with `{"address": "HOST:PORT", "weight": N, "backup": B}`
 * adds one; `DELETE /api/pools/{pool}/backends/{address}` removes one (it
 * takes no new connection; those it has finish). Each applies like a reload
 * of that pool, and lasts across reloads of the file until the process
 * ends, or across restarts too with `state_file:` (runtime.ts, membership.ts).
 * `POST /api/pools/{pool}/rebalance` with an optional `{"rate_per_s": N}`
 * (default 10) evens out its long-lived connections (rebalance.ts).
 *
 * @module
 */

import type { BackendChange } from "./membership.ts";
import type { RebalanceLine } from "./rebalance.ts";

export type { BackendChange };

/** Starts a rebalance of a pool; resolves with its plan, or undefined when there is no such pool. */
export type Rebalance = (
  pool: string,
  ratePerS: number,
) => Promise<readonly RebalanceLine[] | undefined>;

/** Applies a change; resolves with why it was refused, or undefined once it is in effect. */
export type ChangeBackends = (pool: string, change: BackendChange) => Promise<string | undefined>;

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body, null, 2) + "\n", {
    status,
    headers: { "content-type": "application/json" },
  });

/** Answers an add (`parts` = api, pools, POOL, backends) or a remove (… backends, ADDRESS). */
export async function changeMembership(
  request: Request,
  parts: readonly string[],
  changeBackends: ChangeBackends | undefined,
  audit: (message: string) => void,
  peer: string,
): Promise<Response> {
  if (changeBackends === undefined) {
    return json(501, { error: "this balancer takes no run-time changes to pools" });
  }
  let pool: string, address: string | undefined;
  try {
    pool = decodeURIComponent(parts[2]!);
    address = parts[4] === undefined ? undefined : decodeURIComponent(parts[4]);
  } catch {
    return json(400, { error: "pool and address must be percent-encoded" });
  }
  let change: BackendChange;
  if (address !== undefined) {
    change = { remove: address };
  } else {
    const body = await readBody(request);
    if (typeof body === "string") return json(400, { error: body });
    change = { add: body };
  }
  const problem = await changeBackends(pool, change);
  if (problem !== undefined) {
    return json(problem.startsWith("no pool") ? 404 : 400, { error: problem });
  }
  const what = "add" in change ? `added ${change.add.address}` : `removed ${change.remove}`;
  audit(`admin: pool ${pool}: ${what} (by ${peer})`);
  return json(
    200,
    "add" in change ? { pool, added: change.add } : { pool, removed: change.remove },
  );
}

// The body of an add, checked for shape (the config schema checks the values);
// a string says what is wrong.
async function readBody(
  request: Request,
): Promise<{ address: string; weight?: number; backup?: boolean } | string> {
  let body: unknown;
  try {
    body = JSON.parse(await request.text());
  } catch {
    return 'expected a JSON body: {"address": "HOST:PORT", "weight": N, "backup": false}';
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return 'expected a JSON object: {"address": "HOST:PORT", "weight": N, "backup": false}';
  }
  const { address, weight, backup, ...rest } = body as Record<string, unknown>;
  const unknown = Object.keys(rest);
  if (unknown.length > 0) {
    return `unknown key(s) ${unknown.map((k) => JSON.stringify(k)).join(", ")}`;
  }
  if (typeof address !== "string") {
    return `address: expected "HOST:PORT", got ${JSON.stringify(address)}`;
  }
  if (weight !== undefined && typeof weight !== "number") {
    return `weight: expected a whole number 1-256, got ${JSON.stringify(weight)}`;
  }
  if (backup !== undefined && typeof backup !== "boolean") {
    return `backup: expected true or false, got ${JSON.stringify(backup)}`;
  }
  return {
    address,
    ...(weight === undefined ? {} : { weight }),
    ...(backup === undefined ? {} : { backup }),
  };
}

/** Default pace of a rebalance: connections closed per second, over the whole pool. */
const REBALANCE_RATE_PER_S = 10;

/** Answers `POST /api/pools/{pool}/rebalance` (`parts` = api, pools, POOL, rebalance). */
export async function rebalance(
  request: Request,
  parts: readonly string[],
  start: Rebalance | undefined,
  audit: (message: string) => void,
  peer: string,
): Promise<Response> {
  if (start === undefined) return json(501, { error: "this balancer cannot rebalance" });
  let pool: string;
  try {
    pool = decodeURIComponent(parts[2]!);
  } catch {
    return json(400, { error: "the pool must be percent-encoded" });
  }
  const text = await request.text();
  let rate = REBALANCE_RATE_PER_S;
  if (text.trim() !== "") {
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return json(400, { error: 'expected no body, or JSON like {"rate_per_s": 10}' });
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      return json(400, { error: 'expected no body, or a JSON object like {"rate_per_s": 10}' });
    }
    const { rate_per_s: given, ...rest } = body as Record<string, unknown>;
    const unknown = Object.keys(rest);
    if (unknown.length > 0) {
      return json(400, {
        error: `unknown key(s) ${unknown.map((k) => JSON.stringify(k)).join(", ")}; ` +
          'expected {"rate_per_s": 10}',
      });
    }
    if (given !== undefined) {
      if (!Number.isInteger(given) || (given as number) < 1 || (given as number) > 10_000) {
        return json(400, {
          error: `rate_per_s: expected a whole number 1-10000, got ${JSON.stringify(given)}`,
        });
      }
      rate = given as number;
    }
  }
  const plan = await start(pool, rate);
  if (plan === undefined) return json(404, { error: `no pool ${JSON.stringify(pool)}` });
  const closing = plan.reduce((sum, line) => sum + line.recycle, 0);
  audit(
    `admin: rebalance of pool ${pool}: closing ${closing} connection(s) at ${rate}/s (by ${peer})`,
  );
  return json(200, { pool, rate_per_s: rate, closing, backends: plan });
}
