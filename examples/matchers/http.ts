/**
 * A matcher: an HTTP/1 client, by its request line's method.
 *
 * @module
 */

import type { MatchContext } from "../../programmable.ts";

const METHODS = ["GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH "];
const decoder = new TextDecoder();

export function match(first: Uint8Array, _ctx: MatchContext): boolean | "need-more" {
  const text = decoder.decode(first.subarray(0, 8));
  if (METHODS.some((method) => text.startsWith(method))) return true;
  // Still a prefix of a method: wait for more.
  return METHODS.some((method) => method.startsWith(text)) ? "need-more" : false;
}
