/**
 * The statistics every figure here is reported with: the median of repeated
 * runs and their spread, because these machines are noisy.
 *
 * @module
 */

/** Repeated measurements of one figure, summarised. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  /** How many runs. */
  runs: number;
}

/** The median (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError("median of no values");
  const sorted = values.toSorted((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** Median, smallest and largest of some runs. */
export function summarize(values: readonly number[]): Summary {
  return {
    median: median(values),
    min: Math.min(...values),
    max: Math.max(...values),
    runs: values.length,
  };
}

/** `ours / theirs`, or undefined when either is missing or theirs is 0. */
export function ratio(ours: number | undefined, theirs: number | undefined): number | undefined {
  if (ours === undefined || theirs === undefined || theirs === 0) return undefined;
  return ours / theirs;
}
