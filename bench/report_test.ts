import assert from "node:assert/strict";
import {
  formatCell,
  type Measurements,
  ratiosBetween,
  ratiosToHaproxy,
  renderTable,
  udpRatios,
} from "./report.ts";
import { median, ratio, summarize } from "./stats.ts";

Deno.test("median() and summarize() of odd and even counts, unsorted input untouched", () => {
  const values = [5, 1, 3];
  assert.equal(median(values), 3);
  assert.deepEqual(values, [5, 1, 3]);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.deepEqual(summarize([12, 10, 11]), { median: 11, min: 10, max: 12, runs: 3 });
  assert.throws(() => median([]), RangeError);
});

Deno.test("ratio() is ours over theirs, and undefined without both", () => {
  assert.equal(ratio(15, 10), 1.5);
  assert.equal(ratio(undefined, 10), undefined);
  assert.equal(ratio(3, 0), undefined);
});

const measurements: Measurements = {
  direct: { throughputOneStreamGbps: [40, 42, 41] },
  lb: { cpuUsPerRequest: [11, 13, 12], throughputOneStreamGbps: [24, 23, 22] },
  haproxy: { cpuUsPerRequest: [8, 8, 8], throughputOneStreamGbps: [20, 20, 20] },
};

Deno.test("ratiosToHaproxy() divides medians, figure by figure", () => {
  assert.deepEqual(ratiosToHaproxy(measurements), {
    cpuUsPerRequest: 1.5,
    throughputOneStreamGbps: 1.15,
  });
});

Deno.test("ratiosBetween() compares any two targets; figures one lacks are left out", () => {
  const withFloor: Measurements = {
    ...measurements,
    floor: { cpuUsPerRequest: [10, 9, 11], idleKiBPerConnection: [14] },
  };
  assert.deepEqual(ratiosBetween(withFloor, "floor", "haproxy"), { cpuUsPerRequest: 1.25 });
  assert.deepEqual(ratiosBetween(withFloor, "lb", "floor"), { cpuUsPerRequest: 1.2 });
});

Deno.test("formatCell() shows the median and the spread", () => {
  assert.equal(formatCell([11, 13, 12], 1), "12.0 (11.0–13.0)");
  assert.equal(formatCell([143219.04], 0), "143,219");
  assert.equal(formatCell(undefined, 1), "–");
});

Deno.test("renderTable() has a row per measured figure and the ratio to HAProxy", () => {
  const table = renderTable(measurements, ["direct", "lb", "haproxy"]);
  assert.equal(
    table,
    [
      "| figure | direct | this LB, epoll engine | HAProxy | this LB ÷ HAProxy |",
      "| --- | --- | --- | --- | --- |",
      "| proxy CPU per kept-alive request, µs | – | 12.0 (11.0–13.0) | 8.0 (8.0–8.0) | 1.50× (lower is better) |",
      "| one-stream throughput, Gbit/s | 41.00 (40.00–42.00) | 23.00 (22.00–24.00) | 20.00 (20.00–20.00) | 1.15× (higher is better) |",
    ].join("\n"),
  );
});

const withUdp: Measurements = {
  direct: { udpDatagramsPerSecond: [20000, 22000, 21000], throughputOneStreamGbps: [40] },
  lb: {
    cpuUsPerDatagram: [30, 33, 36],
    udpDatagramsPerSecond: [18000, 19000, 17000],
    cpuUsPerRequest: [12],
  },
  nginx: {
    cpuUsPerDatagram: [22, 20, 24],
    udpDatagramsPerSecond: [20000, 20000, 20000],
    cpuUsPerRequest: [10],
  },
  haproxy: { cpuUsPerRequest: [8] },
};

Deno.test("udpRatios() divides this LB's UDP medians by NGINX's or direct's, and nothing else", () => {
  assert.deepEqual(udpRatios(withUdp, "nginx"), {
    cpuUsPerDatagram: 1.5,
    udpDatagramsPerSecond: 0.9,
  });
  // Direct has no proxy, so no CPU figure: only the rate compares.
  assert.deepEqual(udpRatios(withUdp, "direct"), { udpDatagramsPerSecond: 18000 / 21000 });
  assert.deepEqual(udpRatios({ lb: { cpuUsPerRequest: [1] } }, "nginx"), {});
});

Deno.test("renderTable() adds a column per reference; HAProxy's UDP cells stay empty", () => {
  const table = renderTable(withUdp, ["direct", "lb", "haproxy", "nginx"], ["haproxy", "nginx"]);
  assert.equal(
    table,
    [
      "| figure | direct | this LB, epoll engine | HAProxy | NGINX stream | this LB ÷ HAProxy | this LB ÷ NGINX stream |",
      "| --- | --- | --- | --- | --- | --- | --- |",
      "| proxy CPU per kept-alive request, µs | – | 12.0 | 8.0 | 10.0 | 1.50× (lower is better) | 1.20× (lower is better) |",
      "| one-stream throughput, Gbit/s | 40.00 | – | – | – | – | – |",
      "| proxy CPU per UDP datagram and its reply, µs | – | 33.0 (30.0–36.0) | – | 22.0 (20.0–24.0) | – | 1.50× (lower is better) |",
      "| UDP datagrams answered per second, dgram/s | 21,000 (20,000–22,000) | 18,000 (17,000–19,000) | – | 20,000 (20,000–20,000) | – | 0.90× (higher is better) |",
    ].join("\n"),
  );
});
