/**
 * The bench's UDP load generator: many client flows, each a closed loop of
 * request and reply datagrams, every reply checked.
 *
 * `deno run --allow-net --unstable-net bench/udp_flood.ts --target HOST:PORT
 * [--target …] [--seconds 5] [--sockets 64] [--in-flight 4] [--size 64]`
 *
 * Each of `--sockets` client sockets (each its own source port, so its own
 * flow to a proxy) keeps `--in-flight` datagrams outstanding: it sends that
 * many, then one more for every reply, until `--seconds` have passed. Socket
 * i sends to target i mod the number of targets (several targets: the
 * backends themselves, for a direct run). Every datagram is `--size` bytes,
 * naming its socket and sequence number; a reply must be the tagged echo of
 * one still outstanding on the same socket, `[Server ID] ` and then exactly
 * the bytes sent, or it counts as mismatched. A datagram unanswered after a
 * second counts as lost and is replaced, so a drop cannot stall a flow (its
 * reply, if it comes after all, counts as late, not as mismatched).
 * After the window it waits (up to a second) for the replies still due.
 *
 * It prints one line of JSON ({@linkcode FloodReport}) and exits 0; with
 * bad flags it says why and exits 2.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { formatHostPort, type HostPort, parseHostPort } from "../address.ts";

/** What one run of the generator counted. */
export interface FloodReport {
  /** Datagrams sent, replacements for lost ones included. */
  sent: number;
  /** Correct replies received within the window. */
  received: number;
  /** Correct replies received after the window, while waiting for those due. */
  drained: number;
  /** Replies that were not the tagged echo of a datagram this socket sent. */
  mismatched: number;
  /** Datagrams given up on: no reply within a second, or none by the end. */
  lost: number;
  /** Correct replies that came after their datagram was counted as lost. */
  late: number;
  /** The window's length as measured, in seconds. */
  seconds: number;
  /** Correct replies per answering server ID (the `ID` of `[Server ID] `). */
  servers: Record<string, number>;
}

/** What the command line asks for. */
export interface FloodSettings {
  targets: HostPort[];
  seconds: number;
  sockets: number;
  inFlight: number;
  /** Bytes per datagram sent. */
  size: number;
}

/** How long a datagram may go unanswered before it counts as lost. */
const LOST_AFTER_MS = 1000;
/** How long to wait, after the window, for replies still due. */
const DRAIN_MS = 1000;
/** How many datagrams given up on each flow remembers, to tell a late reply from a wrong one. */
const REMEMBERED_LOST = 256;
/** How many mismatched replies are shown on stderr, to see what went wrong. */
const SHOWN_MISMATCHES = 3;
/** The tag a reply starts with, up to the server's ID. */
const TAG_START = new TextEncoder().encode("[Server ");
const SPACE = 0x20;
const CLOSE_BRACKET = 0x5d;
const FILL = 0x2e; // "."

/** Reads the command line. @throws {Error} naming the flag and what was expected */
export function parseFloodArgs(args: readonly string[]): FloodSettings {
  const { values } = parseArgs({
    args: [...args],
    options: {
      target: { type: "string", multiple: true },
      seconds: { type: "string" },
      sockets: { type: "string" },
      "in-flight": { type: "string" },
      size: { type: "string" },
    },
    strict: true,
  });
  const integer = (flag: string, text: string | undefined, fallback: number, min: number) => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isInteger(value) || value < min) {
      throw new Error(`--${flag} ${text}: expected a whole number, ${min} or more`);
    }
    return value;
  };
  if (!values.target || values.target.length === 0) {
    throw new Error("--target HOST:PORT: expected at least one");
  }
  const targets = values.target.map((text) => {
    try {
      return parseHostPort(text);
    } catch (error) {
      throw new Error(`--target ${text}: ${(error as Error).message}`);
    }
  });
  const size = integer("size", values.size, 64, 24);
  if (size > 1400) throw new Error(`--size ${size}: expected at most 1400 bytes`);
  return {
    targets,
    seconds: integer("seconds", values.seconds, 5, 1),
    sockets: integer("sockets", values.sockets, 64, 1),
    inFlight: integer("in-flight", values["in-flight"], 4, 1),
    size,
  };
}

