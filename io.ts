/**
 * Small byte and text helpers shared by the modules that talk over sockets
 * and pipes: write everything, split a stream into lines.
 *
 * @module
 */

/** The bytes of `parts` one after another, in a new array. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const joined = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  return joined;
}

/** Writes all of `bytes`, however many writes that takes. */
export async function writeAll(
  writer: { write(bytes: Uint8Array): Promise<number> },
  bytes: Uint8Array,
): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await writer.write(bytes.subarray(written));
}

/**
 * Reads `conn` into `buffer` until its peer ends the stream, handing each
 * chunk (a view of `buffer`, valid until `onChunk` settles) to `onChunk`.
 */
export async function eachChunk(
  conn: { read(buffer: Uint8Array): Promise<number | null> },
  buffer: Uint8Array,
  onChunk: (chunk: Uint8Array) => unknown,
): Promise<void> {
  for (let read; (read = await conn.read(buffer)) !== null;) {
    await onChunk(buffer.subarray(0, read));
  }
}

/** Turns text arriving in pieces into whole lines (without their `\n`). */
export class LineSplitter {
  #partial = "";

  /** The lines `text` completes; the rest waits for the next piece. */
  push(text: string): string[] {
    const lines = (this.#partial + text).split("\n");
    this.#partial = lines.pop()!;
    return lines;
  }

  /** What is left after the last newline, once the stream has ended. */
  rest(): string {
    const rest = this.#partial;
    this.#partial = "";
    return rest;
  }
}

/** Reads a text stream line by line, calling `onLine` for each; the last unfinished line too. */
export async function eachLine(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
): Promise<void> {
  const lines = new LineSplitter();
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    for (const line of lines.push(text)) onLine(line);
  }
  const rest = lines.rest();
  if (rest !== "") onLine(rest);
}
