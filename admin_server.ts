/**
 * The admin API's HTTP/1.1 server: small, strict and bounded.
 *
 * `Deno.serve` has no header or body timeout, no cap on connections and no
 * body size limit, so a client sending a byte every 100 ms, or a thousand
 * half-sent requests, or a 100 MB body, could hold the admin port or the
 * balancer's memory. The admin API needs little of HTTP: one small request
 * per connection. So this server reads exactly that, with a deadline for the
 * headers, another for the body and another for writing the answer, a cap on
 * header and body sizes, and a cap on connections; it then hands a standard
 * `Request` to the same `(Request) => Response` handler the tests call
 * directly, and closes the connection after answering (`Connection: close`).
 *
 * What a client sees at each limit:
 * - more than `maxConnections` at once: `503`, then close;
 * - headers over `maxHeaderBytes`: `431`; a malformed request line or header: `400`;
 * - a body over `maxBodyBytes` (by its `Content-Length`): `413`, unread;
 * - `Transfer-Encoding` on a request: `501` (send `Content-Length`);
 * - headers, body or answer not done in time: the connection is closed.
 *
 * @module
 */

import { formatHostPort } from "./address.ts";
import { type Clock, realClock, sleep } from "./clock.ts";
import { closeQuietly } from "./errors.ts";
import { concat, writeAll } from "./io.ts";

/** Answers one request; `peer` is the client's `HOST:PORT`. */
export type AdminHandler = (request: Request, peer: string) => Response | Promise<Response>;

/** Options for {@linkcode AdminServer}. */
export interface AdminServerOptions {
  /** Where requests come from; the server owns it from now on and closes it. */
  listener: Deno.TcpListener;
  /** Answers each request. */
  handler: AdminHandler;
  /** Connections served at once; more get 503. @default {64} */
  maxConnections?: number;
  /** Time from accept to the end of the request's headers. @default {10000} */
  headerTimeoutMs?: number;
  /** Time allowed for the body, once the headers are in. @default {10000} */
  bodyTimeoutMs?: number;
  /** Time allowed to write the answer. @default {10000} */
  writeTimeoutMs?: number;
  /** Largest request line plus headers, in bytes. @default {16384} */
  maxHeaderBytes?: number;
  /** Largest request body, in bytes. @default {65536} */
  maxBodyBytes?: number;
  /** The clock the deadlines run on. @default {realClock} */
  clock?: Clock;
}

const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  413: "Content Too Large",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  503: "Service Unavailable",
};

/** A request this server refuses before the handler sees it. */
class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CR = 0x0d;
const LF = 0x0a;

/** A running admin server; {@linkcode AdminServer.close} stops it. */
export class AdminServer {
  readonly #listener: Deno.TcpListener;
  readonly #handler: AdminHandler;
  readonly #maxConnections: number;
  readonly #headerTimeoutMs: number;
  readonly #bodyTimeoutMs: number;
  readonly #writeTimeoutMs: number;
  readonly #maxHeaderBytes: number;
  readonly #maxBodyBytes: number;
  readonly #clock: Clock;
  readonly #connections = new Map<Deno.TcpConn, Promise<void>>();
  readonly #accepting: Promise<void>;

  constructor(options: AdminServerOptions) {
    this.#listener = options.listener;
    this.#handler = options.handler;
    this.#maxConnections = options.maxConnections ?? 64;
    this.#headerTimeoutMs = options.headerTimeoutMs ?? 10_000;
    this.#bodyTimeoutMs = options.bodyTimeoutMs ?? 10_000;
    this.#writeTimeoutMs = options.writeTimeoutMs ?? 10_000;
    this.#maxHeaderBytes = options.maxHeaderBytes ?? 16_384;
    this.#maxBodyBytes = options.maxBodyBytes ?? 65_536;
    this.#clock = options.clock ?? realClock;
    this.#accepting = this.#acceptLoop();
  }

  /** Where the server listens. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /** Connections open now. */
  get connections(): number {
    return this.#connections.size;
  }

