import assert from "node:assert/strict";
import type { AccessRecord, LoadBalancerEvent } from "./events.ts";
import { type PackedEvents, packRecord, unpackEvents } from "./protocol.ts";

Deno.test("access records packed among other events for another thread come back the same, in order", () => {
  const records: AccessRecord[] = [
    {
      time: new Date("2026-11-27T10:00:00.123Z"),
      listener: "web",
      client: "[::1]:40000",
      backend: "127.0.0.1:5001",
      bytesIn: 6,
      bytesOut: 17,
      durationMs: 2.5,
      end: "client-fin",
    },
    {
      time: new Date(0),
      listener: "default",
      client: "127.0.0.1:1",
      backend: undefined,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: 0,
      end: "no-backend",
    },
  ];
  const other: LoadBalancerEvent = {
    type: "connect-error",
    client: "127.0.0.1:1",
    backend: "127.0.0.1:5002",
    reason: "refused",
  };
  const packed: PackedEvents = [];
  packRecord(packed, records[0]!);
  packed.push(other);
  packRecord(packed, records[1]!);
  const unpacked: LoadBalancerEvent[] = [];
  // As a message carries it: a structured clone.
  unpackEvents(structuredClone(packed), (event) => unpacked.push(event));
  assert.deepEqual(unpacked, [
    { type: "connection", record: records[0] },
    other,
    { type: "connection", record: records[1] },
  ]);
});
