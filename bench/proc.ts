/**
 * A process's own CPU time and memory, read from `/proc` (Linux).
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

/** Parses the text of `/proc/PID/status` and returns the resident set size in KiB. */
export function parseRssKiB(status: string): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error("no VmRSS line in /proc status");
  return Number(match[1]);
}

/** Resident memory of the process `pid`, in KiB. */
export function rssKiB(pid: number): number {
  return parseRssKiB(Deno.readTextFileSync(`/proc/${pid}/status`));
}
