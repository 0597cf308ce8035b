/**
 * A policy: always the backend with the lowest port, of those offered
 * (which are up, not yet tried by this client, and backups only when no
 * other is left). A test decides every connection with it.
 *
 * ```yaml
 * pools:
 *   web: { balance: { module: ./policies/lowest_port.ts }, backends: [...] }
 * ```
 *
 * @module
 */

import type { BackendView, PickContext } from "../../programmable.ts";

const portOf = (backend: BackendView) =>
  Number(backend.address.slice(backend.address.lastIndexOf(":") + 1));

export function pick(ctx: PickContext): BackendView {
  return ctx.backends.reduce((best, b) => portOf(b) < portOf(best) ? b : best);
}