  /** Stops accepting, closes every open connection, and waits for them. */
  async close(): Promise<void> {
    closeQuietly(this.#listener);
    await this.#accepting;
    for (const conn of this.#connections.keys()) closeQuietly(conn);
    await Promise.all(this.#connections.values());
  }

  async #acceptLoop(): Promise<void> {
    while (true) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (error instanceof Deno.errors.BadResource) return; // closed
        // A client gone before accept, or no descriptor: try again shortly.
        await sleep(this.#clock, 10);
        continue;
      }
      if (this.#connections.size >= this.#maxConnections) {
        this.#refuse(conn);
        continue;
      }
      const done = this.#serve(conn).finally(() => this.#connections.delete(conn));
      this.#connections.set(conn, done);
    }
  }

  // Over the cap: a short 503, without reading the request.
  #refuse(conn: Deno.TcpConn): void {
    const answer = responseHead(503, [["content-type", "text/plain"]], 24);
    const done = writeAll(conn, concat(answer, encoder.encode("too many connections\r\n\r\n")))
      .catch(() => {})
      .finally(() => {
        closeQuietly(conn);
        this.#connections.delete(conn);
      });
    this.#connections.set(conn, done);
  }

  async #serve(conn: Deno.TcpConn): Promise<void> {
    // One deadline at a time; when it passes, the connection is closed and
    // whatever read or write is pending fails.
    let timer: number | undefined;
    const deadline = (ms: number) => {
      this.#clock.clearTimer(timer);
      timer = this.#clock.setTimer(() => closeQuietly(conn), ms);
    };
    let peer = "-";
    try {
      peer = formatHostPort(conn.remoteAddr);
      deadline(this.#headerTimeoutMs);
      let request: Request;
      try {
        request = await this.#readRequest(conn, () => deadline(this.#bodyTimeoutMs));
      } catch (error) {
        if (!(error instanceof HttpError)) return; // closed, reset or timed out
        deadline(this.#writeTimeoutMs);
        await writeResponse(conn, "GET", errorResponse(error.status, error.message));
        return;
      }
      let response: Response;
      try {
        response = await this.#handler(request, peer);
      } catch {
        response = errorResponse(500, "internal error");
      }
      deadline(this.#writeTimeoutMs);
      if (isEventStream(response)) {
        // A stream of events has no end: each write gets its own deadline,
        // and no deadline runs while it waits for the next event.
        await writeEventStream(conn, response, (on) => {
          if (on) deadline(this.#writeTimeoutMs);
          else this.#clock.clearTimer(timer);
        });
        return;
      }
      await writeResponse(conn, request.method, response);
    } catch {
      // The client went away, or a deadline closed the connection.
    } finally {
      this.#clock.clearTimer(timer);
      closeQuietly(conn);
    }
  }

  async #readRequest(conn: Deno.TcpConn, onHeadersDone: () => void): Promise<Request> {
    const buffer = new Uint8Array(this.#maxHeaderBytes + 4);
    let filled = 0;
    let ending: { end: number; length: number } | undefined;
    while (ending === undefined) {
      if (filled === buffer.length) {
        throw new HttpError(431, `request headers over ${this.#maxHeaderBytes} bytes`);
      }
      const read = await conn.read(buffer.subarray(filled));
      if (read === null) throw new Error("closed before the headers ended");
      filled += read;
      // Not HTTP at all (a TLS hello, …): say so now, not at the deadline.
      if (buffer[0]! < 0x41 || buffer[0]! > 0x5a) {
        throw new HttpError(400, "not an HTTP/1.1 request");
      }
      ending = endOfHead(buffer.subarray(0, filled));
    }
    const { end, length: endLength } = ending;
    onHeadersDone();
    const head = decoder.decode(buffer.subarray(0, end));
    const [requestLine, ...headerLines] = head.split(/\r?\n/);
    const match = /^([A-Z]+) (\/[^ ]*) HTTP\/1\.[01]$/.exec(requestLine!);
    if (!match) throw new HttpError(400, "expected a request line like GET /metrics HTTP/1.1");
    const [, method, target] = match as unknown as [string, string, string];
    const headers = new Headers();
    for (const line of headerLines) {
      const colon = line.indexOf(":");
      if (colon <= 0) throw new HttpError(400, "malformed header line");
      try {
        headers.append(line.slice(0, colon), line.slice(colon + 1).trim());
      } catch {
        throw new HttpError(400, "malformed header line");
      }
    }
    if (headers.has("transfer-encoding")) {
      throw new HttpError(
        501,
        "request bodies need Content-Length (Transfer-Encoding is not read)",
      );
    }
    const lengthText = headers.get("content-length") ?? "0";
    if (lengthText.includes(",")) throw new HttpError(400, "expected one Content-Length header");
    if (!/^[0-9]{1,15}$/.test(lengthText)) {
      throw new HttpError(400, "Content-Length must be a whole number");
    }
    const length = Number(lengthText);
    if (length > this.#maxBodyBytes) {
      throw new HttpError(413, `request body over ${this.#maxBodyBytes} bytes`);
    }
    const body = new Uint8Array(length);
    const already = buffer.subarray(end + endLength, filled);
    body.set(already.subarray(0, length));
    let got = Math.min(already.length, length);
    while (got < length) {
      const read = await conn.read(body.subarray(got));
      // The client finished sending (half-close) short of its own length.
      if (read === null) throw new HttpError(400, "the body ended before its Content-Length");
      got += read;
    }
    let url: URL;
    try {
      // Appended, not resolved: `//x/metrics` is a path, not a host `x`.
      url = new URL(`http://admin${target}`);
    } catch {
      throw new HttpError(400, "malformed request target");
    }
    if (FORBIDDEN_METHODS.has(method)) {
      // fetch's Request refuses these methods outright. No admin route takes
      // them, but the handler must still see one to answer 405 with the
      // route's Allow header: it gets a bodiless request whose method reads
      // back as sent.
      const request = new Request(url, { headers });
      Object.defineProperty(request, "method", { value: method });
      return request;
    }
    const hasBody = method !== "GET" && method !== "HEAD";
    return new Request(url, { method, headers, ...(hasBody ? { body } : {}) });
  }
}

/** Methods `new Request()` throws on (the Fetch standard's forbidden methods). */
const FORBIDDEN_METHODS = new Set(["CONNECT", "TRACE", "TRACK"]);

function errorResponse(status: number, message: string): Response {
  return new Response(JSON.stringify({ error: message }, null, 2) + "\n", {
    status,
    headers: { "content-type": "application/json" },
  });
}

function responseHead(status: number, headers: Iterable<[string, string]>, length: number) {
  let head = `HTTP/1.1 ${status} ${REASONS[status] ?? "Status"}\r\n`;
  for (const [name, value] of headers) {
    if (name === "content-length" || name === "connection") continue;
    head += `${name}: ${value}\r\n`;
  }
  head += `content-length: ${length}\r\nconnection: close\r\n\r\n`;
  return encoder.encode(head);
}

function isEventStream(response: Response): boolean {
  return response.body !== null &&
    (response.headers.get("content-type") ?? "").startsWith("text/event-stream");
}

// Server-sent events (`GET /api/events`): the head without a length, then
// each chunk as the handler's stream gives it, until it ends or the client
// (or the server's close) does.
async function writeEventStream(
  conn: Deno.Conn,
  response: Response,
  writing: (on: boolean) => void,
): Promise<void> {
  let head = `HTTP/1.1 ${response.status} ${REASONS[response.status] ?? "Status"}\r\n`;
  for (const [name, value] of response.headers) {
    if (name === "content-length" || name === "connection") continue;
    head += `${name}: ${value}\r\n`;
  }
  head += "cache-control: no-store\r\nconnection: close\r\n\r\n";
  const reader = response.body!.getReader();
  try {
    await writeAll(conn, encoder.encode(head));
    while (true) {
      writing(false);
      const { value, done } = await reader.read();
      if (done) return;
      writing(true);
      await writeAll(conn, value);
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

// A HEAD answer carries the headers, and the length, of the GET one.
async function writeResponse(conn: Deno.Conn, method: string, response: Response): Promise<void> {
  const body = new Uint8Array(await response.arrayBuffer());
  const head = responseHead(response.status, response.headers, body.length);
  await writeAll(conn, method === "HEAD" ? head : concat(head, body));
}

/**
 * Where the head ends: at its first empty line, each line ended by CRLF or by
 * a bare LF, in any mix (RFC 9112, section 2.2, lets a server take a bare LF
 * and ignore a CR before it). `end` is where the last header line's ending
 * starts; `length` spans that ending and the empty line's.
 */
function endOfHead(bytes: Uint8Array): { end: number; length: number } | undefined {
  for (let i = bytes.indexOf(LF); i >= 0; i = bytes.indexOf(LF, i + 1)) {
    const next = bytes[i + 1] === CR ? i + 2 : i + 1;
    if (bytes[next] !== LF) continue;
    const end = i > 0 && bytes[i - 1] === CR ? i - 1 : i;
    return { end, length: next + 1 - end };
  }
  return undefined;
}
