import assert from "node:assert/strict";
import { parseIperf3, parseUdpFlood, parseWrk } from "./parse.ts";
import { parseCpuSeconds, parseRssKiB } from "./proc.ts";

// Real output of `wrk -t1 -c50 -d2s --latency` on this project's machine.
const WRK_KEPT_ALIVE = `Running 2s test @ http://127.0.0.1:18081/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   271.06us   63.51us   1.09ms   82.28%
    Req/Sec   144.05k    22.11k  161.79k    80.95%
  Latency Distribution
     50%  260.00us
     75%  279.00us
     90%  379.00us
     99%  447.00us
  300826 requests in 2.10s, 43.03MB read
Requests/sec: 143219.04
Transfer/sec:     20.49MB
`;

const WRK_WITH_ERRORS = `Running 5s test @ http://127.0.0.1:18081/
  1 threads and 50 connections
  Latency Distribution
     50%  823.00us
     75%    1.00ms
     90%    1.18ms
     99%    1.86ms
  74550 requests in 5.00s, 10.31MB read
  Socket errors: connect 0, read 12, write 3, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  14910.00
Transfer/sec:      2.06MB
`;

Deno.test("parseWrk() reads requests, rate and latency percentiles in milliseconds", () => {
  assert.deepEqual(parseWrk(WRK_KEPT_ALIVE), {
    requests: 300826,
    seconds: 2.1,
    requestsPerSecond: 143219.04,
    p50Ms: 0.26,
    p99Ms: 0.447,
    socketErrors: 0,
    badResponses: 0,
  });
});

Deno.test("parseWrk() converts ms and adds up socket errors", () => {
  const result = parseWrk(WRK_WITH_ERRORS);
  assert.equal(result.p50Ms, 0.823);
  assert.equal(result.p99Ms, 1.86);
  assert.equal(result.socketErrors, 16);
  assert.equal(result.badResponses, 7);
  assert.equal(result.seconds, 5);
});

Deno.test("parseWrk() names what is missing", () => {
  const noLatency = WRK_KEPT_ALIVE.replace(/ {2}Latency Distribution[\s\S]*?99%.*\n/, "");
  assert.throws(() => parseWrk(noLatency), /no 50% latency \(run wrk with --latency\)/);
  assert.throws(() => parseWrk("unable to connect"), /wrk: no request count/);
});

Deno.test("parseIperf3() reads the received rate in Gbit/s and reports iperf3's own errors", () => {
  const report = JSON.stringify({
    start: {},
    end: {
      sum_sent: { bits_per_second: 54_600_000_000, bytes: 1 },
      sum_received: { bits_per_second: 54_531_109_498.25, bytes: 6818365440 },
    },
  });
  assert.equal(parseIperf3(report), 54.53110949825);
  assert.throws(
    () => parseIperf3(JSON.stringify({ error: "unable to connect to server" })),
    /iperf3: unable to connect to server/,
  );
  assert.throws(() => parseIperf3("iperf3: error"), /not JSON/);
});

Deno.test("parseCpuSeconds() counts fields after the command name, which may hold spaces", () => {
  // A real /proc/PID/stat line, with its name changed to one holding spaces and parentheses.
  const stat = "13386 (a (weird) name) R 13384 13384 1072 0 -1 4194304 100 0 0 0 " +
    "250 37 0 0 20 0 1 0 126236 3133440 393 18446744073709551615 0 0 0";
  assert.equal(parseCpuSeconds(stat), 2.87);
});

Deno.test("parseRssKiB() reads VmRSS", () => {
  assert.equal(
    parseRssKiB("Name:\tcat\nVmPeak:\t  5000 kB\nVmRSS:\t    2036 kB\nRssAnon:\t 100 kB\n"),
    2036,
  );
  assert.throws(() => parseRssKiB("Name:\tcat\n"), /no VmRSS/);
});

Deno.test("parseUdpFlood() reads the generator's JSON line, and says what is missing", () => {
  // Real output of `udp_flood.ts --seconds 2` against two `backend.ts --udp`.
  const line = '{"sent":45251,"received":44995,"drained":256,"mismatched":0,"lost":0,' +
    '"late":0,"seconds":2,"servers":{"1":22712,"2":22539}}';
  assert.deepEqual(parseUdpFlood(`${line}\n`), {
    sent: 45251,
    received: 44995,
    drained: 256,
    mismatched: 0,
    lost: 0,
    late: 0,
    seconds: 2,
    servers: { "1": 22712, "2": 22539 },
  });
  assert.throws(() => parseUdpFlood('{"sent":1}'), /udp_flood: no number received/);
  assert.throws(() => parseUdpFlood("udp_flood: --size 9"), /udp_flood: output is not JSON/);
});
