/**
 * The configuration file: `--config FILE`, YAML or JSON (YAML reads both).
 *
 * Config flows one way: parse → fill defaults → validate, every message
 * naming the path, the bad value and what was expected
 * (`pools.web.backends[2].address: expected HOST:PORT …: got "x"`) → the
 * typed object goes to the balancer. zod's own messages leave the value out,
 * so every rule here carries its own words.
 *
 * @module
 */

import { parse as parseYaml } from "yaml";
import { z } from "zod";
import {
  canonicalHost,
  formatHostPort,
  type HostPort,
  isIpLiteral,
  isIpv4,
  parseHostPort,
  parseListen,
  UDP_SCHEME,
} from "./address.ts";
import { parseCidr } from "./cidr.ts";
import { STRATEGY_NAMES } from "./balancer.ts";
import { type Clock, realClock } from "./clock.ts";
import { DEFAULT_UDP } from "./udp_proxy.ts";

const MAX_MS = 2_147_483_647;

function whole(min: number, max: number, fallback: number) {
  const error = `expected a whole number ${min}-${max}`;
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error }).default(
    fallback,
  );
}

/** A whole number that may be left out (no default: left out means off). */
function optionalWhole(min: number, max: number) {
  const error = `expected a whole number ${min}-${max}`;
  return z.number({ error }).int({ error, abort: true }).min(min, { error }).max(max, { error })
    .optional();
}

function milliseconds(fallback: number, min = 1) {
  return whole(min, MAX_MS, fallback).describe("milliseconds");
}

function address(options: { allowPortZero?: boolean } = {}) {
  return z.string({ error: "expected HOST:PORT" }).superRefine((text, context) => {
    try {
      parseHostPort(text, options);
    } catch (error) {
      context.addIssue({ code: "custom", message: (error as Error).message });
    }
  });
}

/**
 * Names of listeners and pools: they go into metrics labels, admin URLs and
 * log lines, and must never be mistaken for a property every object has
 * (`__proto__`, `toString`), so they are kept to a plain alphabet.
 */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
const NAME_RULE = "expected a name of 1-64 letters, digits, '-', '_', '.' or ':', " +
  "starting with a letter or digit";

function name(what: string) {
  return z.string({ error: `expected ${what}` }).regex(NAME, { error: NAME_RULE });
}

/** `9000` or `"9000"` means `127.0.0.1:9000`, as `--admin 9000` does. */
function loopbackIfBarePort(value: unknown): unknown {
  if (typeof value === "number" && Number.isInteger(value)) return `127.0.0.1:${value}`;
  if (typeof value === "string" && /^[0-9]+$/.test(value)) return `127.0.0.1:${value}`;
  return value;
}

const hex = z.string({ error: "expected hex digits" }).regex(/^([0-9a-fA-F]{2})+$/, {
  error: "expected an even number of hex digits",
});

/** A backend's address: one to connect to, so not a wildcard or the broadcast address. */
const backendAddress = address().superRefine((text, context) => {
  let host: string;
  try {
    host = parseHostPort(text).hostname;
  } catch {
    return; // reported by address()
  }
  // In any spelling: `[0::0]`, `[::ffff:0.0.0.0]` and `000.0.0.0` are wildcards too.
  const kernel = canonicalHost(host);
  const address = isIpv4(kernel) ? kernel.split(".").map(Number).join(".") : kernel;
  if (address === "0.0.0.0" || address === "::" || address === "255.255.255.255") {
    context.addIssue({
      code: "custom",
      message: `${JSON.stringify(text)} is not an address to connect to (a wildcard or ` +
        `broadcast address); give the backend's own address`,
    });
  }
});

const sendProxy = z.enum(["off", "v1", "v2"], { error: "expected off, v1 or v2" });

// A source range: an address with a prefix length, or one address.
const cidr = z.string({ error: "expected ADDRESS/PREFIX such as 10.0.0.0/8" }).superRefine(
  (text, context) => {
    try {
      parseCidr(text);
    } catch (error) {
      context.addIssue({ code: "custom", message: (error as Error).message });
    }
  },
);
const cidrs = z.array(cidr, { error: "expected a list of ADDRESS/PREFIX" });

const backendSchema = z.strictObject({
  address: backendAddress.describe(
    "HOST:PORT, or [IPv6]:PORT; host names are resolved at each connect",
  ),
  weight: whole(1, 256, 1).describe("share of new connections"),
  backup: z.boolean({ error: "expected true or false" }).default(false).describe(
    "used only when no other backend is left to try",
  ),
  send_proxy: sendProxy.optional().describe("overrides the pool's send_proxy for this backend"),
});

// A module of the operator's (programmable.ts): a path relative to the config file.
const moduleRef = z.strictObject({
  module: z.string({ error: "expected a path to a .ts or .js module" }).min(1, {
    error: "expected a path to a .ts or .js module",
  }).describe("a path relative to the config file (see docs/programmable.md)"),
  options: z.record(z.string(), z.unknown(), { error: "expected a mapping" }).optional()
    .describe("handed to the module as ctx.options"),
}, { error: "expected { module: PATH, options }" });

