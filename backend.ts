/**
 * A lab backend: answers every line it receives with `[Server ID] <line>`
 * (lab.ts).
 *
 * `deno run --allow-net backend.ts 5001 1` listens on 127.0.0.1:5001 as
 * server 1. The port may also be given as `HOST:PORT`. A last line without a
 * newline is answered when the client ends its stream; then the backend ends
 * its own.
 *
 * @module
 */

import { formatHostPort, type HostPort, parseHostPort } from "./address.ts";
import { READY } from "./events.ts";
import { serveBackend } from "./lab.ts";

const USAGE = `Usage: deno run --allow-net backend.ts PORT ID
  PORT  port (or HOST:PORT; host defaults to 127.0.0.1) to listen on
  ID    the name this server answers with, as in "[Server ID] <line>"`;

function parseArguments(args: readonly string[]): { address: HostPort; id: string } {
  if (args.length !== 2) throw new Error(`expected 2 arguments, got ${args.length}`);
  const [where, id] = args as [string, string];
  const text = where.includes(":") ? where : `127.0.0.1:${where}`;
  let address: HostPort;
  try {
    address = parseHostPort(text, { allowPortZero: true });
  } catch (error) {
    throw new Error(`PORT ${where}: ${(error as Error).message}`);
  }
  if (id.length === 0 || /[\r\n]/.test(id)) {
    throw new Error(`ID ${JSON.stringify(id)}: expected a non-empty name on one line`);
  }
  return { address, id };
}

if (import.meta.main) {
  let options;
  try {
    options = parseArguments(Deno.args);
  } catch (error) {
    console.error(`backend: ${(error as Error).message}\n${USAGE}`);
    Deno.exit(2);
  }
  let listener;
  try {
    listener = Deno.listen(options.address);
  } catch (error) {
    console.error(
      `backend: cannot listen on ${formatHostPort(options.address)}: ${(error as Error).message}`,
    );
    Deno.exit(2);
  }
  console.error(`backend: server ${options.id} ${READY}${formatHostPort(listener.addr)}`);
  await serveBackend(listener, options.id);
}
