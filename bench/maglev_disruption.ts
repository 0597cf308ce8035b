/**
 * How many keys move when one backend leaves a Maglev table: the 1/N that
 * belonged to it, plus an extra share ε reshuffled between the others.
 * Prints ε's median and maximum over random pools, for the README.
 *
 * `deno run bench/maglev_disruption.ts [POOLS]`
 *
 * @module
 */

import { maglevTable } from "../balancer.ts";
import { median } from "./stats.ts";

/** Share of table entries whose backend changes when backend `removed` leaves. */
export function movedShare(names: string[], removed: number): number {
  const before = maglevTable(names);
  const rest = names.filter((_, i) => i !== removed);
  const after = maglevTable(rest);
  let moved = 0;
  for (let i = 0; i < before.length; i++) {
    if (names[before[i]!] !== rest[after[i]!]) moved++;
  }
  return moved / before.length;
}

if (import.meta.main) {
  const pools = Number(Deno.args[0] ?? 200);
  const extras: number[] = [];
  for (let p = 0; p < pools; p++) {
    const n = 3 + (p % 18);
    // Names as operators write them: addresses with ports.
    const names = Array.from(
      { length: n },
      (_, i) => `10.${p % 250}.${(i * 37) % 250}.${i + 1}:${5000 + ((p * 7 + i) % 1000)}`,
    );
    extras.push(movedShare(names, p % n) - 1 / n);
  }
  const percent = (x: number) => `${(x * 100).toFixed(2)}%`;
  console.log(
    `ε over ${pools} pools of 3-20 backends: median ${percent(median(extras))}, ` +
      `max ${percent(Math.max(...extras))}, min ${percent(Math.min(...extras))}`,
  );
}
