/**
 * A seeded random test in the spirit of Envoy's tcp_proxy integration tests:
 * many clients, each following a random plan of writes, reads, pauses and a
 * final half-close or reset, against a pool of echo backends and a pool of
 * sink backends. Every byte that should arrive is checked, and every
 * client's access record must say how it really ended.
 *
 * The seed is printed; replay a failure with
 * `LB_TEST_SEED=N deno test -A load_balancer_random_test.ts`.
 */

import assert from "node:assert/strict";
import net from "node:net";
import type { AccessRecord } from "./events.ts";
import {
  accessRecords,
  readAll,
  seededRandom,
  startBalancer,
  startEchoServer,
  startServer,
  type TestBalancer,
  type TestServer,
  writeAll,
} from "./test_util.ts";

const CLIENTS = 120;
const AT_ONCE = 16;
const MAX_WRITE = 48 * 1024;

type Kind = "echo" | "sink";
type Step =
  | { op: "write"; bytes: Uint8Array }
  | { op: "read"; fraction: number } // wait until this share of what was sent came back
  | { op: "pause"; ms: number };
interface Plan {
  kind: Kind;
  steps: Step[];
  finish: "half-close" | "reset";
}

function makePlan(next: () => number): Plan {
  const kind: Kind = next() < 0.5 ? "echo" : "sink";
  const steps: Step[] = [];
  const count = 1 + Math.floor(next() * 6);
  for (let i = 0; i < count; i++) {
    const size = 1 + Math.floor(next() ** 2 * MAX_WRITE);
    const bytes = new Uint8Array(size);
    for (let j = 0; j < size; j++) bytes[j] = (next() * 256) | 0;
    steps.push({ op: "write", bytes });
    const roll = next();
    if (kind === "echo" && roll < 0.4) steps.push({ op: "read", fraction: next() });
    else if (roll < 0.6) steps.push({ op: "pause", ms: Math.floor(next() * 5) });
  }
  return { kind, steps, finish: next() < 0.75 ? "half-close" : "reset" };
}

/** FNV-1a, 32 bits: what the sink reports back about the bytes it got. */
function fnv1a(bytes: Uint8Array, hash = 0x811c9dc5): number {
  for (const byte of bytes) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  return hash;
}

/** Reads everything, then answers `LENGTH:HASH` and ends its stream. */
function startSinkServer(): TestServer {
  return startServer(async (conn) => {
    const all = await readAll(conn);
    await writeAll(conn, new TextEncoder().encode(`${all.length}:${fnv1a(all)}`));
  });
}

interface Outcome {
  localPort: number;
  sent: Uint8Array;
  received: Uint8Array;
}

/** Carries out one plan with a node:net socket (it can send a real RST). */
function runClient(port: number, plan: Plan): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let receivedLength = 0;
    let ended = false;
    const waiters = new Set<() => void>();
    const changed = () => waiters.forEach((wake) => wake());
    const until = (condition: () => boolean) =>
      new Promise<void>((wake) => {
        const check = () => {
          if (condition()) {
            waiters.delete(check);
            wake();
          }
        };
        waiters.add(check);
        check();
      });
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      receivedLength += chunk.length;
      changed();
    });
    socket.on("end", () => {
      ended = true;
      changed();
    });
    let failure: Error | undefined;
    socket.on("error", (error) => {
      failure = error;
      ended = true;
      changed();
    });
    const sent: Uint8Array[] = [];
    let sentLength = 0;
    socket.once("connect", async () => {
      try {
        for (const step of plan.steps) {
          if (step.op === "write") {
            sent.push(step.bytes);
            sentLength += step.bytes.length;
            if (!socket.write(step.bytes)) await new Promise((go) => socket.once("drain", go));
          } else if (step.op === "read") {
            const target = Math.floor(sentLength * step.fraction);
            await until(() => receivedLength >= target || ended);
          } else {
            await new Promise((go) => setTimeout(go, step.ms));
          }
        }
        const localPort = socket.localPort!;
        if (plan.finish === "reset") {
          socket.resetAndDestroy();
        } else {
          socket.end();
          await until(() => ended);
        }
        if (!socket.destroyed) socket.destroy();
        if (failure && plan.finish !== "reset") throw failure;
        await new Promise<void>((closed) =>
          socket.closed ? closed() : socket.once("close", () => closed())
        );
        resolve({
          localPort,
          sent: Buffer.concat(sent),
          received: Buffer.concat(chunks),
        });
      } catch (error) {
        socket.destroy();
        reject(error);
      }
    });
  });
}

