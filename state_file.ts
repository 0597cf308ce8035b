/**
 * `state_file:` — what the admin API changed (backends added and removed,
 * drained, disabled, weights set by hand), written after every such change
 * and read at start, so a restart keeps it (as HAProxy's server-state-file
 * does). JSON, written to a temporary file of its own, synced, and renamed
 * over the old one: a crash mid-write leaves the previous state, never half
 * of one. The balancer saves one change at a time.
 *
 * @module
 */

import { z } from "zod";
import { writeAll } from "./io.ts";
import type { SavedState } from "./membership.ts";

const addedSchema = z.strictObject({
  address: z.string(),
  weight: z.number().int().min(1).max(256).optional(),
  backup: z.boolean().optional(),
});

const stateSchema = z.strictObject({
  version: z.literal(1),
  pools: z.record(
    z.string(),
    z.strictObject({
      added: z.array(addedSchema).optional(),
      removed: z.array(z.string()).optional(),
      admin: z.record(
        z.string(),
        z.strictObject({
          state: z.enum(["draining", "disabled"]).optional(),
          weight: z.number().int().min(1).max(256).optional(),
        }),
      ).optional(),
    }),
  ),
});

/**
 * The state a file holds; undefined when there is no file yet.
 * @throws {Error} naming the file and what is wrong with it
 */
export async function readStateFile(path: string): Promise<SavedState | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`state file ${path}: ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`state file ${path}: not JSON`);
  }
  const result = stateSchema.safeParse(parsed);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new Error(
      `state file ${path}: ${issue.path.join(".") || "(the file)"}: ${issue.message}`,
    );
  }
  // Pool names from a file: no prototype to stumble on.
  return { version: 1, pools: Object.assign(Object.create(null), result.data.pools) };
}

/** Writes `state` to `path` whole, or not at all. @throws {Error} */
export async function writeStateFile(path: string, state: SavedState): Promise<void> {
  const temporary = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    const file = await Deno.open(temporary, { write: true, createNew: true });
    try {
      await writeAll(file, new TextEncoder().encode(JSON.stringify(state, null, 2) + "\n"));
      await file.sync(); // on disk before it takes the name
    } finally {
      file.close();
    }
    await Deno.rename(temporary, path);
  } catch (error) {
    await Deno.remove(temporary).catch(() => {});
    throw error;
  }
}
