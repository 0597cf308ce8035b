/**
 * The bridge: glues a client socket to a backend socket, one one-way copy per
 * direction, as the lab did with a pipe each way.
 *
 * Why `read()`/`write()` and not `readable.pipeTo(writable)`: measured on
 * Deno 2.9.6 (see README, "Why the bridge is a read/write loop"):
 * - `conn.readable` closes the whole socket when it reaches end of stream
 *   (denoland/deno#22258). A client that sends a request and then half-closes
 *   never receives the answer. That alone rules it out.
 * - `pipeTo` over streams we build ourselves on `read()`/`closeWrite()` is
 *   correct, but costs more CPU per small request and per new connection than
 *   this loop (figures in the README), because every chunk crosses two stream
 *   queues and their promises.
 * - This loop awaits each write before the next read, so a slow reader holds
 *   back a fast writer through TCP's own flow control: memory per connection
 *   is two buffers, never a queue.
 *
 * End of stream on one side is passed on as a half-close (`closeWrite()`) of
 * the other; the other direction keeps flowing until it ends too. An error in
 * either direction (a reset, a write to a closed peer) ends the whole
 * connection: both sockets are closed at once, so no orphan is left behind,
 * and the other side is reset too when the caller gave a way to (`reset`).
 * Both sockets are closed exactly once, after both copies have stopped.
 *
 * Read buffers are small while a direction is quiet and large while it moves
 * bulk data, both pooled (see `buffers.ts`): an idle connection holds 2 KiB
 * of buffers, a busy one 256 KiB per busy direction.
 *
 * @module
 */

import { type BufferPool, defaultPools } from "./buffers.ts";
import { type Clock, realClock } from "./clock.ts";
import type { Joined, JoinResult } from "./engine.ts";
import { EarlyBytes } from "./early.ts";
import { closeQuietly } from "./errors.ts";
import type { JoinEnd } from "./events.ts";
import { concat } from "./io.ts";

/** How a bridged connection ended (see events.ts). */
export type BridgeEnd = JoinEnd;

/** What {@linkcode bridge} resolves with once both sockets are closed. */
export type BridgeResult = JoinResult;

/** Options for {@linkcode bridge} and {@linkcode Bridge}. */
export interface BridgeOptions {
  /** Aborting closes both sockets at once; the result's end is `aborted`. */
  signal?: AbortSignal;
  /** Where read buffers come from. @default {defaultPools} */
  pools?: { small: BufferPool; large: BufferPool };
  /** The clock {@linkcode Bridge.halfClosedAt} is read from. @default {realClock} */
  clock?: Clock;
  /**
   * Sends a reset (RST) on a socket before it is closed; returns false when
   * it cannot. With it, a reset on one side is passed on to the other, and a
   * cut (drain timeout) resets both, so no peer takes a cut-short stream for
   * a complete one. Without it, both are closed cleanly (FIN).
   */
  reset?: (conn: Deno.Conn) => boolean;
  /**
   * What was read from the client while its backend was being dialled: the
   * bridge forwards it first, then takes over the reader's read and buffer.
   */
  early?: EarlyReader;
  /** Sent to the server before anything from the client (a PROXY header); not counted. */
  prefix?: Uint8Array | undefined;
}

/**
 * Reads from the client while its backend is being dialled, so that a client
 * that resets (or goes away) is noticed at once and the dial abandoned,
 * rather than at the connect timeout. Reads stop at `limit` bytes; nothing is
 * sent anywhere until a bridge takes the reader over, so a retry on another
 * backend never sends a byte twice.
 *
 * The first read goes into `buffer`, a small pooled one that the bridge then
 * uses (and gives back); each chunk read is copied out, so later reads reuse it.
 */
export class EarlyReader extends EarlyBytes {
  /** The read under way, and the buffer it reads into. */
  pending: { buffer: Uint8Array; read: Promise<number | null> } | undefined;
  readonly buffer: Uint8Array;
  readonly #conn: Deno.Conn;
  readonly #limit: number;
  readonly #onFail: () => void;
  #stopped = false;