const healthSchema = z.strictObject({
  check: z.union([
    z.literal("tcp"),
    z.strictObject({ send: hex, expect: hex }),
    moduleRef,
  ], { error: 'expected "tcp", { send: HEX, expect: HEX } or { module: PATH }' }).optional()
    .describe(
      "active checks; none when left out",
    ),
  interval_ms: milliseconds(2000),
  timeout_ms: milliseconds(1000),
  rise: whole(1, 100, 2),
  fall: whole(1, 100, 3),
  backoff_base_ms: milliseconds(1000),
  backoff_max_ms: milliseconds(30000),
  slow_start_ms: milliseconds(0, 0),
  on_down: z.enum(["keep-sessions", "shutdown-sessions"], {
    error: "expected keep-sessions or shutdown-sessions",
  }).default("keep-sessions").describe(
    "when a backend is marked down (checks, or disabled through the admin API): its open " +
      "connections stay (keep-sessions) or are closed at once (shutdown-sessions), so clients " +
      "reconnect to another, e.g. a new primary",
  ),
});

/** How often a DNS name is resolved again when `discover.interval_ms` is left out. */
export const DISCOVER_INTERVAL_MS = 5000;

// Where a pool learns its backends at run time (discovery.ts): a DNS name,
// or a key prefix in etcd. Which of the two is checked with the pool.
const discoverSchema = z.strictObject({
  dns: z.string({ error: "expected a DNS name" }).regex(
    /^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/,
    { error: "expected a DNS name such as _echo._tcp.service.example" },
  ).optional().describe("a name to resolve: its A, AAAA or SRV records are the backends"),
  type: z.enum(["A", "AAAA", "SRV"], { error: "expected A, AAAA or SRV" }).optional()
    .describe(
      "A (the default), AAAA, or SRV: host, port and weight; priorities past the lowest are backups",
    ),
  port: optionalWhole(1, 65535).describe("the backends' port, for A and AAAA"),
  resolver: address().superRefine((text, context) => {
    try {
      if (isIpLiteral(parseHostPort(text).hostname)) return;
    } catch {
      return; // reported by address()
    }
    context.addIssue({
      code: "custom",
      message: `${JSON.stringify(text)}: expected the name server's IP address and port ` +
        `(a name server is not found by name), such as 127.0.0.1:53`,
    });
  }).optional().describe("the name server, IP:PORT; the system's when left out"),
  interval_ms: optionalWhole(100, MAX_MS).describe(
    `how often the name is resolved again, in milliseconds (default ${DISCOVER_INTERVAL_MS})`,
  ),
  etcd: z.string({ error: "expected an http:// URL" }).superRefine((text, context) => {
    let url: URL | undefined;
    try {
      url = new URL(text);
    } catch {
      url = undefined;
    }
    const bare = url !== undefined && (url.protocol === "http:" || url.protocol === "https:") &&
      url.pathname === "/" && url.search === "" && url.hash === "" && url.username === "";
    if (!bare) {
      context.addIssue({
        code: "custom",
        message: `${JSON.stringify(text)}: expected an etcd v3 endpoint such as ` +
          `http://127.0.0.1:2379 (scheme, host and port only)`,
      });
    }
  }).optional().describe("an etcd v3 endpoint, watched under prefix"),
  prefix: z.string({ error: "expected a key prefix" }).min(1, { error: "expected a key prefix" })
    .optional().describe(
      'each key under it holds one backend: {"address": "HOST:PORT", "weight": N}',
    ),
}, { error: "expected { dns: NAME, type, port, resolver } or { etcd: URL, prefix: KEY }" });

const poolSchema = z.strictObject({
  balance: z.union([z.enum(STRATEGY_NAMES), moduleRef], {
    error: `expected one of ${STRATEGY_NAMES.join(", ")}, or { module: PATH }`,
  }).default("round-robin"),
  backends: z.array(backendSchema, { error: "expected a list of backends" }).default([])
    .describe("static backends; at least one unless discover is given"),
  discover: discoverSchema.optional().describe(
    "backends learned at run time from DNS or etcd, beside the static ones",
  ),
  on_remove: z.enum(["drain", "close"], { error: "expected drain or close" }).default("drain")
    .describe(
      "a backend that leaves the pool (discovery, admin API, reload): its open connections " +
        "finish (drain) or are closed at once (close)",
    ),
  health: healthSchema.prefault({}),
  timeouts: z.strictObject({
    connect_ms: milliseconds(5000),
    idle_ms: milliseconds(3_600_000).describe("an hour, so quiet database connections stay"),
    half_closed_ms: milliseconds(60_000),
  }).prefault({}),
  maxconn_per_backend: whole(0, 1_000_000, 0).describe("0 is no limit"),
  send_proxy: sendProxy.default("off").describe(
    "send each backend a PROXY protocol header (v1 text, v2 binary) naming the client",
  ),
  queue: z.strictObject({
    max: whole(0, 1_000_000, 1000),
    timeout_ms: milliseconds(5000),
  }).prefault({}),
});

