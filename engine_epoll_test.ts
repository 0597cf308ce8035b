/**
 * The epoll engine's own guarantees, beyond what the whole suite checks on
 * it (LB_TEST_ENGINE=epoll runs every in-process and process test on it).
 */

import assert from "node:assert/strict";
import { EpollLoop } from "./engine_epoll.ts";
import { encodeEpollEvent, EPOLL_EVENT_BYTES, EPOLLIN, Sys } from "./libc.ts";

const linux = Deno.build.os === "linux";

Deno.test({
  name:
    "a descriptor closed and reused within one batch: its stale event never reaches the new owner",
  ignore: !linux,
  fn: async () => {
    const loop = new EpollLoop();
    const sys = new Sys();
    const seen: string[] = [];
    // Two eventfds stand in for sockets: the kernel reuses the lowest free number.
    const first = sys.eventfd();
    loop.add(first, EPOLLIN, { onEvents: () => seen.push("first owner") });
    const stale = loop.generation(first)!;
    loop.close(first);
    const second = sys.eventfd();
    assert.equal(second, first, "the number is reused");
    loop.add(second, EPOLLIN, { onEvents: () => seen.push("second owner") });
    // One batch, as epoll_wait could hand it over: the old registration's
    // event, then the new one's.
    const events = new Uint8Array(EPOLL_EVENT_BYTES * 2);
    const view = new DataView(events.buffer);
    encodeEpollEvent(view, 0, EPOLLIN, first, stale);
    encodeEpollEvent(view, 1, EPOLLIN, second, loop.generation(second)!);
    loop.dispatch(view, 2);
    assert.deepEqual(seen, ["second owner"]);
    loop.close(second);
    await loop.dispose();
  },
});
