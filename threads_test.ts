/**
 * Data-plane threads (threads.ts) seen from the main thread: what happens
 * when one dies. Linux and `--allow-ffi` only; elsewhere the tests say so
 * and pass.
 *
 * @module
 */

import assert from "node:assert/strict";
import { validateConfig } from "./config.ts";
import type { LoadBalancerEvent } from "./events.ts";
import { buildPools } from "./plan.ts";
import { ThreadedListeners } from "./threads.ts";
import { connectLoopback, roundTrip, startEchoServer } from "./test_util.ts";

const linux = Deno.build.os === "linux";
if (!linux) console.log("threads_test: data-plane threads need Linux; skipped");

Deno.test({
  name: "a data-plane thread that dies: its connections end, its listener closes, another serves",
  ignore: !linux,
  async fn() {
    const echo = startEchoServer();
    const events: LoadBalancerEvent[] = [];
    const replaced = Promise.withResolvers<void>();
    const onEvent = (event: LoadBalancerEvent) => {
      events.push(event);
      if (event.type === "internal-error" && event.reason.includes("took the dead one's place")) {
        replaced.resolve();
      }
    };
    const config = validateConfig({
      listeners: [{ name: "default", listen: "127.0.0.1:0", pool: "default" }],
      pools: { default: { backends: [{ address: `127.0.0.1:${echo.port}` }] } },
    });
    const pools = buildPools(config, { onEvent });
    const host = new ThreadedListeners({ threads: 1, onEvent });
    const [address] = await host.start(config, pools, (listener) => `listener ${listener.name}`);
    const port = Number(address!.split(":").pop());
    try {
      // A connection the thread holds when it dies.
      const held = await connectLoopback(port);
      await roundTrip(held, "before\n");

      host.killThreadForTest(0);

      // Its client sees the end (a close or a reset), not a hang.
      const buffer = new Uint8Array(16);
      const ended = await held.read(buffer).then((n) => n === null, () => true);
      assert.ok(ended, "the held connection ended");
      held.close();
      const reasons = () =>
        events.flatMap((event) => event.type === "internal-error" ? [event.reason] : []);
      // The replacement says when it is in place.
      await replaced.promise;
      assert.match(reasons()[0]!, /data-plane thread died: .*told to die/);
      assert.match(reasons()[0]!, /closed the \d+ descriptors it held; starting another/);

      // No connection is lost to the dead thread's listening socket: every
      // one of these is served, by the new thread.
      for (let i = 0; i < 20; i++) {
        const conn = await connectLoopback(port);
        await roundTrip(conn, `after ${i}\n`);
        conn.close();
      }
    } finally {
      await host.drain(0);
      for (const pool of pools.values()) await pool.stop();
      await echo.close();
    }
  },
});

Deno.test({
  name: "asking the threads anything just after one died does not wait on the dead one",
  ignore: !linux,
  async fn() {
    const echo = startEchoServer();
    const died = Promise.withResolvers<void>();
    const onEvent = (event: LoadBalancerEvent) => {
      if (event.type === "internal-error" && event.reason.includes("thread died")) died.resolve();
    };
    const config = validateConfig({
      listeners: [{ name: "default", listen: "127.0.0.1:0", pool: "default" }],
      pools: { default: { backends: [{ address: `127.0.0.1:${echo.port}` }] } },
    });
    const pools = buildPools(config, { onEvent });
    const host = new ThreadedListeners({ threads: 2, onEvent });
    await host.start(config, pools, (listener) => `listener ${listener.name}`);
    try {
      host.killThreadForTest(0);
      await died.promise;
      // Before its replacement is in place: a change, then a drain, both answered.
      await host.changed(pools.get("default")!);
    } finally {
      assert.equal(await host.drain(0), 0);
      for (const pool of pools.values()) await pool.stop();
      await echo.close();
    }
  },
});