const routeSchema = z.strictObject({
  match: z.strictObject({
    sni: z.string({ error: "expected a host name, or *.domain" }).regex(
      /^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/,
      { error: "expected a host name, or *.domain" },
    ).optional().describe("the TLS ClientHello's server name; *.example.com matches one label"),
    alpn: z.string({ error: "expected a protocol name such as h2" }).min(1).optional()
      .describe("a protocol the TLS ClientHello offers (ALPN)"),
    source: cidrs.min(1).optional().describe("the client's address is in one of these"),
    prefix: z.string({ error: "expected text the connection starts with" }).min(1).max(256)
      .optional().describe("the first bytes the client sends"),
    module: z.string({ error: "expected a path to a .ts or .js module" }).min(1).optional()
      .describe("a matcher module: match(firstBytes, ctx) decides (docs/programmable.md)"),
  }, { error: "expected { sni, alpn, source, prefix or module }" }).refine(
    (match) => Object.keys(match).length > 0,
    { error: "expected at least one of sni, alpn, source, prefix, module" },
  ),
  pool: name("the name of a pool"),
}, { error: "expected { match: { sni, alpn, source or prefix }, pool }" });

/** A listener's `listen`: `HOST:PORT` for TCP, `udp://HOST:PORT` for UDP. */
const listenAddress = z.string({ error: "expected HOST:PORT, or udp://HOST:PORT" }).superRefine(
  (text, context) => {
    // A scheme other than udp:// (tcp://, UDP://, udp:HOST) would read as a bad IPv6 address.
    const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) || /^udp:/i.test(text);
    if (scheme && !text.startsWith(UDP_SCHEME)) {
      context.addIssue({
        code: "custom",
        message: `expected HOST:PORT for TCP, or udp://HOST:PORT (lowercase) for UDP`,
      });
      return;
    }
    try {
      parseListen(text);
    } catch (error) {
      context.addIssue({ code: "custom", message: (error as Error).message });
    }
  },
);

const udpSchema = z.strictObject({
  session_idle_ms: milliseconds(DEFAULT_UDP.sessionIdleMs).describe(
    "a client's flow is forgotten after this long without a datagram either way",
  ),
  responses: whole(0, 1_000_000, DEFAULT_UDP.responses).describe(
    "the flow ends after this many datagrams back from the backend (1 for DNS); 0 is no limit",
  ),
  max_sessions: whole(1, 10_000_000, DEFAULT_UDP.maxSessions).describe(
    "flows at most; the least recently used are dropped first",
  ),
}, { error: "expected { session_idle_ms, responses, max_sessions }" });

const listenerSchema = z.strictObject({
  name: name("a name"),
  listen: listenAddress.describe("HOST:PORT for TCP; udp://HOST:PORT for UDP datagrams"),
  pool: name("the name of a pool").optional().describe(
    "where connections go; with routes, where those no route matches go (none: closed)",
  ),
  maxconn: whole(1, 1_000_000, 10000),
  accept_proxy: z.boolean({ error: "expected true or false" }).default(false).describe(
    "every connection starts with a PROXY v1 or v2 header naming the real client",
  ),
  accept_proxy_from: cidrs.optional().describe(
    "peers allowed to send a PROXY header; others closed",
  ),
  allow: cidrs.default([]).describe("only clients from these sources (none: all)"),
  deny: cidrs.default([]).describe("never clients from these sources; wins over allow"),
  per_source: z.strictObject({
    maxconn: optionalWhole(1, 1_000_000).describe("connections at once from one source"),
    rate_per_s: optionalWhole(1, 1_000_000).describe(
      "new connections per second from one source (a token bucket)",
    ),
    burst: optionalWhole(1, 1_000_000).describe("the bucket's size; rate_per_s when left out"),
    ipv6_prefix: whole(1, 128, 64).describe("IPv6 sources are counted per network of this prefix"),
    table_size: whole(1, 10_000_000, 65536).describe(
      "sources remembered at most; the least recently seen are forgotten first",
    ),
  }).optional(),
  peek_timeout_ms: milliseconds(5000).describe(
    "how long a PROXY header, or the first bytes routes look at, may take to arrive",
  ),
  tls: z.strictObject({
    cert: z.string({ error: "expected a file path" }).min(1, { error: "expected a file path" })
      .describe("the certificate chain, PEM"),
    key: z.string({ error: "expected a file path" }).min(1, { error: "expected a file path" })
      .describe("its private key, PEM"),
    alpn: z.array(z.string().min(1), { error: "expected a list of protocol names" }).default([])
      .describe("protocols to offer in the handshake, e.g. [h2, http/1.1]"),
  }).optional().describe(
    "terminate TLS here: clients speak TLS, backends get the plain bytes (deno engine)",
  ),
  routes: z.array(routeSchema, { error: "expected a list of routes" }).default([]).describe(
    "the first route whose match holds picks the pool; bytes are forwarded unchanged",
  ),
  udp: udpSchema.optional().describe("flows of a UDP listener (listen: udp://…)"),
});

