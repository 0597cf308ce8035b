/**
 * A matcher: a PostgreSQL client, by its first message. A client starts
 * with an SSLRequest or GSSENCRequest (8 bytes: length 8, then code
 * 80877103 or 80877104) or a StartupMessage (length, then protocol 3.0,
 * 196608). Eight bytes decide.
 *
 * ```yaml
 * routes:
 *   - { match: { module: ./matchers/postgres.ts }, pool: db }
 * ```
 *
 * @module
 */

import type { MatchContext } from "../../programmable.ts";

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const PROTOCOL_3 = 196608;

export function match(first: Uint8Array, _ctx: MatchContext): boolean | "need-more" {
  if (first.length < 8) return "need-more";
  const view = new DataView(first.buffer, first.byteOffset, first.byteLength);
  const length = view.getInt32(0);
  const code = view.getInt32(4);
  if (length === 8 && (code === SSL_REQUEST || code === GSSENC_REQUEST)) return true;
  return code === PROTOCOL_3 && length >= 8 && length < 10_000;
}
