/**
 * A lab backend: answers every line it receives with `[Server ID] <line>`
 * (lab.ts).
 *
 * `deno run --allow-net backend.ts 5001 1` listens on 127.0.0.1:5001 as
 * server 1. The port may also be given as `HOST:PORT`. A last line without a
 * newline is answered when the client ends its stream; then the backend ends
 * its own.
 *
 * With `--udp` (anywhere on the line) it serves UDP on that port instead:
 * every datagram is answered with one datagram to its sender, `[Server ID] `
 * and then the datagram's bytes. UDP needs Deno's `--unstable-net`, which
 * this project's deno.json turns on (`"unstable": ["net"]`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { formatHostPort, type HostPort, parseHostPort } from "./address.ts";
import { READY } from "./events.ts";
import { answerDatagrams, serveBackend } from "./lab.ts";

const USAGE = `Usage: deno run --allow-net backend.ts PORT ID [--udp]
  PORT   port (or HOST:PORT; host defaults to 127.0.0.1) to listen on
  ID     the name this server answers with, as in "[Server ID] <line>"
  --udp  serve UDP instead of TCP: answer each datagram with one datagram,
         "[Server ID] " and then its bytes (needs --unstable-net, which this
         project's deno.json turns on)`;

/** What the command line asks for. */
interface BackendOptions {
  address: HostPort;
  id: string;
  transport: "tcp" | "udp";
}

// node:util's messages are long and mention positionals; say it our way.
function describeParseArgsError(error: unknown): string {
  const message = (error as Error).message;
  const quoted = /'([^]*?)'/.exec(message)?.[1];
  switch ((error as { code?: string }).code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown flag ${quoted ?? message}: expected --udp`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return `--udp takes no value`;
    default:
      return message;
  }
}

function parseArguments(args: readonly string[]): BackendOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      options: { udp: { type: "boolean" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new Error(describeParseArgsError(error));
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 2) {
    throw new Error(`expected 2 arguments, got ${positionals.length}`);
  }
  const [where, id] = positionals as [string, string];
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
  return { address, id, transport: values.udp ? "udp" : "tcp" };
}

/** Binds the UDP socket, or says why it cannot and exits 2. */
function listenUdp(address: HostPort): Deno.DatagramConn {
  // Without --unstable-net the function is simply not there.
  if (typeof Deno.listenDatagram !== "function") {
    console.error(
      "backend: --udp needs Deno.listenDatagram, which is unstable: run with --unstable-net " +
        '(or from this folder, whose deno.json has "unstable": ["net"])',
    );
    Deno.exit(2);
  }
  try {
    return Deno.listenDatagram({ ...address, transport: "udp" });
  } catch (error) {
    console.error(
      `backend: cannot listen on udp ${formatHostPort(address)}: ${(error as Error).message}`,
    );
    Deno.exit(2);
  }
}

/** Binds the TCP listener, or says why it cannot and exits 2. */
function listenTcp(address: HostPort): Deno.TcpListener {
  try {
    return Deno.listen(address);
  } catch (error) {
    console.error(
      `backend: cannot listen on ${formatHostPort(address)}: ${(error as Error).message}`,
    );
    Deno.exit(2);
  }
}

if (import.meta.main) {
  let options;
  try {
    options = parseArguments(Deno.args);
  } catch (error) {
    console.error(`backend: ${(error as Error).message}\n${USAGE}`);
    Deno.exit(2);
  }
  if (options.transport === "udp") {
    const socket = listenUdp(options.address);
    const bound = socket.addr as Deno.NetAddr;
    console.error(`backend: server ${options.id} (udp) ${READY}${formatHostPort(bound)}`);
    await answerDatagrams(socket, options.id);
  } else {
    const listener = listenTcp(options.address);
    console.error(`backend: server ${options.id} ${READY}${formatHostPort(listener.addr)}`);
    await serveBackend(listener, options.id);
  }
}