/** The whole file. */
export const configSchema = z.strictObject({
  $schema: z.string().optional(),
  listeners: z.array(listenerSchema, { error: "expected a list of listeners" }).min(1, {
    error: "expected at least one listener",
  }),
  pools: z.record(name("a pool name"), poolSchema, { error: "expected pools by name" })
    // Looked up by names from the file: no prototype to stumble on.
    .transform((pools) => Object.assign(Object.create(null), pools) as typeof pools),
  drain_timeout_ms: milliseconds(30000),
  workers: whole(1, 64, 1),
  threads: whole(1, 64, 1).describe(
    "data-plane threads in this process, each with its own listening socket (epoll engine)",
  ),
  engine: z.enum(["auto", "epoll", "deno"], { error: "expected auto, epoll or deno" }).default(
    "auto",
  ).describe(
    "what moves the bytes: epoll (Linux system calls through FFI) or deno (Deno.listen); " +
      "auto is epoll on Linux x86_64/aarch64 with --allow-ffi, deno otherwise",
  ),
  access_log: z.string({ error: "expected a file path" }).min(1, { error: "expected a file path" })
    .optional().describe("append access lines to this file; stdout when left out"),
  state_file: z.string({ error: "expected a file path" }).min(1, { error: "expected a file path" })
    .optional().describe(
      "keeps the admin API's changes (backends added, removed, drained, disabled, weights) " +
        "across reloads and restarts; written after each change",
    ),
  log_format: z.enum(["text", "json"], { error: "expected text or json" }).optional().describe(
    "access lines as key=value text or JSON; text on a terminal, json otherwise when left out",
  ),
  admin: z.strictObject({
    listen: z.preprocess(
      loopbackIfBarePort,
      address({ allowPortZero: true }),
    ).describe(
      "where the admin API listens: HOST:PORT, or a port on 127.0.0.1; an address off " +
        "loopback needs a token",
    ),
    token_file: z.string({ error: "expected a file path" }).optional().describe(
      "a file holding the bearer token changes need; none means changes are refused",
    ),
  }).optional(),
}).superRefine((config, context) => {
  const names = new Set<string>();
  const addresses = new Set<string>();
  const noPool = (path: (string | number)[], pool: string) =>
    context.addIssue({
      code: "custom",
      path,
      message: `no pool named ${JSON.stringify(pool)}; pools are ${
        Object.keys(config.pools).map((name) => JSON.stringify(name)).join(", ") || "none"
      }`,
    });
  config.listeners.forEach((listener, i) => {
    if (listener.pool === undefined && listener.routes.length === 0) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "pool"],
        message: "expected a pool (or routes that name pools)",
      });
    } else if (listener.pool !== undefined && !Object.hasOwn(config.pools, listener.pool)) {
      noPool(["listeners", i, "pool"], listener.pool);
    }
    if (listener.accept_proxy_from !== undefined && !listener.accept_proxy) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "accept_proxy_from"],
        message: "given without accept_proxy: true, so a PROXY header would reach the backends " +
          "as data; set accept_proxy too, or leave this out",
      });
    }
    listener.routes.forEach((route, r) => {
      if (!Object.hasOwn(config.pools, route.pool)) {
        noPool(["listeners", i, "routes", r, "pool"], route.pool);
      }
    });
    if (names.has(listener.name)) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "name"],
        message: `${JSON.stringify(listener.name)} is already the name of another listener`,
      });
    }
    // Port 0 asks the kernel for any free port: two such listeners never clash.
    if (addresses.has(listener.listen) && !/:0$/.test(listener.listen)) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "listen"],
        message: `${JSON.stringify(listener.listen)} is already another listener's address`,
      });
    }
    names.add(listener.name);
    addresses.add(listener.listen);
  });
  // Addresses that would fail to bind beside each other: the same port on
  // the same host, on a wildcard, or on a name that may resolve to the other.
  const sockets: { path: (string | number)[]; text: string }[] = [
    ...config.listeners.map((l, i) => ({ path: ["listeners", i, "listen"], text: l.listen })),
    ...(config.admin ? [{ path: ["admin", "listen"], text: config.admin.listen }] : []),
  ];
  sockets.forEach((socket, i) => {
    const earlier = sockets.slice(0, i).find((other) =>
      // Two listeners on one address are reported above.
      !(other.text === socket.text && socket.path[0] === "listeners") &&
      socketsOverlap(other.text, socket.text)
    );
    if (earlier === undefined) return;
    context.addIssue({
      code: "custom",
      path: socket.path,
      message: `${JSON.stringify(socket.text)} overlaps ${formatPath(earlier.path)} ` +
        `${JSON.stringify(earlier.text)}: both would need port ${
          parseListen(socket.text).address.port
        } on the same address`,
    });
  });
  if (config.workers > 1 && config.admin !== undefined) {
    context.addIssue({
      code: "custom",
      path: ["workers"],
      message: `the admin API with workers ${config.workers} is not supported yet (each worker ` +
        `would need its own port); use one worker, or leave the admin API out`,
    });
  }
  config.listeners.forEach((listener, i) => {
    if (listener.tls === undefined) return;
    if (listener.accept_proxy) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "accept_proxy"],
        message: "a PROXY header comes before TLS, and this listener terminates TLS: " +
          "not supported together yet",
      });
    }
    if (config.workers > 1) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "tls"],
        message: `tls with workers ${config.workers} is not supported: use one worker`,
      });
    }
    if (listener.routes.some((r) => r.match.sni !== undefined || r.match.alpn !== undefined)) {
      context.addIssue({
        code: "custom",
        path: ["listeners", i, "routes"],
        message: "sni and alpn routes read the ClientHello of TLS passed through; with tls " +
          "here the balancer terminates it: route by source or prefix instead",
      });
    }
  });
  checkUdp(config, context);
  if (config.threads > 1 && config.engine === "deno") {
    context.addIssue({
      code: "custom",
      path: ["threads"],
      message: `threads ${config.threads} needs the epoll engine (engine auto or epoll), ` +
        `not deno: the deno engine runs in one thread`,
    });
  }
  if (config.workers > 1 && config.listeners.length !== 1) {
    context.addIssue({
      code: "custom",
      path: ["workers"],
      message: `workers ${config.workers} with ${config.listeners.length} listeners: ` +
        `workers support one listener for now`,
    });
  }
  // A backend that is one of the balancer's own listeners: every connection
  // would come back in, and take a descriptor each, until none is left.
  config.listeners.forEach((listener) => {
    const pool = listener.pool !== undefined && Object.hasOwn(config.pools, listener.pool)
      ? config.pools[listener.pool]
      : undefined;
    pool?.backends.forEach((backend, i) => {
      if (!loopsBack(listener.listen, backend.address)) return;
      context.addIssue({
        code: "custom",
        path: ["pools", listener.pool!, "backends", i, "address"],
        message: `${JSON.stringify(backend.address)} is listener ${listener.name}'s own address ` +
          `(${listener.listen}): every connection would loop back into the balancer`,
      });
    });
  });
  for (const [name, pool] of Object.entries(config.pools)) {
    checkDiscover(pool, ["pools", name], context);
    const seen = new Map<string, number>();
    pool.backends.forEach((backend, i) => {
      let key: string;
      try {
        key = formatHostPort(parseHostPort(backend.address));
      } catch {
        return; // reported on its own
      }
      const first = seen.get(key);
      if (first === undefined) {
        seen.set(key, i);
        return;
      }
      context.addIssue({
        code: "custom",
        path: ["pools", name, "backends", i, "address"],
        message: `${JSON.stringify(backend.address)} is already backends[${first}] of this ` +
          `pool; give each backend once (use weight for a bigger share)`,
      });
    });
    if (pool.health.backoff_max_ms < pool.health.backoff_base_ms) {
      context.addIssue({
        code: "custom",
        path: ["pools", name, "health", "backoff_max_ms"],
        message:
          `must be at least backoff_base_ms (${pool.health.backoff_base_ms}): got ${pool.health.backoff_max_ms}`,
      });
    }
  }
});

