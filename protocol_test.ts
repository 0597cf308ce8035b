import assert from "node:assert/strict";
import type { AccessRecord } from "./events.ts";
import { packRecord, unpackRecord } from "./protocol.ts";

Deno.test("an access record packed for another thread comes back the same, backend or none", () => {
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
  for (const record of records) {
    // As a message carries it: a structured clone.
    assert.deepEqual(unpackRecord(structuredClone(packRecord(record))), record);
  }
});
