import assert from "node:assert/strict";
import { renderMarkdown, renderSvg, type SoakReport } from "./report.ts";

function report(ok: boolean): SoakReport {
  return {
    engine: "epoll",
    seed: 42,
    minutes: 1,
    startedAt: "2026-11-27T00:00:00.000Z",
    outcomes: { short: { ok: 10, reset: 1 }, stream: { ok: 2 } },
    accessEnds: { "client-fin": 12 },
    examples: ok ? [] : ["3 s, short client: hung until its deadline"],
    faults: [{ t: 2, kind: "kill", detail: "kill -9 b1" }, { t: 3, kind: "reload", detail: "x" }],
    checks: [{ name: "bytes exact both ways", ok, detail: "d" }],
    samples: [
      { t: 1, rssKiB: 100_000, fds: 30, active: 5, rate: 10 },
      { t: 2, rssKiB: 101_000, fds: 32, rate: 12 },
    ],
    balancerLog: [],
  };
}

Deno.test("renderMarkdown() says passed or FAILED, counts outcomes per client, names the seed", () => {
  const good = renderMarkdown(report(true), "soak-epoll.svg");
  assert.match(good, /— passed/);
  assert.match(good, /\| short \| 10 \| 1 \|/);
  assert.match(good, /\| stream \| 2 \| 0 \|/);
  assert.match(good, /--seed 42/);
  assert.match(good, /!\[.*\]\(soak-epoll\.svg\)/);
  const bad = renderMarkdown(report(false), "x.svg");
  assert.match(bad, /— FAILED/);
  assert.match(bad, /\*\*FAILED\*\*/);
  assert.match(bad, /hung until its deadline/);
});

Deno.test("renderSvg() draws four panels with a line each, and a mark per fault", () => {
  const svg = renderSvg(report(true));
  assert.match(svg, /^<svg /);
  assert.equal(svg.match(/<path /g)?.length, 4);
  // Each fault is marked in each of the four panels.
  assert.equal(svg.match(/stroke-opacity="0.45"/g)?.length, 2 * 4);
  for (const title of ["RSS, MiB", "open descriptors", "active connections"]) {
    assert.ok(svg.includes(title), title);
  }
});