// The schemas' own defaults, for telling a setting given from one left out.
const LISTENER_DEFAULTS = {
  maxconn: listenerSchema.shape.maxconn.parse(undefined),
  peek_timeout_ms: listenerSchema.shape.peek_timeout_ms.parse(undefined),
};
const POOL_DEFAULTS = {
  timeouts: poolSchema.shape.timeouts.parse(undefined),
  queue: poolSchema.shape.queue.parse(undefined),
};

// A UDP listener takes what UDP can carry; a pool serves one transport, and
// a UDP pool's PROXY headers and checks have a UDP form.
function checkUdp(config: z.output<typeof configSchema>, context: z.RefinementCtx): void {
  const issue = (path: (string | number)[], message: string) =>
    context.addIssue({ code: "custom", path, message });
  const users = new Map<string, { transport: "tcp" | "udp"; listener: string }>();
  config.listeners.forEach((listener, i) => {
    let transport: "tcp" | "udp";
    try {
      transport = parseListen(listener.listen).transport;
    } catch {
      return; // reported on its own
    }
    if (transport === "tcp" && listener.udp !== undefined) {
      issue(
        ["listeners", i, "udp"],
        "udp settings on a TCP listener: listen on udp://HOST:PORT, or leave udp out",
      );
    }
    if (transport === "udp" && config.workers > 1) {
      issue(
        ["workers"],
        `workers ${config.workers} with UDP listener ${listener.name}: not supported; ` +
          "use threads (epoll engine) for more cores",
      );
    }
    if (transport === "udp") {
      const tcpOnly: [string, boolean][] = [
        ["tls", listener.tls !== undefined],
        ["accept_proxy", listener.accept_proxy],
        ["accept_proxy_from", listener.accept_proxy_from !== undefined],
        ["allow", listener.allow.length > 0],
        ["deny", listener.deny.length > 0],
        ["per_source", listener.per_source !== undefined],
        ["routes", listener.routes.length > 0],
        // Set, as far as can be told once defaults are in: not at the default.
        ["maxconn", listener.maxconn !== LISTENER_DEFAULTS.maxconn],
        ["peek_timeout_ms", listener.peek_timeout_ms !== LISTENER_DEFAULTS.peek_timeout_ms],
      ];
      for (const [key, given] of tcpOnly) {
        if (!given) continue;
        issue(
          ["listeners", i, key],
          `${key} is for TCP listeners; a UDP listener (${listener.listen}) does not take it yet`,
        );
      }
    }
    for (const pool of [listener.pool, ...listener.routes.map((r) => r.pool)]) {
      if (pool === undefined) continue;
      const other = users.get(pool);
      if (other === undefined) users.set(pool, { transport, listener: listener.name });
      else if (other.transport !== transport) {
        issue(
          ["listeners", i, "pool"],
          `pool ${pool} already serves ${other.transport.toUpperCase()} listener ` +
            `${other.listener}; a pool serves TCP or UDP, not both: give this listener its own pool`,
        );
      }
    }
  });
  for (const [name, { transport }] of users) {
    const pool = config.pools[name];
    if (transport !== "udp" || pool === undefined) continue;
    // What only a TCP connection has (UDP flows have udp.session_idle_ms instead).
    const tcpOnly: [string[], boolean][] = [
      [["timeouts", "connect_ms"], pool.timeouts.connect_ms !== POOL_DEFAULTS.timeouts.connect_ms],
      [["timeouts", "idle_ms"], pool.timeouts.idle_ms !== POOL_DEFAULTS.timeouts.idle_ms],
      [
        ["timeouts", "half_closed_ms"],
        pool.timeouts.half_closed_ms !== POOL_DEFAULTS.timeouts.half_closed_ms,
      ],
      [["queue", "max"], pool.queue.max !== POOL_DEFAULTS.queue.max],
      [["queue", "timeout_ms"], pool.queue.timeout_ms !== POOL_DEFAULTS.queue.timeout_ms],
    ];
    for (const [key, given] of tcpOnly) {
      if (!given) continue;
      issue(
        ["pools", name, ...key],
        `${key.join(".")} is for TCP connections; pool ${name} serves UDP, whose flows ` +
          "have no connect, queue or half-close (a flow ends after its listener's " +
          "udp.session_idle_ms of silence)",
      );
    }
    const v1 = "PROXY v1 has no UDP form: use v2 (each datagram then starts with a v2 header) " +
      "or off";
    if (pool.send_proxy === "v1") issue(["pools", name, "send_proxy"], v1);
    pool.backends.forEach((backend, b) => {
      if (backend.send_proxy === "v1") issue(["pools", name, "backends", b, "send_proxy"], v1);
      let host: string;
      try {
        host = parseHostPort(backend.address).hostname;
      } catch {
        return; // reported on its own
      }
      if (!isIpLiteral(host)) {
        issue(
          ["pools", name, "backends", b, "address"],
          `a UDP backend needs an IP address (its replies are matched by address): ` +
            `got ${JSON.stringify(backend.address)}`,
        );
      }
    });
    const check = pool.health.check;
    if (check === "tcp" || (typeof check === "object" && "module" in check)) {
      issue(
        ["pools", name, "health", "check"],
        "a UDP pool is checked over UDP with { send: HEX, expect: HEX }; " +
          `${check === "tcp" ? "tcp" : "a module"} checks a TCP port`,
      );
    }
  }
}

