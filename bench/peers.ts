/**
 * Configuration for the programs the benchmark runs beside us: HAProxy and
 * the NGINX stream module as proxies to compare with, and NGINX's HTTP module
 * as the tiny backend for request/response loads; and the config file our
 * balancer takes for the UDP load (a UDP listener has no flag). Pure text;
 * the caller writes it to a file.
 *
 * @module
 */

/** Where a proxy listens and which backends it balances over. */
export interface ProxySetup {
  listenPort: number;
  backendPorts: number[];
}

/** HAProxy in `mode tcp`, one thread, default buffers, round robin. */
export function haproxyConfig({ listenPort, backendPorts }: ProxySetup): string {
  return `global
  nbthread 1
  maxconn 8000

defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h

frontend bench
  bind 127.0.0.1:${listenPort}
  default_backend pool

backend pool
  balance roundrobin
${backendPorts.map((port, i) => `  server s${i + 1} 127.0.0.1:${port}`).join("\n")}
`;
}

/** Lines every NGINX config here shares: one worker, no daemon, files under `dir`. */
function nginxPreamble(dir: string): string {
  return `worker_processes 1;
daemon off;
# One process doing the work, whose CPU we can read directly.
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
worker_rlimit_nofile 20000;
events { worker_connections 10000; }
`;
}

/** The NGINX stream module, one worker, round robin over the backends. */
export function nginxStreamConfig(
  { listenPort, backendPorts }: ProxySetup,
  dir: string,
  modulePath: string,
): string {
  return `load_module ${modulePath};
${nginxPreamble(dir)}
stream {
  upstream pool {
${backendPorts.map((port) => `    server 127.0.0.1:${port};`).join("\n")}
  }
  server {
    listen 127.0.0.1:${listenPort};
    proxy_pass pool;
  }
}
`;
}

/**
 * How a UDP proxy in the bench treats a client's flow, the same for NGINX and
 * for us, so both do the same work per datagram.
 */
export interface UdpFlowSetup {
  /** Replies per client datagram after which the flow ends; 0: never (until idle). */
  responses: number;
  /** Silence after which a flow is forgotten, in milliseconds. */
  idleMs: number;
}

/**
 * The NGINX stream module's UDP proxy, one worker, round robin over the
 * backends: `proxy_responses` ends a session once every datagram has had
 * that many replies (left out for 0: a session lasts until `proxy_timeout`).
 */
export function nginxStreamUdpConfig(
  { listenPort, backendPorts }: ProxySetup,
  { responses, idleMs }: UdpFlowSetup,
  dir: string,
  modulePath: string,
): string {
  return `load_module ${modulePath};
${nginxPreamble(dir)}
stream {
  upstream pool {
${backendPorts.map((port) => `    server 127.0.0.1:${port};`).join("\n")}
  }
  server {
    listen 127.0.0.1:${listenPort} udp;
    proxy_pass pool;
${responses > 0 ? `    proxy_responses ${responses};\n` : ""}    proxy_timeout ${idleMs}ms;
  }
}
`;
}

/** This balancer's config file for the UDP load: one UDP listener, one pool, round robin. */
export function balancerUdpConfig(
  { listenPort, backendPorts }: ProxySetup,
  { responses, idleMs }: UdpFlowSetup,
): string {
  return `listeners:
  - name: udp
    listen: udp://127.0.0.1:${listenPort}
    pool: udp
    udp: { session_idle_ms: ${idleMs}, responses: ${responses}, max_sessions: 100000 }
pools:
  udp:
    backends: [${backendPorts.map((port) => `{ address: 127.0.0.1:${port} }`).join(", ")}]
`;
}

/**
 * NGINX answering every HTTP request on each port with a fixed 3-byte body;
 * on `proxyPorts`, each connection must start with a PROXY header.
 */
export function nginxHttpBackendConfig(
  ports: number[],
  dir: string,
  proxyPorts: number[] = [],
): string {
  return `${nginxPreamble(dir)}
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${
    [
      ...ports.map((port) => [port, ""] as const),
      ...proxyPorts.map((port) => [port, " proxy_protocol"] as const),
    ]
      .map(([port, proxy]) =>
        `  server {
    listen 127.0.0.1:${port} reuseport${proxy};
    location / { return 200 "ok\\n"; }
  }`
      ).join("\n")
  }
}
`;
}
