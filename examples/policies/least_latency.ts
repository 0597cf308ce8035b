/**
 * A policy: the backend that has connected fastest lately, weighed by its
 * connections in progress; a backend not yet measured is tried first. Its
 * state (how often each was picked) survives reloads.
 *
 * @module
 */

import type { BackendView, PickContext } from "../../programmable.ts";

export function init(state: Record<string, unknown>): void {
  state.picks ??= {} as Record<string, number>;
}

export function pick(ctx: PickContext): BackendView {
  const cost = (b: BackendView) => (b.connectMs ?? 0) * (1 + b.active) / b.weight;
  const best = ctx.backends.reduce((a, b) => cost(b) < cost(a) ? b : a);
  const picks = ctx.state.picks as Record<string, number>;
  picks[best.address] = (picks[best.address] ?? 0) + 1;
  return best;
}
