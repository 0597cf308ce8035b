// The dashboard against a running balancer (on the engine under test): its
// event stream over plain HTTP, then the page in Debian's Chromium driven by
// Playwright — both backends shown, a burst counted live, a stopped backend
// turning down, drain pressed with the token. The screenshot it takes is the
// README's (docs/dashboard.png, with LB_UPDATE_SCREENSHOT=1).
//
// Run on its own with --allow-all (`deno task test` does): Playwright reads
// /proc and the environment and starts the browser, which the other tests'
// narrower permissions do not allow.
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { freePort, have } from "./test_peers.ts";
import {
  type BalancerProcess,
  exchange,
  startBalancerWithAdmin,
  startTaggedServer,
  type TestServer,
  until,
} from "./test_util.ts";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = await have(CHROMIUM, "chromium");
const TOKEN = "dashboard-token";

async function balancer(dir: string, servers: TestServer[], adminPort?: number) {
  return await startBalancerWithAdmin(
    dir,
    `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web:
    backends: [${servers.map((s) => `{ address: "127.0.0.1:${s.port}" }`).join(", ")}]
    health: { check: tcp, interval_ms: 200, timeout_ms: 5000, rise: 1, fall: 1 }
`,
    {
      token: TOKEN,
      permissions: ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"],
      ...(adminPort === undefined ? {} : { adminPort }),
    },
  );
}

Deno.test("GET /api/events streams snapshots as server-sent events; GET / is the page, self-contained", async () => {
  const servers = [startTaggedServer("1"), startTaggedServer("2")];
  const dir = await Deno.makeTempDir();
  let lb: BalancerProcess | undefined;
  try {
    const running = await balancer(dir, servers);
    lb = running.lb;
    const response = await fetch(`${running.base}/api/events`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type")!, /^text\/event-stream/);
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const events = () => [...text.matchAll(/event: snapshot\ndata: (.*)\n\n/g)];
    while (events().length < 2) text += (await reader.read()).value ?? "";
    await reader.cancel();
    assert.match(text, /^retry: 2000\n\n/);
    const snapshot = JSON.parse(events()[0]![1]!);
    assert.deepEqual(
      snapshot.pools[0].backends.map((b: { address: string }) => b.address),
      servers.map((s) => `127.0.0.1:${s.port}`),
    );
    const page = await fetch(`${running.base}/`);
    assert.match(page.headers.get("content-security-policy")!, /default-src 'self'/);
    const html = await page.text();
    assert.match(html, /<title>Load balancer<\/title>/);
    assert.doesNotMatch(html, /(src|href)="https?:/, "nothing loaded from elsewhere");
  } finally {
    await lb?.close();
    await Promise.all(servers.map((s) => s.close()));
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "the dashboard in Chromium: both backends, a burst counted live, a backend down, drain with the token, a restart",
  ignore: !haveChromium,
  fn: async () => {
    const servers = [startTaggedServer("1"), startTaggedServer("2")];
    const dir = await Deno.makeTempDir();
    let lb: BalancerProcess | undefined;
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    try {
      const adminPort = freePort();
      const running = await balancer(dir, servers, adminPort);
      lb = running.lb;
      const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
      await page.goto(`${running.base}/`);
      const [one, two] = servers.map((s) => page.locator(`tr[data-backend="127.0.0.1:${s.port}"]`));
      await one!.locator('[data-field="state"]', { hasText: "up" }).waitFor();
      await two!.locator('[data-field="state"]', { hasText: "up" }).waitFor();
      await page.locator("#live", { hasText: "live" }).waitFor();
      assert.match(await page.locator("#notice").textContent() ?? "", /Read-only/);
      assert.ok(await one!.locator('button[data-action="drain"]').isDisabled());

      // A burst of 20 clients: the counters show it, without a reload of the page.
      for (let i = 0; i < 20; i++) await exchange(lb.port, "x\n");
      const counted = one!.locator('[data-field="connections"]');
      await until(
        async () => Number(await counted.textContent()) >= 10,
        "the burst counted",
        400,
        25,
      );

      // A stopped backend turns down on the page.
      await servers[1]!.close();
      await two!.locator('[data-field="state"]', { hasText: "down" }).waitFor({ timeout: 10_000 });
      await page.locator("#events li", { hasText: "up -> down" }).first().waitFor();

      // The token, then drain: the state changes.
      await page.fill("#token", TOKEN);
      await page.click('#token-form button[type="submit"]');
      assert.match(await page.locator("#notice").textContent() ?? "", /Changes use the token/);
      await one!.locator('button[data-action="drain"]:not([disabled])').click();
      await one!.locator('[data-field="state"]', { hasText: "draining" }).waitFor();
      const [backend] = await running.backends("web");
      assert.equal(backend?.state, "draining");
      await page.locator("#events li", { hasText: "drain backend" }).first().waitFor();

      // A few seconds of history drawn first, for the picture.
      await page.locator("tr svg polyline").first().waitFor({ state: "attached" });
      // The README's picture: written there with LB_UPDATE_SCREENSHOT=1 (so that a plain
      // test run leaves the repository as it was), else to a scratch file.
      const shot = Deno.env.get("LB_UPDATE_SCREENSHOT") === "1"
        ? new URL("./docs/dashboard.png", import.meta.url).pathname
        : `${dir}/dashboard.png`;
      await page.screenshot({ path: shot });
      assert.ok((await Deno.stat(shot)).size > 10_000, "a screenshot with something in it");
      // At a phone's width the page still fits: tables scroll inside their boxes.
      await page.setViewportSize({ width: 390, height: 800 });
      const wide = await page.evaluate("document.documentElement.scrollWidth") as number;
      assert.ok(wide <= 390, `the page is ${wide} px wide at 390`);

      // The balancer restarts: the page says so, and comes back by itself.
      await lb.close();
      await page.locator("#live", { hasText: "reconnecting" }).waitFor({ timeout: 10_000 });
      lb = (await balancer(dir, servers.slice(0, 1), adminPort)).lb;
      await page.locator("#live", { hasText: "live" }).waitFor({ timeout: 10_000 });
      await one!.locator('[data-field="state"]', { hasText: "up" }).waitFor({ timeout: 10_000 });
    } finally {
      await browser.close();
      await lb?.close();
      await Promise.all(servers.map((s) => s.close().catch(() => {})));
      await Deno.remove(dir, { recursive: true });
    }
  },
});
