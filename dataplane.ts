/**
 * A data-plane thread: a Worker that owns an epoll loop and runs the
 * listeners on it. Started by threads.ts, never imported.
 *
 * It blocks in `epoll_wait` itself (engine_epoll.ts, owned loop), so no
 * wake-up costs a thread hop. Policy runs here, per connection: proxy.ts's
 * listeners over replicas of the pools the main thread sends (protocol.ts).
 * Health checks, admin changes and reloads happen on the main thread and
 * arrive as messages, each followed by a write to this loop's eventfd; what
 * happens here goes back in batches, at most every 100 ms.
 *
 * @module
 */

import { formatHostPort, parseHostPort, parseListen, UDP_SCHEME } from "./address.ts";
import { EpollEngine } from "./engine_epoll.ts";
import { EpollLoop } from "./epoll_loop.ts";
import { Edge } from "./edge.ts";
import { describe } from "./errors.ts";
import type { LoadBalancerEvent } from "./events.ts";
import { shiftHealth } from "./health.ts";
import { loadModule, strategyFor } from "./modules.ts";
import { Backend, Pool } from "./pool.ts";
import {
  type BackendCounts,
  type BackendSnapshot,
  type FromThread,
  type ListenerSnapshot,
  type PackedEvents,
  packRecord,
  type PoolSnapshot,
  type ToThread,
} from "./protocol.ts";
import { addUdpCounts, type UdpCounts } from "./metrics.ts";
import { LoadBalancer } from "./proxy.ts";
import { UdpBalancer } from "./udp_proxy.ts";

/** Reports flush at least this often while there is something to say. */
const FLUSH_EVERY_MS = 100;
/**
 * ...and at once past this many packed fields (an event is one, an access
 * record eight): records held longer outlive a young-generation collection
 * and are copied, or moved to the old generation, before they are sent.
 */
const FLUSH_AT_FIELDS = 2048;

/** A backend replica that keeps what it must report: connect outcomes and counts. */
class ReplicaBackend extends Backend {
  connects: (true | string)[] = [];
  timesToReport: number[] = [];
  reported = { connections: 0, bytesIn: 0, bytesOut: 0, connectFailures: 0 };

  override recordConnectTime(ms: number): void {
    this.timesToReport.push(ms);
    super.recordConnectTime(ms);
  }

  override recordConnect(ok: boolean, reason?: string): void {
    this.connects.push(ok ? true : reason ?? "connect failed");
    super.recordConnect(ok, reason);
  }
}

/** This Worker's side of the channel (the global scope of a Worker). */
const scope = self as unknown as {
  postMessage(message: FromThread): void;
  onmessage: ((event: MessageEvent<ToThread>) => void) | null;
  close(): void;
};
const post = (message: FromThread) => scope.postMessage(message);
const loop = new EpollLoop({ owned: true });
const engine = new EpollEngine({ loop });
const inbox: ToThread[] = [];
/** Messages that have arrived, against the main thread's count of those it sent. */
let received = 0;
let sent: Int32Array | undefined;
/** Messages are handled one after another, in order, each to its end. */
let handling: Promise<void> = Promise.resolve();
let events: PackedEvents = [];
let pools = new Map<string, Pool>();
let listeners = new Map<string, LoadBalancer | UdpBalancer>();
/** TCP listeners a reload removed, still draining. */
const retiring = new Set<LoadBalancer>();
/** What each UDP listener had counted at the last batch. */
const udpReported = new WeakMap<UdpBalancer, UdpCounts>();
let finished = false;
let flushTimer: number | undefined;

scope.onmessage = (event) => {
  received++;
  inbox.push(event.data);
};

function onEvent(event: LoadBalancerEvent): void {
  // The main thread decides backends' health, and says so itself.
  if (event.type === "backend-state") return;
  if (event.type === "connection") packRecord(events, event.record);
  else events.push(event);
  if (events.length >= FLUSH_AT_FIELDS) flush();
  else flushTimer ??= loop.setTimer(flush, FLUSH_EVERY_MS);
}

function apply(backend: Backend, snapshot: BackendSnapshot): void {
  backend.configure({
    weight: snapshot.weight,
    backup: snapshot.backup,
    maxConnections: snapshot.maxConnections ?? Infinity,
    sendProxy: snapshot.sendProxy,
  });
  backend.adminState = snapshot.adminState;
  backend.health = shiftHealth(snapshot.health, -performance.timeOrigin);
}