// A pool needs backends from somewhere, and a discover block names one source.
function checkDiscover(
  pool: z.output<typeof poolSchema>,
  path: (string | number)[],
  context: z.RefinementCtx,
): void {
  const issue = (at: string[], message: string) =>
    context.addIssue({ code: "custom", path: [...path, ...at], message });
  const discover = pool.discover;
  if (discover === undefined) {
    if (pool.backends.length === 0) {
      issue(
        ["backends"],
        "expected at least one backend (or a discover block to learn them), got []",
      );
    }
    return;
  }
  const { dns, etcd } = discover;
  if (dns !== undefined && etcd !== undefined) {
    issue(
      ["discover"],
      `expected one source, got both dns ${JSON.stringify(dns)} and etcd ` +
        `${JSON.stringify(etcd)}: use one pool for each`,
    );
  } else if (dns === undefined && etcd === undefined) {
    issue(
      ["discover"],
      `expected a source, dns: NAME or etcd: URL (with prefix: KEY); got only ${
        Object.keys(discover).filter((k) => discover[k as keyof typeof discover] !== undefined)
          .join(", ") || "nothing"
      }`,
    );
  } else if (dns !== undefined) {
    if (discover.prefix !== undefined) issue(["discover", "prefix"], "is for etcd, not dns");
    const type = discover.type ?? "A";
    if (type === "SRV" && discover.port !== undefined) {
      issue(
        ["discover", "port"],
        `SRV records carry their own ports: leave port out, got ${discover.port}`,
      );
    }
    if (type !== "SRV" && discover.port === undefined) {
      issue(["discover", "port"], `missing; type ${type} needs the backends' port`);
    }
  } else {
    if (discover.prefix === undefined) {
      issue(["discover", "prefix"], "missing; etcd needs the key prefix to watch, e.g. /lb/web/");
    }
    for (const key of ["type", "port", "resolver", "interval_ms"] as const) {
      const value = discover[key];
      if (value !== undefined) {
        issue(
          ["discover", key],
          `is for dns, not etcd (etcd is watched), got ${JSON.stringify(value)}`,
        );
      }
    }
  }
}

/**
 * One backend as a discovery source gives it (`{"address": …, "weight": …}`),
 * checked as the file's are: the backend, or what is wrong with it.
 */
export function checkBackend(
  raw: unknown,
): { backend: PoolConfig["backends"][number] } | { problem: string } {
  const result = backendSchema.safeParse(raw);
  if (result.success) return { backend: result.data };
  const issue = issueOf(result.error.issues[0]!, raw, backendSchema);
  const where = issue.path.length > 0 ? `${formatPath(issue.path)}: ` : "";
  return { problem: `${where}${issue.message}` };
}

/**
 * The pool a listener's balancer is built on: its own, else its first
 * route's (whose timeouts its connections then keep; clients no route
 * matched are closed).
 */
export function listenerPool(listener: { pool?: string; routes: { pool: string }[] }): string {
  return listener.pool ?? listener.routes[0]!.pool;
}

/**
 * What names a listener across reloads: its address, or for port 0 (any
 * free port, so several may share the text) its address and its name.
 */
