/**
 * Errors: how they are described on one line, which ones mean what, and the
 * one error type a start-up failure is thrown as.
 *
 * @module
 */

/** A one-line description of an error: its kind and message. */
export function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    const kind = typeof code === "string" ? code : error.name;
    return oneLine(`${kind}: ${error.message}`);
  }
  return oneLine(String(error));
}

/** Text on one line: line breaks become ` | `. */
export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " | ");
}

/**
 * EMFILE or ENFILE: this process (or the system) has no descriptor to spare.
 * That is our shortage, not a verdict on the backend we were about to try.
 */
export function isOutOfDescriptors(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return code === "EMFILE" || code === "ENFILE";
}

/** A client that went away (reset, aborted) before or while we served it. */
export function isClientGone(error: unknown): boolean {
  return error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted;
}

/** Closes anything closable, ignoring "already closed". */
export function closeQuietly(closable: { close(): void } | undefined): void {
  try {
    closable?.close();
  } catch {
    // Already closed: nothing left to release.
  }
}

/**
 * A start that cannot go on: the message for stderr (one line per problem)
 * and the exit code. Thrown anywhere during start-up, caught once, in `main`.
 */
export class StartError extends Error {
  override name = "StartError";
  constructor(message: string, readonly exitCode = 2) {
    super(message);
  }
}
