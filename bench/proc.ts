/**
 * Reading a process's own CPU time from `/proc/PID/stat` (Linux), and the
 * small statistics every benchmark here reports.
 *
 * @module
 */

/** Clock ticks per second for `/proc/PID/stat`; 100 on every Linux we run on. */
const TICKS_PER_SECOND = 100;

/**
 * Parses the text of `/proc/PID/stat` and returns user + system CPU seconds.
 * The command name (field 2) is in parentheses and may hold spaces, so the
 * fields are counted from the last `)`.
 */
export function parseCpuSeconds(stat: string): number {
  const afterName = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // afterName[0] is field 3 (state); utime and stime are fields 14 and 15.
  const utime = Number(afterName[11]);
  const stime = Number(afterName[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) {
    throw new Error(`cannot read utime/stime from /proc stat: ${JSON.stringify(stat)}`);
  }
  return (utime + stime) / TICKS_PER_SECOND;
}

/** User + system CPU seconds the process `pid` has used so far. */
export function cpuSeconds(pid: number): number {
  return parseCpuSeconds(Deno.readTextFileSync(`/proc/${pid}/stat`));
}

/** The median of some numbers (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError("median of no values");
  const sorted = values.toSorted((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