export function listenerKey(listener: { listen: string; name: string }): string {
  return /:0$/.test(listener.listen) ? `${listener.listen}#${listener.name}` : listener.listen;
}

/** Whether two listen addresses could not both be bound (port 0 never clashes). */
export function socketsOverlap(a: string, b: string): boolean {
  let first: HostPort, second: HostPort;
  try {
    const [x, y] = [parseListen(a), parseListen(b)];
    if (x.transport !== y.transport) return false; // a UDP port and a TCP port are two things
    [first, second] = [x.address, y.address];
  } catch {
    return false; // reported on its own
  }
  if (first.port === 0 || first.port !== second.port) return false;
  return hostsOverlap(canonicalHost(first.hostname), canonicalHost(second.hostname));
}

function hostsOverlap(a: string, b: string): boolean {
  const covers = (wide: string, other: string) =>
    // `[::]` takes IPv4 too (dual stack); `0.0.0.0` takes every IPv4 address.
    wide === "::" || (wide === "0.0.0.0" && !other.includes(":"));
  const isName = (host: string) => !isIpLiteral(host);
  return a === b || covers(a, b) || covers(b, a) || isName(a) || isName(b);
}

/**
 * Whether connecting to `backend` would reach the listener on `listen`:
 * the same port, and the same host, or a loopback host under a wildcard
 * listener. A remote host name on the same port is someone else's.
 */
export function loopsBack(listen: string, backend: string): boolean {
  let from: HostPort, to: HostPort;
  try {
    from = parseListen(listen).address;
    to = parseHostPort(backend);
  } catch {
    return false;
  }
  if (from.port !== to.port) return false;
  const [l, b] = [canonicalHost(from.hostname), canonicalHost(to.hostname)];
  const local = b === "localhost" || b === "::1" || b.startsWith("127.");
  if (l === b) return true;
  if (l === "::") return local;
  if (l === "0.0.0.0") return local && b !== "::1";
  return b === "localhost" && (l.startsWith("127.") || l === "::1");
}

/** A validated configuration, defaults filled in. */
export type Config = z.output<typeof configSchema>;
/** One pool of a {@linkcode Config}. */
export type PoolConfig = Config["pools"][string];

/** One thing wrong in a config: where, and what (without the place). */
export interface ConfigIssue {
  readonly path: readonly PropertyKey[];
  /** What was expected, and what was found. */
  readonly message: string;
}

/** A file that cannot be used; `problems` has one line per thing to fix. */
export class ConfigError extends Error {
  override name = "ConfigError";
  readonly problems: string[];
  /** The same problems with their place apart, when the schema found them. */
  readonly issues: readonly ConfigIssue[];
  constructor(problems: string[], issues: readonly ConfigIssue[] = []) {
    super(problems.join("\n"));
    this.problems = problems;
    this.issues = issues;
  }
}

/**
 * The configuration without a file: the lab's one listener on
 * 127.0.0.1:5000 and its pool of 127.0.0.1:5001 and 127.0.0.1:5002. Flags
 * change it as they would change a file.
 */
export function labConfig(): Record<string, unknown> {
  return {
    listeners: [{ name: "default", listen: "127.0.0.1:5000", pool: "default" }],
    pools: {
      default: { backends: [{ address: "127.0.0.1:5001" }, { address: "127.0.0.1:5002" }] },
    },
  };
}

/** The lab's configuration with every default filled in: where `--help` reads its defaults. */
export function configDefaults(): Config {
  return validateConfig(labConfig());
}

/** `listeners[0].pool`, `pools.web.backends[2].address`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let text = "";
  for (const key of path) {
    if (typeof key === "number") text += `[${key}]`;
    else text += text === "" ? String(key) : `.${String(key)}`;
  }
  return text || "(the file)";
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let value = root;
  for (const key of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

/**
 * A value from the file, for a message: JSON, at most 60 characters. Safe on
 * anything YAML can build, self-references (`&a … *a`) included.
 */
export function showValue(value: unknown): string {
  // JSON writes Infinity and NaN (YAML's .inf and .nan) as null: show them as they are.
  if (typeof value === "number") return String(value);
  const seen = new Set<unknown>();
  let text: string | undefined;
  try {
    text = JSON.stringify(value, (_key, inner) => {
      if (inner !== null && typeof inner === "object") {
        if (seen.has(inner)) return "[itself]";
        seen.add(inner);
      }
      if (typeof inner === "number" && !Number.isFinite(inner)) return String(inner);
      return typeof inner === "bigint" ? String(inner) : inner;
    });
  } catch {
    text = undefined;
  }
  try {
    text ??= String(value);
  } catch {
    // Nested too deep for either to write.
    text = Array.isArray(value) ? "[...]" : "{...}";
  }
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

// The keys the object at `path` of `schema` takes, or undefined where the
// schema is not a plain walk down objects, records and arrays (a union, …).
function keysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] | undefined {
  // deno-lint-ignore no-explicit-any
  let at: any = schema;
  const unwrap = () => {
    for (let i = 0; i < 10; i++) {
      const def = at?._zod?.def;
      if (def?.innerType !== undefined) at = def.innerType;
      else if (def?.type === "pipe") at = def.in;
      else return;
    }
  };
  for (const key of path) {
    unwrap();
    const def = at?._zod?.def;
    if (def?.type === "object") at = def.shape[key as string];
    else if (def?.type === "record") at = def.valueType;
    else if (def?.type === "array") at = def.element;
    else return undefined;
  }
  unwrap();
  const def = at?._zod?.def;
  return def?.type === "object" ? Object.keys(def.shape) : undefined;
}

