/**
 * The `deno` engine's UDP sockets: the datagram half of the seam
 * (engine.ts) on `Deno.listenDatagram`, which Deno 2 keeps behind
 * `--unstable-net` (deno.json turns it on for this folder).
 *
 * Each socket has one receive loop. A flow's socket is bound to a port of
 * its own and keeps only what its backend sends; Deno does not connect a
 * datagram socket, so an unreachable backend is not reported (health checks
 * find it).
 *
 * @module
 */

import { canonicalHost, type HostPort } from "./address.ts";
import type {
  DatagramHandlers,
  DatagramListener,
  DatagramPeer,
  DatagramSocket,
  OnDatagram,
} from "./engine.ts";

/** `Deno.listenDatagram`, or a clear error where the flag is missing. */
function listenDatagram(options: Deno.UdpListenOptions & { transport: "udp" }): Deno.DatagramConn {
  if (typeof Deno.listenDatagram !== "function") {
    throw new Error(
      "UDP on the deno engine needs --unstable-net (run from this folder, deno.json gives it)",
    );
  }
  return Deno.listenDatagram(options);
}

/** A peer as Deno reports it, kept for replies. */
class DenoPeer implements DatagramPeer {
  constructor(readonly key: string, readonly hostname: string, readonly port: number) {}
  get addr(): Deno.NetAddr {
    return { transport: "udp", hostname: this.hostname, port: this.port };
  }
}

/** Binds `address` and calls `onDatagram` for each datagram until closed. */
export function listenDatagrams(
  address: HostPort,
  options: { reusePort?: boolean },
  onDatagram: OnDatagram,
): DatagramListener {
  // Deno's UDP sockets have no SO_REUSEPORT (its `reuseAddress` would let
  // another program share the port silently); config.ts refuses `workers`
  // with a UDP listener, the one case that would ask.
  if (options.reusePort) throw new Error("the deno engine cannot share a UDP port (SO_REUSEPORT)");
  const conn = listenDatagram({ ...address, transport: "udp" });
  const bound = conn.addr as Deno.NetAddr;
  let closed = false;
  let current: Deno.NetAddr | undefined;
  let currentKey = "";
  (async () => {
    while (!closed) {
      let received: [Uint8Array, Deno.Addr];
      try {
        received = await conn.receive();
      } catch {
        if (closed) return;
        continue; // an ICMP error for an earlier send; the socket goes on
      }
      if (closed) return; // closed while this one was on its way: nothing is called after close
      const from = received[1] as Deno.NetAddr;
      current = from;
      currentKey = `${from.hostname}:${from.port}`;
      onDatagram(received[0], currentKey);
      current = undefined;
    }
  })();
  return {
    // The address as bound (a name resolved): a PROXY header names it.
    address: { hostname: bound.hostname, port: bound.port },
    sender(): DatagramPeer {
      if (current === undefined) throw new Error("sender() outside onDatagram");
      return new DenoPeer(currentKey, current.hostname, current.port);
    },
    // True when handed to Deno: whether the kernel took it is known only
    // later, so a send the kernel refuses is not counted on this engine.
    send(bytes: Uint8Array, to?: DatagramPeer): boolean {
      if (closed || !(to instanceof DenoPeer)) return false;
      // A copy: the send completes later, and the caller may reuse `bytes` at once.
      conn.send(bytes.slice(), to.addr).catch(() => {});
      return true;
    },
    close(): void {
      if (closed) return;
      closed = true;
      conn.close();
    },
  };
}

/** A socket of one flow's own, sending to `address` and taking datagrams from it only. */
export function dialDatagrams(address: HostPort, handlers: DatagramHandlers): DatagramSocket {
  const wildcard = address.hostname.includes(":") ? "::" : "0.0.0.0";
  const conn = listenDatagram({ hostname: wildcard, port: 0, transport: "udp" });
  const bound = conn.addr as Deno.NetAddr;
  const to: Deno.NetAddr = { transport: "udp", ...address };
  const expected = canonicalHost(address.hostname);
  let closed = false;
  (async () => {
    while (!closed) {
      let received: [Uint8Array, Deno.Addr];
      try {
        received = await conn.receive();
      } catch (error) {
        if (closed) return;
        handlers.onError(error instanceof Error ? error.message : String(error));
        continue;
      }
      if (closed) return;
      const from = received[1] as Deno.NetAddr;
      if (from.port !== address.port || canonicalHost(from.hostname) !== expected) continue;
      handlers.onDatagram(received[0]);
    }
  })();
  return {
    address: { hostname: bound.hostname, port: bound.port },
    send(bytes: Uint8Array): boolean {
      if (closed) return false;
      conn.send(bytes.slice(), to).catch(() => {});
      return true;
    },
    close(): void {
      if (closed) return;
      closed = true;
      conn.close();
    },
  };
}
