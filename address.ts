/**
 * Parsing and printing of `HOST:PORT` addresses, the one syntax every flag
 * and log line uses. IPv6 literals are bracketed (`[::1]:5001`), as in URLs.
 *
 * Host names are kept as written: they are resolved by `Deno.connect` at each
 * connect, so a DNS change reaches the next connection without a restart.
 *
 * @module
 */

/** A host and port, ready for `Deno.connect` or `Deno.listen`. */
export interface HostPort {
  /** An IPv4 literal, an IPv6 literal without brackets, or a host name. */
  readonly hostname: string;
  /** The TCP port. */
  readonly port: number;
}

/** Options for {@linkcode parseHostPort}. */
export interface ParseHostPortOptions {
  /** Accept port 0, which asks the kernel for any free port (listeners only).
   * @default {false} */
  allowPortZero?: boolean;
}

// A host name: letters, digits, '-', '_' and dots, as DNS and /etc/hosts allow.
const HOST_NAME = /^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;

/**
 * Parses `HOST:PORT` or `[IPV6]:PORT`.
 *
 * @throws {RangeError} naming the bad part and the value, e.g.
 * `port must be an integer 1-65535: got "70000"`.
 */
export function parseHostPort(text: string, options: ParseHostPortOptions = {}): HostPort {
  const expected = "expected HOST:PORT (e.g. 127.0.0.1:5001 or [::1]:5001)";
  let hostname: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0 || text[close + 1] !== ":") {
      throw new RangeError(`${expected}: got ${JSON.stringify(text)}`);
    }
    hostname = text.slice(1, close);
    portText = text.slice(close + 2);
    if (!isIpv6(hostname)) {
      throw new RangeError(`bracketed host must be an IPv6 address: got ${JSON.stringify(text)}`);
    }
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) throw new RangeError(`${expected}: got ${JSON.stringify(text)}`);
    hostname = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (hostname.includes(":")) {
      const example = isIpv6(hostname) && /^[0-9]+$/.test(portText)
        ? `[${hostname}]:${portText}`
        : "[::1]:5001";
      throw new RangeError(
        `an IPv6 address needs brackets and a port, as in ${example}: got ${JSON.stringify(text)}`,
      );
    }
    if (!HOST_NAME.test(hostname) || !isHostName(hostname)) {
      throw new RangeError(`${expected}: got ${JSON.stringify(text)}`);
    }
    // All digits and dots reads as an IPv4 address, never as a name to resolve.
    if (/^[0-9.]+$/.test(hostname) && !isIpv4(hostname)) {
      throw new RangeError(
        `not an IPv4 address (four numbers 0-255): got ${JSON.stringify(text)}`,
      );
    }
  }
  const lowest = options.allowPortZero ? 0 : 1;
  const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= lowest && port <= 65535)) {
    throw new RangeError(
      `port must be an integer ${lowest}-65535: got ${JSON.stringify(portText)} in ${
        JSON.stringify(text)
      }`,
    );
  }
  return { hostname, port };
}

// DNS's limits: at most 253 characters, labels of 1-63 (no `a..b`).
function isHostName(host: string): boolean {
  return host.length <= 253 &&
    host.split(".").every((label) => label.length >= 1 && label.length <= 63);
}

/** Whether `text` is a dotted-quad IPv4 address, each part 0-255. */
export function isIpv4(text: string): boolean {
  const parts = text.split(".");
  return parts.length === 4 && parts.every((part) => /^[0-9]{1,3}$/.test(part) && +part <= 255);
}

/** Whether `text` (without brackets) is an IPv6 address, as a URL parser reads one. */
export function isIpv6(text: string): boolean {
  if (!text.includes(":") || !/^[0-9A-Fa-f:.]+$/.test(text)) return false;
  try {
    new URL(`http://[${text}]/`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a host that {@linkcode parseHostPort} accepted is an address rather
 * than a name (a cheap test: it is one or the other already).
 */
export function isIpLiteral(host: string): boolean {
  return host.includes(":") || /^[0-9]{1,3}(\.[0-9]{1,3}){3}$/.test(host);
}

/**
 * Whether a host that {@linkcode parseHostPort} accepted can only be reached
 * from this machine: `127.0.0.0/8`, `::1` (however written, or as
 * `::ffff:127.x.y.z`) or `localhost`. A wildcard (`0.0.0.0`, `::`) is not:
 * it listens on every interface. Any other name may resolve anywhere.
 */
export function isLoopbackHost(host: string): boolean {
  if (host.toLowerCase() === "localhost") return true;
  if (isIpv4(host)) return Number(host.split(".")[0]) === 127;
  if (!isIpv6(host)) return false;
  // The URL parser writes an IPv6 address one way: `[::1]`, `[::ffff:7f00:1]`.
  const canonical = new URL(`http://[${host}]/`).hostname;
  return canonical === "[::1]" || /^\[::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}\]$/.test(canonical);
}

/** Prints an address the way {@linkcode parseHostPort} reads it. */
export function formatHostPort(address: HostPort): string {
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}

/** What a listener's `listen` text starts with to take UDP datagrams instead of TCP connections. */
export const UDP_SCHEME = "udp://";

/**
 * A listener's address and transport: `udp://HOST:PORT` listens for UDP,
 * `HOST:PORT` for TCP (one spelling each, so a reload knows a listener
 * again). Port 0 is allowed.
 * @throws {RangeError} as {@linkcode parseHostPort} does
 */
export function parseListen(text: string): { transport: "tcp" | "udp"; address: HostPort } {
  const udp = text.startsWith(UDP_SCHEME);
  const rest = udp ? text.slice(UDP_SCHEME.length) : text;
  return {
    transport: udp ? "udp" : "tcp",
    address: parseHostPort(rest, { allowPortZero: true }),
  };
}

/**
 * A host as the kernel sees it: IPv6 in one spelling, and an IPv4-mapped
 * IPv6 address (`::ffff:127.0.0.1`) as the IPv4 address it is. Anything
 * else (IPv4, a name) as it is.
 */
export function canonicalHost(host: string): string {
  if (!host.includes(":")) return host;
  let text: string;
  try {
    text = new URL(`http://[${host}]/`).hostname.slice(1, -1);
  } catch {
    return host;
  }
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(text);
  if (!mapped) return text;
  const [high, low] = [parseInt(mapped[1]!, 16), parseInt(mapped[2]!, 16)];
  return [high >> 8, high & 255, low >> 8, low & 255].join(".");
}
