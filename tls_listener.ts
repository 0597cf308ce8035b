/**
 * A listener that terminates TLS, for the `deno` engine: clients speak TLS
 * to us, backends get the plain bytes.
 *
 * Built on `node:tls`, not `Deno.listenTls`, for one reason: a certificate
 * replaced by a reload must apply to new connections without closing the
 * listening socket (which would reset clients waiting in its backlog).
 * `node:tls` servers take a new certificate in place (`setSecureContext`).
 * Each accepted TLS socket is wrapped to look like the `Deno.Conn` the
 * engine's bridge reads and writes.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createPrivateKey, X509Certificate } from "node:crypto";
import tls from "node:tls";
import type { HostPort } from "./address.ts";
import type { TlsMaterial } from "./engine.ts";

/**
 * Why `cert` and `key` cannot serve, or undefined when they can: each must
 * parse, and the key must be the certificate's.
 */
export function tlsProblem(cert: string, key: string): string | undefined {
  let certificate: X509Certificate;
  if (
    /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(cert) && !/-----BEGIN CERTIFICATE-----/.test(cert)
  ) {
    return "the certificate file holds a private key, not a certificate (cert and key swapped?)";
  }
  try {
    certificate = new X509Certificate(cert);
  } catch (error) {
    return `the certificate does not parse as PEM: ${(error as Error).message}`;
  }
  try {
    const privateKey = createPrivateKey(key);
    if (!certificate.checkPrivateKey(privateKey)) {
      return `the key is not the certificate's (subject ${
        certificate.subject.replace(/\n/g, ", ")
      })`;
    }
  } catch (error) {
    return `the key does not parse as PEM: ${(error as Error).message}`;
  }
  return undefined;
}

/** A listening TLS socket, accepting one handshaken client at a time. */
export class TlsListener {
  readonly #server: tls.Server;
  readonly #ready: (TlsConn | Error)[] = [];
  #waiting: ((conn: TlsConn | Error) => void) | undefined;
  #closed = false;
  #address: HostPort;
  #gate: ((host: string) => boolean) | undefined;