function issueOf(
  issue: z.core.$ZodIssue,
  raw: unknown,
  schema: z.ZodType = configSchema,
): ConfigIssue {
  const path = issue.path as PropertyKey[];
  if (issue.code === "unrecognized_keys") {
    const known = keysAt(schema, path);
    return {
      path,
      message: `unknown key(s) ${issue.keys.map((key) => JSON.stringify(key)).join(", ")}` +
        (known === undefined ? "" : `; expected ${known.join(", ")}`),
    };
  }
  // Our custom rules already name the value.
  if (issue.code === "custom") return { path, message: issue.message };
  const value = valueAt(raw, issue.path);
  if (value === undefined) return { path, message: `missing; ${issue.message}` };
  return { path, message: `${issue.message}, got ${showValue(value)}` };
}

/** Validates a parsed file (or one built from flags), filling defaults. @throws {ConfigError} */
export function validateConfig(raw: unknown): Config {
  if (raw === null || raw === undefined) {
    throw new ConfigError([
      "the file is empty; expected listeners and pools (see lb.example.yaml)",
    ]);
  }
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new ConfigError([
      `expected a mapping with listeners and pools (see lb.example.yaml), got ${showValue(raw)}`,
    ]);
  }
  // Checked before the schema: a key like `__proto__` would not survive
  // being copied into an object, and so would vanish unreported.
  const pools = (raw as Record<string, unknown>).pools;
  if (pools !== null && typeof pools === "object" && !Array.isArray(pools)) {
    const bad = Object.keys(pools).filter((key) => !NAME.test(key));
    if (bad.length > 0) {
      const issues = bad.map((key) => ({
        path: ["pools", key],
        message: `${JSON.stringify(key)} is not a pool name: ${NAME_RULE}`,
      }));
      throw new ConfigError(issues.map((i) => `${formatPath(i.path)}: ${i.message}`), issues);
    }
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    // Said once: a number past 2^53 fails both int() and a bound, in the same
    // words, and two listeners alike can find the same fault in a shared pool.
    const said = new Set<string>();
    const issues = result.error.issues.map((issue) => issueOf(issue, raw)).filter((issue) => {
      const line = `${formatPath(issue.path)}: ${issue.message}`;
      if (said.has(line)) return false;
      said.add(line);
      return true;
    });
    throw new ConfigError(
      issues.map((issue) => `${formatPath(issue.path)}: ${issue.message}`),
      issues,
    );
  }
  return result.data;
}

/** Parses a config file's text, YAML or JSON, without validating it. @throws {ConfigError} */
export function parseConfigText(text: string): unknown {
  try {
    // Plain data only: the YAML 1.1 tags (!!binary, !!set, !!timestamp, ...) would
    // build Buffers, Sets and Dates, whose own methods read as unknown keys; and
    // the yaml package's warnings would go to stderr past our one-line messages.
    return parseYaml(text, { resolveKnownTags: false, logLevel: "error" });
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) {
      // The yaml package reads two debug switches from the environment.
      throw new ConfigError([
        "reading YAML needs --allow-env=LOG_TOKENS,LOG_STREAM (the yaml package's debug switches)",
      ]);
    }
    throw new ConfigError([`not valid YAML or JSON: ${yamlProblem(error)}`]);
  }
}

// The yaml package ends its first line with "at line 2, column 1:" and puts
// the excerpt on the lines after it: keep one line, with the place in it.
function yamlProblem(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const first = message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "");
  const place = (error as { linePos?: { line: number; col: number }[] }).linePos?.[0];
  return place === undefined ? first : `line ${place.line}, column ${place.col}: ${first}`;
}

/** Parses and validates a config file's text. @throws {ConfigError} */
export function parseConfig(text: string): Config {
  return validateConfig(parseConfigText(text));
}

/** Reads a config file and parses it, without validating it. @throws {ConfigError} */
export async function readConfigFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new ConfigError([`cannot read it: ${(error as Error).message}`]);
  }
  return parseConfigText(text);
}

/** The JSON Schema of the file, for editors (`deno task schema`). */
export function jsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(configSchema, { io: "input" }) as Record<string, unknown>;
}

/**
 * Calls `onChange` when the file at `path` changes, at most once per 100 ms
 * burst of events (`--watch`); `onStop` if watching fails. Watches the folder:
 * editors often replace the file rather than write it.
 */
export function watchConfig(
  path: string,
  onChange: (why: string) => void,
  onStop: (error: unknown) => void,
  clock: Clock = realClock,
): void {
  let timer: number | undefined;
  (async () => {
    const folder = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
    const name = path.slice(path.lastIndexOf("/") + 1);
    for await (const event of Deno.watchFs(folder, { recursive: false })) {
      if (!event.paths.some((changed) => changed.endsWith(`/${name}`))) continue;
      clock.clearTimer(timer);
      timer = clock.setTimer(() => onChange("file changed"), 100);
    }
  })().catch(onStop);
}