function poolOf(snapshot: PoolSnapshot, previous: Pool | undefined): Pool {
  const kept = new Map((previous?.backends ?? []).map((b) => [b.name, b]));
  const backends = snapshot.backends.map((spec) => {
    const backend = kept.get(spec.address) ?? new ReplicaBackend(parseHostPort(spec.address));
    apply(backend, spec);
    return backend;
  });
  return new Pool({
    name: snapshot.name,
    backends,
    strategy: strategyFor<Backend>(
      snapshot.balance,
      snapshot.name,
      (problem, say) => onEvent({ type: "policy-error", pool: snapshot.name, problem, say }),
      () => loop.now(),
    ),
    settings: snapshot.settings,
    queue: snapshot.queue,
    health: snapshot.health,
    activeChecks: snapshot.activeChecks,
    clock: loop,
    onEvent,
  });
}

async function handle(message: ToThread): Promise<void> {
  const { id } = message;
  switch (message.type) {
    case "hello":
      sent = new Int32Array(message.sent);
      loop.track(new Uint8Array(message.held));
      post({ id, type: "applied" });
      return;
    case "die":
      // From the loop itself, where nothing catches it.
      loop.setTimer(() => {
        throw new Error("told to die (a test)");
      }, 0);
      return;
    case "configure": {
      // Modules first, so that nothing waits on an import once connections flow.
      await loop.outside(() => loadModules(message));
      const next = new Map(message.pools.map((p) => [p.name, poolOf(p, pools.get(p.name))]));
      const bound = new Map<string, LoadBalancer | UdpBalancer>();
      try {
        for (const spec of message.listeners) {
          const running = listeners.get(spec.listen);
          const pool = next.get(spec.pool)!;
          if (spec.udp !== undefined) {
            if (running instanceof UdpBalancer) {
              running.reconfigure({ pool, settings: spec.udp });
              bound.set(spec.listen, running);
              continue;
            }
            bound.set(
              spec.listen,
              new UdpBalancer({
                name: spec.name,
                address: parseListen(spec.listen).address,
                reusePort: true,
                engine,
                pool,
                settings: spec.udp,
                clock: loop,
                onEvent,
              }),
            );
            continue;
          }
          const front = {
            routePools: next,
            ...(spec.edge ? { edge: new Edge(spec.edge, loop, running?.edge) } : {}),
          };
          if (running instanceof LoadBalancer) {
            running.reconfigure({ pool, maxConnections: spec.maxconn, ...front });
            bound.set(spec.listen, running);
            continue;
          }
          const socket = engine.listen(parseListen(spec.listen).address, {
            reusePort: true,
          });
          const balancer = new LoadBalancer({
            name: spec.name,
            listener: socket,
            engine,
            pool,
            maxConnections: spec.maxconn,
            ...front,
            clock: loop,
            onEvent,
          });
          bound.set(spec.listen, balancer);
          balancer.serve();
        }
      } catch (error) {
        for (const [listen, balancer] of bound) {
          if (listeners.has(listen)) continue;
          // A UDP socket bound for nothing must not stay in its port's group.
          if (balancer instanceof UdpBalancer) balancer.close();
          else await balancer.stopAccepting();
        }
        return post({ id, type: "failed", message: describe(error) });
      }
      // Switch before anything awaits, so a message handled next sees the new state.
      const [oldPools, oldListeners] = [pools, listeners];
      flush(); // what the old pools counted so far
      pools = next;
      listeners = bound;
      for (const [listen, balancer] of oldListeners) {
        if (bound.has(listen)) continue;
        // A removed UDP listener closes at once, freeing its port (runtime.ts says why).
        if (balancer instanceof UdpBalancer) {
          balancer.shutdown(0);
          continue;
        }
        retiring.add(balancer);
        balancer.shutdown(message.drainTimeoutMs).then(() => retiring.delete(balancer));
      }
      for (const pool of oldPools.values()) await pool.stop();
      post({
        id,
        type: "listening",
        addresses: message.listeners.map((spec) =>
          (spec.udp ? UDP_SCHEME : "") + formatHostPort(bound.get(spec.listen)!.address)
        ),
      });
      return;
    }
    case "backends": {
      const pool = pools.get(message.pool);
      post({ id, type: "applied" }); // what follows is synchronous: in place before any event
      if (pool === undefined) return;
      const byName = new Map(pool.backends.map((b) => [b.name, b]));
      for (const spec of message.backends) {
        const backend = byName.get(spec.address);
        if (backend !== undefined) apply(backend, spec);
      }
      // A backend with room again: a waiting client may go now.
      pool.queue.wake();
      for (const balancer of listeners.values()) balancer.closeUnwanted();
      return;
    }
    case "stop-accepting": {
      await Promise.all([...listeners.values()].map((b) => b.stopAccepting()));
      flush();
      post({ id, type: "stopped" });
      return;
    }
    case "recycle": {
      const balancers = [...listeners.values()].filter((b) => b.serves(message.pool));
      const rate = message.ratePerS / Math.max(1, balancers.length);
      for (const balancer of balancers) balancer.recycle(message.pool, message.fractions, rate);
      post({ id, type: "applied" });
      return;
    }
    case "drain": {
      // Listeners a reload removed, still draining, drain within this time too.
      const balancers = [...listeners.values(), ...retiring];
      await Promise.all(balancers.map((b) => b.stopAccepting()));
      const results = await Promise.all(balancers.map((b) => b.shutdown(message.timeoutMs)));
      for (const pool of pools.values()) await pool.stop();
      flush();
      post({ id, type: "drained", cut: results.reduce((sum, r) => sum + r.cut, 0) });
      finished = true;
      return;
    }
  }
}

