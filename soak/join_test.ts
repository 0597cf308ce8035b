import assert from "node:assert/strict";
import { type ClientRecord, joinBackendLines } from "./join.ts";

let nextSeed = 100;

function record(fields: Partial<ClientRecord> = {}): ClientRecord {
  return {
    outcome: "ok",
    seed: nextSeed++,
    up: 1000,
    backendFirst: false,
    backend: "b1",
    acceptedAt: 10_010,
    startedAt: 10_000,
    endedAt: 11_000,
    kind: "short",
    phase: "load",
    ...fields,
  };
}

// One client and what its backend printed for it, joined.
function findingOf(
  client: Partial<ClientRecord>,
  done: string[],
  kills: { backend: string; at: number }[] = [],
) {
  const r = record(client);
  const lines = done.map((line) => ({ backend: "b1", line: line.replace("SEED", `${r.seed}`) }));
  const { joined, problems } = joinBackendLines([r], lines, kills);
  return { finding: joined[0]!.finding, why: joined[0]!.why, problems };
}

Deno.test("joinBackendLines(): a client cut short on a stream its backend finished is lost", () => {
  const cases: [Partial<ClientRecord>, string[], string][] = [
    [{ outcome: "ok" }, ["DONE SEED OK 1000"], "ok"],
    [{ outcome: "closed" }, ["DONE SEED OK 1000"], "lost"],
    [{ outcome: "reset" }, ["DONE SEED OK 1000"], "lost"],
    [{ outcome: "hung" }, ["DONE SEED OK 1000"], "lost"],
    // Reset on purpose: the backend may well have finished first.
    [{ outcome: "reset-sent", kind: "reset" }, ["DONE SEED OK 1000"], "reset-sent"],
    // No DONE line: the backend was cut too (killed, reset): a fault, not a loss.
    [{ outcome: "closed" }, [], "closed"],
    [{ outcome: "reset" }, [], "reset"],
    [{ outcome: "refused", backend: undefined }, [], "refused"],
  ];
  for (const [client, done, expected] of cases) {
    assert.equal(findingOf(client, done).finding, expected, `${client.outcome} ${done}`);
  }
  assert.match(findingOf({ outcome: "closed" }, ["DONE SEED OK 1000"]).why!, /closed on a stream/);
});

Deno.test("joinBackendLines(): what the backend saw wrong is corrupt, however the client ended", () => {
  const cases: [Partial<ClientRecord>, string[], string][] = [
    // A backend-first client cannot see the verdict: only the DONE line can.
    [{ outcome: "ok", backendFirst: true }, ["DONE SEED BAD 512"], "corrupt"],
    [{ outcome: "closed" }, ["DONE SEED BAD 0"], "corrupt"],
    [{ outcome: "reset-sent" }, ["DONE SEED BAD 7"], "corrupt"],
    // OK, but for another length than the client sent.
    [{ outcome: "ok" }, ["DONE SEED OK 999"], "corrupt"],
    // A verdict this protocol does not know.
    [{ outcome: "ok" }, ["DONE SEED FINE"], "corrupt"],
    [{ outcome: "ok" }, ["DONE SEED OK"], "corrupt"],
    // One stream finished twice: the balancer sent it to two backends.
    [{ outcome: "ok" }, ["DONE SEED OK 1000", "DONE SEED OK 1000"], "corrupt"],
    // A client that hung closed its stream short itself: hung, not corrupt.
    [{ outcome: "hung" }, ["DONE SEED BAD 300"], "hung"],
    [{ outcome: "corrupt", detail: "answer byte 5 differs" }, [], "corrupt"],
  ];
  for (const [client, done, expected] of cases) {
    assert.equal(findingOf(client, done).finding, expected, `${client.outcome} ${done}`);
  }
  const garbled = findingOf({}, ["DONE SEED OK 1000", "HELLO"]);
  assert.equal(garbled.finding, "ok");
  assert.deepEqual(garbled.problems, ['backend b1 printed "HELLO"']);
});

Deno.test("joinBackendLines(): a backend-first client ok without a DONE line is lost, unless its backend was killed meanwhile", () => {
  const client = { outcome: "ok" as const, backendFirst: true, backend: "b1" };
  assert.equal(findingOf(client, []).finding, "lost");
  assert.equal(findingOf(client, [], [{ backend: "b1", at: 10_500 }]).finding, "unconfirmed");
  // Within a second after the client's end: the backend was still reading.
  assert.equal(findingOf(client, [], [{ backend: "b1", at: 11_900 }]).finding, "unconfirmed");
  assert.equal(findingOf(client, [], [{ backend: "b1", at: 12_100 }]).finding, "lost");
  assert.equal(findingOf(client, [], [{ backend: "b1", at: 9_000 }]).finding, "lost");
  assert.equal(findingOf(client, [], [{ backend: "b2", at: 10_500 }]).finding, "lost");
  assert.equal(findingOf(client, ["DONE SEED OK 1000"]).finding, "ok");
});
