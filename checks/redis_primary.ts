/**
 * Healthy when the backend is a Redis (or Valkey) primary: `INFO
 * replication` answers `role:master`. A replica, a server that is loading or
 * asks for a password, or anything that is not Redis, fails.
 *
 * ```yaml
 * health:
 *   check: { module: ./checks/redis_primary.ts, options: { password: secret } }
 *   on_down: shutdown-sessions    # a demoted primary's clients reconnect at once
 * ```
 *
 * @module
 */

import type { CheckConn, CheckContext } from "../programmable.ts";

/** One command as RESP: an array of bulk strings. */
function command(...parts: string[]): string {
  const encoder = new TextEncoder();
  return `*${parts.length}\r\n` +
    parts.map((part) => `$${encoder.encode(part).length}\r\n${part}\r\n`).join("");
}

/** Reads one reply: a status, an error, or a bulk string (all INFO and AUTH give). */
async function reply(conn: CheckConn): Promise<string> {
  let text = await conn.readText("\r\n");
  const header = /^([+\-$])(.*?)\r\n/.exec(text);
  if (header === null) throw new Error(`not a Redis reply: ${JSON.stringify(text.slice(0, 40))}`);
  if (header[1] === "-") throw new Error(`Redis says: ${header[2]}`);
  if (header[1] === "+") return header[2]!;
  const length = Number(header[2]);
  if (length < 0) return "";
  const end = header[0].length + length + 2;
  while (new TextEncoder().encode(text).length < end) {
    const more = await conn.read();
    if (more === null) throw new Error("closed mid-reply");
    text += new TextDecoder().decode(more);
  }
  return text.slice(header[0].length, header[0].length + length);
}

export async function check(conn: CheckConn, ctx: CheckContext): Promise<boolean> {
  const password = ctx.options.password;
  if (typeof password === "string") {
    await conn.write(command("AUTH", password));
    await reply(conn);
  }
  await conn.write(command("INFO", "replication"));
  const info = await reply(conn);
  return /^role:master\r?$/m.test(info);
}