  constructor(conn: Deno.Conn, buffer: Uint8Array, onFail: () => void, limit = 65536) {
    super();
    this.#conn = conn;
    this.buffer = buffer;
    this.#onFail = onFail;
    this.#limit = limit;
    this.#read(buffer);
  }

  #read(buffer: Uint8Array): void {
    const read = this.#conn.read(buffer);
    this.pending = { buffer, read };
    read.then((count) => {
      if (this.#stopped) return; // the bridge has taken it over
      this.pending = undefined;
      if (count === null) {
        this.end();
        return;
      }
      // Copied out, so the next read reuses the one small buffer: an idle
      // client holds 1 KiB while its read waits, never more.
      this.push(buffer.subarray(0, count));
      if (this.bytes < this.#limit) this.#read(this.buffer);
    }, () => {
      if (this.#stopped) return;
      this.pending = undefined;
      this.fail();
      this.#onFail();
    });
  }

  /** Drops bytes meant for us; reading resumes if the limit had stopped it. */
  override discard(count: number): void {
    super.discard(count);
    const idle = this.pending === undefined && !this.ended && !this.failed && !this.#stopped;
    if (idle && this.bytes < this.#limit) this.#read(this.buffer);
  }

  /** Stops reading ahead: a pending read is now the caller's to await. */
  stop(): void {
    this.#stopped = true;
  }

  /** Stops, and waits for a read still under way to settle (after the socket is closed). */
  async settle(): Promise<void> {
    this.stop();
    await this.pending?.read.catch(() => {});
  }
}

type Side = "client" | "server";

/**
 * A bridged connection in progress. {@linkcode Bridge.result} settles once
 * both directions have ended and both sockets are closed; it never rejects,
 * every failure is reported as the result's `end`.
 */
export class Bridge implements Joined {
  /** How the connection ended, once it has. */
  readonly result: Promise<BridgeResult>;
  readonly #client: Deno.Conn;
  readonly #server: Deno.Conn;
  readonly #pools: { small: BufferPool; large: BufferPool };
  #firstFin: BridgeEnd | undefined;
  /** Counts reads that returned bytes: a timeout sweeper compares it between sweeps. */
  activity = 0;
  /** When the first side ended its stream (by the clock given); undefined before. */
  halfClosedAt: number | undefined;
  readonly #clock: Clock;
  #failure: BridgeEnd | undefined;
  #early: EarlyReader | undefined;
  #prefix: Uint8Array | undefined;
  readonly #reset: ((conn: Deno.Conn) => boolean) | undefined;
  #closed = false;
  // Directions still copying; the second to reach end of stream need not
  // pass it on with closeWrite(), since both sockets close right after.
  #open = 2;

  constructor(client: Deno.Conn, server: Deno.Conn, options: BridgeOptions = {}) {
    this.#client = client;
    this.#server = server;
    this.#pools = options.pools ?? defaultPools;
    this.#clock = options.clock ?? realClock;
    this.#early = options.early;
    this.#prefix = options.prefix;
    this.#reset = options.reset;
    this.result = this.#run(options.signal);
  }

  /** Closes both sockets at once; the result's end becomes `why`. */
  cut(why: "aborted" | "idle-timeout" | "half-closed-timeout" = "aborted"): void {
    this.#fail(why);
  }

  async #run(signal: AbortSignal | undefined): Promise<BridgeResult> {
    const onAbort = () => this.cut();
    if (signal?.aborted) this.cut();
    else signal?.addEventListener("abort", onAbort, { once: true });
    const [bytesFromClient, bytesFromServer] = await Promise.all([
      this.#copy(this.#client, this.#server, "client", "server"),
      this.#copy(this.#server, this.#client, "server", "client"),
    ]);
    signal?.removeEventListener("abort", onAbort);
    this.#closeBoth();
    return {
      bytesFromClient,
      bytesFromServer,
      end: this.#failure ?? this.#firstFin ?? "client-fin",
    };
  }

  #closeBoth(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#client);
    closeQuietly(this.#server);
  }

  #fail(end: BridgeEnd): void {
    // Once we have closed the sockets ourselves, the errors that follow are
    // our own doing, not the peer's.
    if (this.#closed) return;
    this.#failure = end;
    // A transparent proxy passes a reset on; a cut at the drain timeout
    // resets both sides. Timeouts for quiet connections close cleanly.
    if (this.#reset !== undefined) {
      if (end === "server-reset" || end === "aborted") this.#reset(this.#client);
      if (end === "client-reset" || end === "aborted") this.#reset(this.#server);
    }
    this.#closeBoth();
  }

  // One direction: src → dst, until src ends or either side fails. Reads go
  // into a small buffer; when one fills it, the direction borrows a large one
  // for as long as reads keep coming in big, and gives it back when they do not.
  async #copy(src: Deno.Conn, dst: Deno.Conn, from: Side, to: Side): Promise<number> {
    const { small: smallPool, large: largePool } = this.#pools;
    // What the client sent while its backend was dialled comes first, as if
    // just read; then the reader's pending read, if any; then reads of our own.
    const early = from === "client" ? this.#early : undefined;
    this.#early = undefined;
    early?.stop();
    const queued = early?.chunks ?? [];
    let pending = early?.pending;
    const small = early?.buffer ?? smallPool.take();
    let large: Uint8Array | undefined;
    let buffer = small;
    let total = 0;
    const prefix = from === "client" ? this.#prefix : undefined;
    try {
      if (prefix !== undefined) {
        // With what the client already sent, in one write: one packet and
        // one wake-up of the backend, not two.
        const held = queued.shift();
        const first = held === undefined ? prefix : concat(prefix, held);
        try {
          let written = 0;
          while (written < first.length) written += await dst.write(first.subarray(written));
        } catch {
          this.#fail(`${to}-reset`);
          return total;
        }
        total += first.length - prefix.length;
        if (held !== undefined) this.activity++;
      }
      while (true) {
        let read: number | null;
        let chunk = buffer;
        try {
          if (queued.length > 0) {
            chunk = queued.shift()!;
            read = chunk.length;
          } else if (early?.failed) {
            throw new Error("the client failed while its backend was dialled");
          } else if (early?.ended && pending === undefined) {
            read = null;
          } else if (pending !== undefined) {
            chunk = pending.buffer;
            const under = pending.read;
            pending = undefined;
            read = await under;
          } else {
            read = await src.read(buffer);
          }
        } catch {
          this.#fail(`${from}-reset`);
          return total;
        }
        if (read === null) {
          this.#firstFin ??= `${from}-fin`;
          this.halfClosedAt ??= this.#clock.now();
          if (--this.#open > 0) {
            try {
              await dst.closeWrite();
            } catch {
              this.#fail(`${to}-reset`);
            }
          }
          return total;
        }
        try {
          let written = await dst.write(read === chunk.length ? chunk : chunk.subarray(0, read));
          while (written < read) written += await dst.write(chunk.subarray(written, read));
        } catch {
          this.#fail(`${to}-reset`);
          return total;
        }
        total += read;
        this.activity++;
        if (chunk !== buffer) continue;
        if (buffer === small && read === small.length) {
          large = largePool.take();
          buffer = large;
        } else if (large !== undefined && read < small.length) {
          largePool.give(large);
          large = undefined;
          buffer = small;
        }
      }
    } finally {
      // Every read and write on these buffers has settled by now.
      smallPool.give(small);
      if (large !== undefined) largePool.give(large);
    }
  }
}

/**
 * Copies bytes both ways between `client` and `server` until both directions
 * have ended, then closes both. Never rejects: every failure is reported as
 * the result's `end`.
 */
export function bridge(
  client: Deno.Conn,
  server: Deno.Conn,
  options: BridgeOptions = {},
): Promise<BridgeResult> {
  return new Bridge(client, server, options).result;
}