/** Sends what happened since the last batch. */
function flush(): void {
  loop.clearTimer(flushTimer);
  flushTimer = undefined;
  const backends: BackendCounts[] = [];
  for (const pool of pools.values()) {
    for (const backend of pool.backends as ReplicaBackend[]) {
      const { reported } = backend;
      backends.push({
        pool: pool.name,
        address: backend.name,
        connections: backend.connections - reported.connections,
        bytesIn: backend.bytesIn - reported.bytesIn,
        bytesOut: backend.bytesOut - reported.bytesOut,
        connectFailures: backend.connectFailures - reported.connectFailures,
        active: backend.active,
        connects: backend.connects,
        connectTimes: backend.timesToReport,
      });
      backend.connects = [];
      backend.timesToReport = [];
      backend.reported = {
        connections: backend.connections,
        bytesIn: backend.bytesIn,
        bytesOut: backend.bytesOut,
        connectFailures: backend.connectFailures,
      };
    }
  }
  const active: Record<string, number> = {};
  const udp: Record<string, UdpCounts> = {};
  // A removed listener still draining counts under its name too.
  for (const balancer of retiring) {
    active[balancer.name] = (active[balancer.name] ?? 0) + balancer.activeConnections;
  }
  for (const balancer of listeners.values()) {
    active[balancer.name] = (active[balancer.name] ?? 0) + balancer.activeConnections;
    if (!(balancer instanceof UdpBalancer)) continue;
    // What was counted since the last batch.
    const delta = structuredClone(balancer.udp);
    const before = udpReported.get(balancer);
    if (before !== undefined) addUdpCounts(delta, before, -1);
    udp[balancer.name] = delta;
    udpReported.set(balancer, structuredClone(balancer.udp));
  }
  // Sent as it is, and a new one started: no copy.
  const batch = events;
  events = [];
  post({ id: 0, type: "batch", events: batch, backends, active, udp });
}

// Counters that change without an event (a connection opening) are
// reported too, while anything is open.
function tick(): void {
  const open = (b: LoadBalancer | UdpBalancer) => b.activeConnections > 0 || udpMoved(b);
  if (!finished && ([...listeners.values()].some(open) || [...retiring].some(open))) {
    flushTimer ??= loop.setTimer(flush, FLUSH_EVERY_MS);
  }
  if (!finished) loop.setTimer(tick, FLUSH_EVERY_MS);
}

post({ id: 0, type: "ready", wakeFd: loop.wakeFd });
tick();
await loop.runOwned(() => finished, () => {
  // Woken: take what has come, in order; say whether every message sent
  // has arrived (two wake-ups can merge into one, a message lag its wake-up).
  for (const message of inbox.splice(0)) {
    handling = handling.then(() => handle(message)).catch((error) =>
      post({ id: message.id, type: "failed", message: `internal error: ${describe(error)}` })
    );
  }
  return sent !== undefined && received >= Atomics.load(sent, 0);
});
await loop.dispose().catch(() => {});
scope.close();

// Whether a UDP listener counted something since the last batch (datagrams
// dropped with no flow open change nothing else).
function udpMoved(balancer: LoadBalancer | UdpBalancer): boolean {
  if (!(balancer instanceof UdpBalancer)) return false;
  const before = udpReported.get(balancer);
  const now = balancer.udp;
  return before === undefined || now.datagramsIn !== before.datagramsIn ||
    now.datagramsOut !== before.datagramsOut;
}

// Imports the policy and matcher modules a configure message names (the main
// thread checked each already: an error here is a bug, reported as such).
async function loadModules(
  message: { pools: readonly PoolSnapshot[]; listeners: readonly ListenerSnapshot[] },
) {
  const loads: Promise<void>[] = [];
  for (const pool of message.pools) {
    if (typeof pool.balance !== "string") loads.push(loadModule(pool.balance.module, "policy"));
  }
  for (const listener of message.listeners) {
    for (const route of listener.edge?.routes ?? []) {
      if (route.match.module !== undefined) loads.push(loadModule(route.match.module, "matcher"));
    }
  }
  await Promise.all(loads);
}