Deno.test("random clients writing, reading, half-closing and resetting get every byte they should", async () => {
  const seed = Number(Deno.env.get("LB_TEST_SEED") ?? Math.floor(Math.random() * 2 ** 32));
  console.log(`seed=${seed} (replay: LB_TEST_SEED=${seed} deno test -A ${import.meta.filename})`);
  const next = seededRandom(seed);
  const plans = Array.from({ length: CLIENTS }, () => makePlan(next));

  const servers = [startEchoServer(), startEchoServer(), startSinkServer(), startSinkServer()];
  const pools: Record<Kind, TestBalancer> = {
    echo: startBalancer([servers[0]!.address, servers[1]!.address]),
    sink: startBalancer([servers[2]!.address, servers[3]!.address]),
  };
  const outcomes: Outcome[] = new Array(CLIENTS);
  try {
    let nextClient = 0;
    await Promise.all(Array.from({ length: AT_ONCE }, async () => {
      while (nextClient < CLIENTS) {
        const index = nextClient++;
        const plan = plans[index]!;
        outcomes[index] = await runClient(pools[plan.kind].port, plan);
      }
    }));
    // Every connection, reset ones included, is closed on both sides by now
    // or very soon: wait for the balancers to account for all of them.
    for (const pool of Object.values(pools)) {
      for (let wait = 0; pool.balancer.activeConnections > 0 && wait < 500; wait++) {
        await new Promise((go) => setTimeout(go, 10));
      }
      assert.equal(pool.balancer.activeConnections, 0, `seed=${seed}: connections left open`);
    }
  } finally {
    for (const pool of Object.values(pools)) await pool.close();
    for (const server of servers) await server.close();
  }

  // Records are matched to clients by client port, but a port may serve
  // more than one client here: a client that resets leaves no TIME_WAIT, so
  // the kernel may hand its port to the next one. So each client claims the
  // record that says what it did; at the end none may be left unclaimed.
  const unclaimed = new Map<string, AccessRecord[]>();
  for (const record of [...accessRecords(pools.echo.events), ...accessRecords(pools.sink.events)]) {
    unclaimed.set(record.client, [...unclaimed.get(record.client) ?? [], record]);
  }
  const claim = (port: number, fits: (record: AccessRecord) => boolean) => {
    const list = unclaimed.get(`127.0.0.1:${port}`) ?? [];
    const index = list.findIndex(fits);
    return index < 0 ? undefined : list.splice(index, 1)[0];
  };
  const describeFor = (port: number) => JSON.stringify(unclaimed.get(`127.0.0.1:${port}`) ?? []);

  // Clients that half-closed: every byte arrived, and the record says so exactly.
  plans.forEach((plan, index) => {
    if (plan.finish !== "half-close") return;
    const { localPort, sent, received } = outcomes[index]!;
    const where = `seed=${seed} client #${index} (${plan.kind}, ${plan.finish})`;
    if (plan.kind === "echo") {
      assert.equal(received.length, sent.length, where);
      assert.deepEqual(received, sent, where);
    } else {
      assert.equal(new TextDecoder().decode(received), `${sent.length}:${fnv1a(sent)}`, where);
    }
    const record = claim(
      localPort,
      (r) => r.end === "client-fin" && r.bytesIn === sent.length && r.bytesOut === received.length,
    );
    assert.ok(
      record,
      `${where}: no client-fin record with bytes_in=${sent.length} bytes_out=${received.length}; ` +
        `records for its port: ${describeFor(localPort)}`,
    );
  });

  // Clients that reset: what came back is a start of what was sent, and the
  // record, unless the reset came before the balancer accepted it, says client-reset.
  let resetsLogged = 0;
  // Two reset clients on one port may both fit one record: the one that sent
  // less claims first, so it cannot take the record only the other one fits.
  const resetOrder = plans.map((plan, index) => ({ plan, index }))
    .filter(({ plan }) => plan.finish === "reset")
    .sort((a, b) => outcomes[a.index]!.sent.length - outcomes[b.index]!.sent.length);
  resetOrder.forEach(({ plan, index }) => {
    const { localPort, sent, received } = outcomes[index]!;
    const where = `seed=${seed} client #${index} (${plan.kind}, ${plan.finish})`;
    if (plan.kind === "echo") assert.deepEqual(received, sent.subarray(0, received.length), where);
    if (claim(localPort, (r) => r.end === "client-reset" && r.bytesIn <= sent.length)) {
      resetsLogged++;
    }
  });
  const left = [...unclaimed.values()].flat();
  assert.deepEqual(left, [], `seed=${seed}: records that match no client`);
  // Most reset clients were accepted first: the reset path really ran.
  const resets = plans.filter((plan) => plan.finish === "reset").length;
  assert.ok(
    resetsLogged >= resets / 2,
    `seed=${seed}: only ${resetsLogged} of ${resets} resets seen`,
  );
});