  private constructor(server: tls.Server, address: HostPort) {
    this.#server = server;
    this.#address = address;
    server.on("secureConnection", (socket: tls.TLSSocket) => this.#offer(new TlsConn(socket)));
    // Before the handshake: a source the ACLs refuse costs no handshake.
    server.on("connection", (socket: { remoteAddress?: string; destroy(): void }) => {
      if (this.#gate !== undefined && !this.#gate(stripMapped(socket.remoteAddress ?? ""))) {
        socket.destroy();
      }
    });
    // A failed or too slow handshake is that client's problem only.
    server.on("tlsClientError", () => {});
    // Accepting failed (out of descriptors, …): the listener's accept loop
    // backs off and tries again, as for a plain socket.
    server.on("error", (error: Error) => this.#offer(error));
  }

  /** Binds `address` and listens. @throws when it cannot be bound */
  static async listen(address: HostPort, material: TlsMaterial): Promise<TlsListener> {
    const server = tls.createServer({
      ...options(material),
      allowHalfOpen: true,
      // A client that never finishes its handshake holds a descriptor until then.
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: address.hostname, port: address.port }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const bound = server.address() as { address: string; port: number };
    return new TlsListener(server, { hostname: bound.address, port: bound.port });
  }

  /** Where it listens. */
  get address(): HostPort {
    return this.#address;
  }

  /** New clients get `material` from now on; clients connected keep theirs. */
  setMaterial(material: TlsMaterial): void {
    this.#server.setSecureContext(options(material));
  }

  /** Which client hosts may start a handshake (source ACLs); undefined: all. */
  setGate(admits: ((host: string) => boolean) | undefined): void {
    this.#gate = admits;
  }

  /** The next client whose handshake is done. Rejects once closed. */
  accept(): Promise<TlsConn> {
    const next = this.#ready.shift();
    if (next !== undefined) {
      return next instanceof Error ? Promise.reject(next) : Promise.resolve(next);
    }
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("the listener is closed"));
    return new Promise((resolve, reject) => {
      this.#waiting = (conn) => conn instanceof Error ? reject(conn) : resolve(conn);
    });
  }

  /** Stops listening; clients connected stay. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#server.close();
    for (const conn of this.#ready.splice(0)) if (!(conn instanceof Error)) conn.close();
    this.#offer(new Deno.errors.BadResource("the listener is closed"));
  }

  #offer(conn: TlsConn | Error): void {
    const waiting = this.#waiting;
    this.#waiting = undefined;
    if (waiting !== undefined) waiting(conn);
    else if (conn instanceof Error) {
      if (!this.#closed) this.#ready.push(conn);
    } else if (this.#closed || this.#ready.length >= MAX_READY) conn.close();
    else this.#ready.push(conn);
  }
}

function options(material: TlsMaterial): tls.SecureContextOptions & tls.TlsOptions {
  return {
    cert: material.cert,
    key: material.key,
    ...(material.alpn.length > 0 ? { ALPNProtocols: [...material.alpn] } : {}),
  };
}

/**
 * Handshaken clients kept while the listener does not accept (at its
 * maxconn): node accepts whatever arrives, so past this many the newest are
 * closed rather than held without bound (as a full kernel backlog would).
 */
const MAX_READY = 1024;

/** Longest a TLS handshake may take before the client is closed. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

// Bytes held from a client before the bridge asks for them: past this, the
// socket is paused (backpressure, as a kernel buffer would give).
const HIGH_WATER = 64 * 1024;

/**
 * A TLS client as the bridge sees a `Deno.Conn`: `read`, `write`,
 * `closeWrite`, `close`, its addresses. Plain bytes in and out.
 */
export class TlsConn {
  readonly remoteAddr: Deno.NetAddr;
  readonly localAddr: Deno.NetAddr;
  readonly #socket: tls.TLSSocket;
  readonly #chunks: Buffer[] = [];
  #held = 0;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;

  constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
    this.remoteAddr = {
      transport: "tcp",
      hostname: stripMapped(socket.remoteAddress ?? "0.0.0.0"),
      port: socket.remotePort ?? 0,
    };
    this.localAddr = {
      transport: "tcp",
      hostname: stripMapped(socket.localAddress ?? "0.0.0.0"),
      port: socket.localPort ?? 0,
    };
    socket.on("data", (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#held += chunk.length;
      if (this.#held >= HIGH_WATER) socket.pause();
      this.#notify();
    });
    socket.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    socket.on("error", (error: Error) => {
      this.#error = new Deno.errors.ConnectionReset(error.message);
      this.#notify();
    });
    socket.on("close", () => {
      this.#ended = true;
      this.#notify();
    });
  }

  /** The protocol ALPN settled on, if any. */
  get alpnProtocol(): string | false {
    return this.#socket.alpnProtocol ?? false;
  }

  async read(into: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0 && !this.#ended && this.#error === undefined) {
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    const first = this.#chunks[0];
    if (first === undefined) {
      if (this.#error !== undefined) throw this.#error;
      return null;
    }
    const n = Math.min(first.length, into.length);
    into.set(first.subarray(0, n));
    if (n === first.length) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#held -= n;
    if (this.#held < HIGH_WATER && this.#socket.isPaused()) this.#socket.resume();
    return n;
  }

  async write(bytes: Uint8Array): Promise<number> {
    if (this.#error !== undefined) throw this.#error;
    if (this.#socket.destroyed) throw new Deno.errors.BrokenPipe("the client is gone");
    // A copy: the bridge reuses its buffer once this resolves.
    const flushed = this.#socket.write(Buffer.from(bytes));
    if (!flushed) {
      await new Promise<void>((resolve, reject) => {
        const done = () => {
          this.#socket.off("drain", done);
          this.#socket.off("close", gone);
          resolve();
        };
        const gone = () => {
          this.#socket.off("drain", done);
          reject(new Deno.errors.BrokenPipe("the client is gone"));
        };
        this.#socket.once("drain", done);
        this.#socket.once("close", gone);
      });
    }
    return bytes.length;
  }

  /** Ends our side: TLS close_notify, then FIN; the client may still send. */
  closeWrite(): Promise<void> {
    this.#socket.end();
    return Promise.resolve();
  }

  close(): void {
    this.#socket.destroy();
    this.#ended = true;
    this.#notify();
  }

  setNoDelay(noDelay = true): void {
    this.#socket.setNoDelay(noDelay);
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

function stripMapped(host: string): string {
  return host.startsWith("::ffff:") && host.includes(".") ? host.slice(7) : host;
}