/** The datagram socket `index` sends as its `sequence`th: `index sequence ` filled with dots. */
export function floodPayload(index: number, sequence: number, size: number): Uint8Array {
  const payload = new Uint8Array(size).fill(FILL);
  new TextEncoder().encodeInto(`${index} ${sequence} `, payload);
  return payload;
}

/**
 * Splits a reply into the answering server's ID and the echoed bytes, or
 * returns undefined when it is not `[Server ID] …`.
 */
export function splitReply(reply: Uint8Array): { id: string; echoed: Uint8Array } | undefined {
  if (reply.length < TAG_START.length + 2) return undefined;
  for (let i = 0; i < TAG_START.length; i++) if (reply[i] !== TAG_START[i]) return undefined;
  for (let end = TAG_START.length; end < reply.length - 1; end++) {
    if (reply[end] === CLOSE_BRACKET && reply[end + 1] === SPACE) {
      return {
        id: String.fromCharCode(...reply.subarray(TAG_START.length, end)),
        echoed: reply.subarray(end + 2),
      };
    }
  }
  return undefined;
}

/** The sequence number `echoed` names if it starts with socket `index`'s prefix; else -1. */
function sequenceOf(echoed: Uint8Array, index: number): number {
  let at = 0;
  let number = 0;
  // The socket's index, then a space.
  for (; at < echoed.length && echoed[at] !== SPACE; at++) {
    const digit = echoed[at]! - 0x30;
    if (digit < 0 || digit > 9) return -1;
    number = number * 10 + digit;
  }
  if (at === 0 || number !== index) return -1;
  let sequence = 0;
  const start = ++at;
  for (; at < echoed.length && echoed[at] !== SPACE; at++) {
    const digit = echoed[at]! - 0x30;
    if (digit < 0 || digit > 9) return -1;
    sequence = sequence * 10 + digit;
  }
  return at === start ? -1 : sequence;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** One client flow: its socket, what it has outstanding, and its own loop. */
class Flow {
  readonly #socket: Deno.DatagramConn;
  readonly #target: Deno.NetAddr;
  readonly #index: number;
  readonly #size: number;
  readonly #report: FloodReport;
  /** Outstanding datagrams by sequence number: the bytes sent and when. */
  readonly #outstanding = new Map<number, { bytes: Uint8Array; sentAt: number }>();
  /** The latest datagrams given up on, by sequence number, oldest first. */
  readonly #lost = new Map<number, Uint8Array>();
  #next = 0;
  #sending = true;
  /** Sends started and not yet settled; `#allSent` is called when it drops to 0. */
  #sendsPending = 0;
  #allSent: (() => void) | undefined;
  readonly #sendSettled = () => {
    if (--this.#sendsPending === 0) this.#allSent?.();
  };

  constructor(index: number, target: HostPort, size: number, report: FloodReport) {
    this.#socket = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
    this.#target = { transport: "udp", ...target };
    this.#index = index;
    this.#size = size;
    this.#report = report;
  }

  #send(): void {
    const sequence = this.#next++;
    const bytes = floodPayload(this.#index, sequence, this.#size);
    this.#outstanding.set(sequence, { bytes, sentAt: performance.now() });
    this.#report.sent++;
    // Not awaited: the loop stays closed by the replies, not by the sends. A
    // send that fails (the socket closed at the end, the kernel dropped it)
    // leaves its datagram outstanding, to count as lost.
    this.#sendsPending++;
    this.#socket.send(bytes, this.#target).then(this.#sendSettled, this.#sendSettled);
  }

  /** Resolves once every send this flow started has settled. */
  async sent(): Promise<void> {
    if (this.#sendsPending === 0) return;
    await new Promise<void>((resolve) => this.#allSent = resolve);
  }

  /** Sends the first datagrams and handles replies until the socket closes. */
  async run(inFlight: number, windowEnds: () => boolean): Promise<void> {
    for (let i = 0; i < inFlight; i++) this.#send();
    const buffer = new Uint8Array(65536);
    while (true) {
      let reply: Uint8Array;
      try {
        [reply] = await this.#socket.receive(buffer);
      } catch (error) {
        if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) {
          return; // Closed: the run is over.
        }
        continue; // An ICMP error (nothing listening yet, …): the datagram counts as lost.
      }
      const afterWindow = windowEnds();
      if (afterWindow) this.#sending = false;
      const split = splitReply(reply);
      const sequence = split === undefined ? -1 : sequenceOf(split.echoed, this.#index);
      const sent = this.#outstanding.get(sequence);
      if (split === undefined || sent === undefined || !equalBytes(split.echoed, sent.bytes)) {
        const given = this.#lost.get(sequence);
        if (split !== undefined && given !== undefined && equalBytes(split.echoed, given)) {
          this.#lost.delete(sequence);
          this.#report.late++;
        } else {
          this.#mismatched(reply);
        }
        continue;
      }
      this.#outstanding.delete(sequence);
      if (afterWindow) this.#report.drained++;
      else this.#report.received++;
      this.#report.servers[split.id] = (this.#report.servers[split.id] ?? 0) + 1;
      if (this.#sending) this.#send();
      else if (this.#outstanding.size === 0) this.close();
    }
  }

  #mismatched(reply: Uint8Array): void {
    if (this.#report.mismatched++ < SHOWN_MISMATCHES) {
      console.error(
        `udp_flood: socket ${this.#index} got a reply that is not the echo of what it sent: ` +
          JSON.stringify(new TextDecoder().decode(reply)),
      );
    }
  }

  /** Gives up on datagrams outstanding since before `before`, replacing each while sending. */
  expire(before: number): void {
    for (const [sequence, { bytes, sentAt }] of this.#outstanding) {
      if (sentAt >= before) continue;
      this.#outstanding.delete(sequence);
      this.#report.lost++;
      this.#lost.set(sequence, bytes);
      if (this.#lost.size > REMEMBERED_LOST) this.#lost.delete(this.#lost.keys().next().value!);
      if (this.#sending) this.#send();
    }
  }

  /** Stops sending; closes at once if nothing is outstanding. */
  stopSending(): void {
    this.#sending = false;
    if (this.#outstanding.size === 0) this.close();
  }

  /** Closes the socket, counting what is still outstanding as lost. */
  close(): void {
    this.#report.lost += this.#outstanding.size;
    this.#outstanding.clear();
    try {
      this.#socket.close();
    } catch {
      // Already closed.
    }
  }
}

/** Runs the flood described by `settings` and returns what it counted. */
export async function flood(settings: FloodSettings): Promise<FloodReport> {
  const report: FloodReport = {
    sent: 0,
    received: 0,
    drained: 0,
    mismatched: 0,
    lost: 0,
    late: 0,
    seconds: 0,
    servers: {},
  };
  const flows = Array.from(
    { length: settings.sockets },
    (_, i) => new Flow(i, settings.targets[i % settings.targets.length]!, settings.size, report),
  );
  const started = performance.now();
  const windowEndsAt = started + settings.seconds * 1000;
  let windowOver = false;
  const windowEnds = () => windowOver || (windowOver = performance.now() >= windowEndsAt);
  const running = flows.map((flow) => flow.run(settings.inFlight, windowEnds));
  const expiry = setInterval(() => {
    const before = performance.now() - LOST_AFTER_MS;
    for (const flow of flows) flow.expire(before);
  }, LOST_AFTER_MS / 4);
  // The window ends by the clock even if no reply comes to notice it.
  await new Promise((resolve) => setTimeout(resolve, settings.seconds * 1000));
  windowEnds();
  // Replies are counted against the clock, so the window is exactly this long.
  report.seconds = settings.seconds;
  for (const flow of flows) flow.stopSending();
  const drain = setTimeout(() => flows.forEach((flow) => flow.close()), DRAIN_MS);
  await Promise.all(running);
  await Promise.all(flows.map((flow) => flow.sent()));
  clearTimeout(drain);
  clearInterval(expiry);
  return report;
}

if (import.meta.main) {
  let settings: FloodSettings;
  try {
    if (typeof Deno.listenDatagram !== "function") {
      throw new Error("needs Deno.listenDatagram: run with --unstable-net");
    }
    settings = parseFloodArgs(Deno.args);
  } catch (error) {
    console.error(`udp_flood: ${(error as Error).message}`);
    Deno.exit(2);
  }
  console.error(
    `udp_flood: ${settings.sockets} sockets × ${settings.inFlight} in flight, ` +
      `${settings.size}-byte datagrams, ${settings.seconds} s, to ` +
      settings.targets.map(formatHostPort).join(", "),
  );
  console.log(JSON.stringify(await flood(settings)));
}
