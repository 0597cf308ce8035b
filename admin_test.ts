import assert from "node:assert/strict";
import { type AdminView, createAdminHandler, tokenMatches } from "./admin.ts";
import { eachLine } from "./io.ts";
import {
  exchange,
  HAVE_PROMTOOL,
  promtoolCheck,
  runScript,
  startBalancer,
  startBalancerProcess,
  startTaggedServer,
  type TestBalancer,
  until,
} from "./test_util.ts";

const TOKEN = "s3cret-token";

function viewOf(...lbs: TestBalancer[]): AdminView {
  return {
    listeners: () => lbs.map((lb) => lb.balancer),
    pools: () => lbs.map((lb) => lb.pool),
    reloads: 2,
    reloadFailures: 1,
  };
}

const post = (path: string, options: { token?: string; body?: string } = {}) =>
  new Request(`http://admin${path}`, {
    method: "POST",
    headers: options.token ? { authorization: `Bearer ${options.token}` } : {},
    body: options.body,
  });

if (!HAVE_PROMTOOL) {
  console.log(
    "promtool not found (apt-get install prometheus): the metrics parser test is skipped",
  );
}

Deno.test("GET /metrics: every metric, counting what happened", async () => {
  const [one, two] = [startTaggedServer("1"), startTaggedServer("2")];
  const lb = startBalancer([one.address, two.address]);
  try {
    assert.match(await exchange(lb.port, "hi\n"), /^\[Server 1\] hi/);
    const response = await createAdminHandler({ view: viewOf(lb) })(
      new Request("http://admin/metrics"),
    );
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const text = await response.text();
    for (
      const name of [
        "lb_connections_active",
        "lb_connections_total",
        "lb_bytes_received_total",
        "lb_bytes_sent_total",
        "lb_connect_failures_total",
        "lb_backend_up",
        "lb_backend_state",
        "lb_health_check_duration_seconds",
        "lb_queue_length",
        "lb_connection_duration_seconds",
        "lb_reloads_total",
        "lb_reload_failures_total",
        "lb_build_info",
      ]
    ) {
      assert.match(text, new RegExp(`^# TYPE ${name} `, "m"), name);
    }
    // A backend is one series per pool, however many listeners use the pool.
    const b1 = `pool="default",backend="127.0.0.1:${one.port}"`;
    assert.match(text, new RegExp(`^lb_connections_total\\{${b1}\\} 1$`, "m"));
    assert.match(text, new RegExp(`^lb_bytes_received_total\\{${b1}\\} 3$`, "m"));
    assert.match(text, new RegExp(`^lb_bytes_sent_total\\{${b1}\\} 14$`, "m"));
    assert.match(text, new RegExp(`^lb_backend_state\\{${b1},state="up"\\} 1$`, "m"));
    assert.match(text, new RegExp(`^lb_backend_state\\{${b1},state="down"\\} 0$`, "m"));
    assert.match(
      text,
      /^lb_connection_duration_seconds_count\{listener="default",pool="default"\} 1$/m,
    );
    assert.match(text, /^lb_reloads_total 2$/m);
    assert.match(text, /^lb_reload_failures_total 1$/m);
  } finally {
    await lb.close();
    await one.close();
    await two.close();
  }
});

Deno.test({
  name: "promtool accepts /metrics",
  ignore: !HAVE_PROMTOOL,
  async fn() {
    const one = startTaggedServer("1");
    const lb = startBalancer([one.address]);
    try {
      await exchange(lb.port, "hi\n");
      lb.backends[0]!.recordCheck(true, undefined, 3);
      const text = await (await createAdminHandler({ view: viewOf(lb) })(
        new Request("http://admin/metrics"),
      )).text();
      const { code, said } = await promtoolCheck(text);
      assert.equal(code, 0, said);
      assert.equal(said.trim(), "", said); // no lint complaints either
    } finally {
      await lb.close();
      await one.close();
    }
  },
});

Deno.test("GET /api/backends: each backend's pool, address, state, weight, counts, last check", async () => {
  const one = startTaggedServer("1");
  const lb = startBalancer([one.address]);
  try {
    await exchange(lb.port, "hi\n");
    lb.backends[0]!.recordCheck(false, "refused", 2);
    const response = await createAdminHandler({ view: viewOf(lb) })(
      new Request("http://admin/api/backends"),
    );
    const [backend] = await response.json();
    assert.equal(typeof backend.last_check.time, "string");
    delete backend.last_check.time;
    assert.deepEqual(backend, {
      pool: "default",
      address: `127.0.0.1:${one.port}`,
      state: "up",
      weight: 1,
      backup: false,
      source: "config",
      active: 0,
      total: 1,
      bytes_in: 3,
      bytes_out: 14,
      connect_failures: 0,
      last_check: { ok: false, reason: "refused" },
    });
  } finally {
    await lb.close();
    await one.close();
  }
});

Deno.test("changes: 403 without a configured token, 401 with a missing or wrong one", async () => {
  const one = startTaggedServer("1");
  const lb = startBalancer([one.address]);
  try {
    const path = `/api/backends/default/${encodeURIComponent(lb.backends[0]!.name)}/drain`;
    const closed = createAdminHandler({ view: viewOf(lb) });
    const refused = await closed(post(path, { token: TOKEN }));
    assert.equal(refused.status, 403);
    assert.match((await refused.json()).error, /no admin token is configured/);
    const open = createAdminHandler({ view: viewOf(lb), token: TOKEN });
    for (const token of [undefined, "wrong", `${TOKEN}x`]) {
      const response = await open(post(path, { token }));
      assert.equal(response.status, 401, String(token));
      assert.equal(response.headers.get("www-authenticate"), 'Bearer realm="lb-admin"');
      await response.body?.cancel();
    }
    assert.equal(lb.backends[0]!.state, "up");
  } finally {
    await lb.close();
    await one.close();
  }
});

Deno.test("changes: drain, disable, enable and weight, with the token", async () => {
  const [one, two] = [startTaggedServer("1"), startTaggedServer("2")];
  const lb = startBalancer([one.address, two.address]);
  const handler = createAdminHandler({ view: viewOf(lb), token: TOKEN });
  const first = encodeURIComponent(lb.backends[0]!.name);
  try {
    const drained = await handler(post(`/api/backends/default/${first}/drain`, { token: TOKEN }));
    assert.equal(drained.status, 200);
    assert.equal((await drained.json()).state, "draining");
    // A drained backend gets no new clients.
    for (let i = 0; i < 4; i++) assert.match(await exchange(lb.port, "x\n"), /^\[Server 2\]/);
    const disabled = await handler(
      post(`/api/backends/default/${first}/disable`, { token: TOKEN }),
    );
    assert.equal((await disabled.json()).state, "disabled");
    const enabled = await handler(post(`/api/backends/default/${first}/enable`, { token: TOKEN }));
    assert.equal((await enabled.json()).state, "up");
    const weighted = await handler(
      post(`/api/backends/default/${first}/weight`, { token: TOKEN, body: '{"weight": 5}' }),
    );
    assert.equal(weighted.status, 200);
    assert.equal((await weighted.json()).weight, 5);
    assert.equal(lb.backends[0]!.weight, 5);
  } finally {
    await lb.close();
    await one.close();
    await two.close();
  }
});

Deno.test("changes: bad input is 400 with a JSON error naming it; unknown backends 404", async () => {
  const one = startTaggedServer("1");
  const lb = startBalancer([one.address, { hostname: "::1", port: 5001 }]);
  const handler = createAdminHandler({ view: viewOf(lb), token: TOKEN });
  const first = encodeURIComponent(lb.backends[0]!.name);
  try {
    const cases: [Request, number, RegExp][] = [
      [
        post(`/api/backends/default/${first}/weight`, { token: TOKEN, body: '{"weight": 0}' }),
        400,
        /^weight: expected a whole number 1-256, got 0$/,
      ],
      [
        post(`/api/backends/default/${first}/weight`, { token: TOKEN, body: "five" }),
        400,
        /^body must be JSON like \{"weight": 5\}, got "five"$/,
      ],
      [
        post(`/api/backends/default/${first}/reboot`, { token: TOKEN }),
        404,
        /^no route POST \/api\/backends\/default\/.*\/reboot$/,
      ],
      [
        post(`/api/backends/default/%E0%A4%A/drain`, { token: TOKEN }),
        400,
        /must be percent-encoded/,
      ],
      [
        post(`/api/backends/default/127.0.0.1%3A9/drain`, { token: TOKEN }),
        404,
        /^no backend "127.0.0.1:9" in pool "default"$/,
      ],
      [post(`/api/backends/other/${first}/drain`, { token: TOKEN }), 404, /^no pool "other"$/],
    ];
    for (const [request, status, error] of cases) {
      const response = await handler(request);
      assert.equal(response.status, status, request.url);
      assert.match((await response.json()).error, error, request.url);
    }
    // An IPv6 backend, its address percent-encoded.
    const v6 = await handler(
      post(`/api/backends/default/${encodeURIComponent("[::1]:5001")}/drain`, { token: TOKEN }),
    );
    assert.equal(v6.status, 200);
    assert.equal((await v6.json()).address, "[::1]:5001");
  } finally {
    await lb.close();
    await one.close();
  }
});

Deno.test("tokenMatches() compares whole tokens", () => {
  assert.equal(tokenMatches("abc", "abc"), true);
  assert.equal(tokenMatches("abc", "abd"), false);
  assert.equal(tokenMatches("ab", "abc"), false);
});

Deno.test("--admin over a real socket: metrics, and a change with the token file", async () => {
  const one = startTaggedServer("1");
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/token`, `${TOKEN}\n`);
  const lb = await startBalancerProcess(
    [
      "--backend",
      `127.0.0.1:${one.port}`,
      "--admin",
      "127.0.0.1:0",
      "--admin-token-file",
      `${dir}/token`,
    ],
    { permissions: ["--allow-net", `--allow-read=${dir}`] },
  );
  try {
    const line = await lb.waitForLine(
      "stderr",
      /admin API on http:\/\/127\.0\.0\.1:\d+ \(changes need the token\)/,
    );
    const base = /(http:\/\/127\.0\.0\.1:\d+)/.exec(line)![1];
    const metrics = await fetch(`${base}/metrics`);
    assert.match(await metrics.text(), /^lb_build_info\{version="[^"]+",deno="[^"]+"\} 1$/m);
    const drained = await fetch(
      `${base}/api/backends/default/${encodeURIComponent(`127.0.0.1:${one.port}`)}/drain`,
      { method: "POST", headers: { authorization: `Bearer ${TOKEN}` } },
    );
    assert.equal(drained.status, 200);
    assert.equal((await drained.json()).state, "draining");
  } finally {
    await lb.close();
    await one.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--admin with --workers 2 is refused with a clear error, exit 2", async () => {
  const { code, stderr } = await runScript(
    "load_balancer.ts",
    ["--listen", "127.0.0.1:0", "--workers", "2", "--admin", "127.0.0.1:0"],
    { permissions: ["--allow-net", "--allow-run", "--unstable-net"] },
  );
  assert.equal(code, 2);
  assert.match(stderr, /--workers 2: the admin API with workers 2 is not supported yet/);
});

Deno.test("two listeners on one pool share its backends: one series, one state, one change for both", async () => {
  const one = startTaggedServer("1");
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/token`, `${TOKEN}\n`);
  await Deno.writeTextFile(
    `${dir}/lb.yaml`,
    `listeners:
  - { name: a, listen: "127.0.0.1:0", pool: web }
  - { name: b, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:${one.port}" }] }
admin: { listen: "127.0.0.1:0", token_file: ${dir}/token }
`,
  );
  const lb = await startBalancerProcess(["--config", `${dir}/lb.yaml`], {
    permissions: ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"],
    listen: false,
  });
  try {
    const base = /(http:\/\/\S+) /.exec(await lb.waitForLine("stderr", /admin API on /))![1]!;
    const ports = lb.stderr.filter((line) => /listening on /.test(line)).map((line) =>
      Number(/:(\d+);/.exec(line)![1])
    );
    assert.equal(ports.length, 2);
    for (const port of ports) assert.match(await exchange(port, "hi\n"), /^\[Server 1\] hi/);
    // Data-plane threads (the epoll engine) report in batches: wait for the count.
    let backends = await (await fetch(`${base}/api/backends`)).json();
    await until(
      async () => {
        backends = await (await fetch(`${base}/api/backends`)).json();
        return backends[0]?.total === 2;
      },
      "both connections counted",
      1000,
      20,
    );
    assert.equal(backends.length, 1, "one backend, listed once");
    assert.equal(backends[0].total, 2, "both listeners' connections on the one backend");
    const metrics = await (await fetch(`${base}/metrics`)).text();
    const series = metrics.split("\n").filter((line) => line.startsWith("lb_connections_total{"));
    assert.deepEqual(series, [
      `lb_connections_total{pool="web",backend="127.0.0.1:${one.port}"} 2`,
    ]);
    // One drain, seen by both listeners: neither has a backend left to send to.
    const drained = await fetch(
      `${base}/api/backends/web/${encodeURIComponent(`127.0.0.1:${one.port}`)}/drain`,
      { method: "POST", headers: { authorization: `Bearer ${TOKEN}` } },
    );
    assert.equal(drained.status, 200);
    await drained.body?.cancel();
    for (const port of ports) assert.equal(await exchange(port, "hi\n"), "");
  } finally {
    await lb.close();
    await one.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Starts the balancer and waits for it to either exit or say it listens (then
 * stops it): whichever comes first, with everything it said on stderr.
 */
async function startOrRefuse(
  args: string[],
  permissions: string[],
): Promise<{ code: number; stderr: string; listened: boolean }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, "load_balancer.ts", ...args],
    cwd: new URL(".", import.meta.url).pathname,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    // Unset for certain: the token, when there is one, comes from a file.
    env: { NO_COLOR: "1", LB_ADMIN_TOKEN: "" },
  }).spawn();
  const lines: string[] = [];
  let listened = false;
  await eachLine(child.stderr, (line) => {
    lines.push(line);
    if (/listening on |admin API on /.test(line) && !listened) {
      listened = true;
      child.kill("SIGKILL");
    }
  });
  const { code } = await child.status;
  return { code, stderr: lines.join("\n"), listened };
}

const ENV_TOKEN = "--allow-env=LB_ADMIN_TOKEN";

Deno.test("an admin API on a non-loopback address with no token is refused at start, saying why and how to fix it", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/lb.yaml`;
  await Deno.writeTextFile(
    file,
    `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }] }
admin: { listen: "[::]:0" }
`,
  );
  try {
    const flag = await startOrRefuse(
      ["--listen", "127.0.0.1:0", "--backend", "127.0.0.1:5001", "--admin", "0.0.0.0:0"],
      ["--allow-net", ENV_TOKEN],
    );
    assert.equal(flag.listened, false, flag.stderr);
    assert.equal(flag.code, 2, flag.stderr);
    assert.match(
      flag.stderr,
      /^load_balancer: command line: --admin 0\.0\.0\.0:0: not a loopback address, so other hosts could reach the admin API, and no admin token is set: give one \(--admin-token-file FILE, admin\.token_file or LB_ADMIN_TOKEN\), or listen on loopback \(127\.0\.0\.1:0\)$/m,
    );
    const fromFile = await startOrRefuse(
      ["--config", file],
      ["--allow-net", "--allow-read", `--allow-env=LOG_TOKENS,LOG_STREAM,LB_ADMIN_TOKEN`],
    );
    assert.equal(fromFile.listened, false, fromFile.stderr);
    assert.equal(fromFile.code, 2, fromFile.stderr);
    assert.match(
      fromFile.stderr,
      new RegExp(`^load_balancer: ${file}: admin\\.listen \\[::\\]:0: not a loopback address`, "m"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--check: loopback admin addresses need no token; any other needs one, a wildcard too", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/token`, `${TOKEN}\n`);
  const cases: [admin: string, token: boolean, valid: boolean][] = [
    ["127.0.0.1:9000", false, true],
    ["127.0.0.2:9000", false, true],
    ["[::1]:9000", false, true],
    ["localhost:9000", false, true],
    ["9000", false, true],
    ["0.0.0.0:9000", false, false],
    ["[::]:9000", false, false],
    ["192.0.2.1:9000", false, false],
    ["admin.example:9000", false, false],
    ["0.0.0.0:9000", true, true],
    ["[::]:9000", true, true],
  ];
  try {
    await Promise.all(cases.map(async ([admin, token, valid]) => {
      const what = `--admin ${admin}${token ? " with a token file" : ""}`;
      const { code, stderr } = await runScript(
        "load_balancer.ts",
        [
          "--backend",
          "127.0.0.1:5001",
          "--admin",
          admin,
          ...(token ? ["--admin-token-file", `${dir}/token`] : []),
          "--check",
        ],
        {
          permissions: ["--allow-net", `--allow-read=${dir}`, ENV_TOKEN],
          env: { LB_ADMIN_TOKEN: "" },
        },
      );
      assert.equal(code, valid ? 0 : 1, `${what}: ${stderr}`);
      if (!valid) assert.match(stderr, /not a loopback address/, what);
    }));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a reload that would leave the admin API off loopback with no token fails, naming the field, and keeps the old token", async () => {
  const one = startTaggedServer("1");
  const dir = await Deno.makeTempDir();
  const file = `${dir}/lb.yaml`;
  await Deno.writeTextFile(`${dir}/token`, `${TOKEN}\n`);
  const config = (admin: string) =>
    `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:${one.port}" }] }
admin: ${admin}
`;
  await Deno.writeTextFile(file, config(`{ listen: "127.0.0.1:0", token_file: ${dir}/token }`));
  const lb = await startBalancerProcess(["--config", file], {
    permissions: [
      "--allow-net",
      "--allow-read",
      "--allow-env=LOG_TOKENS,LOG_STREAM,LB_ADMIN_TOKEN",
    ],
    listen: false,
  });
  try {
    const base = /(http:\/\/\S+) /.exec(await lb.waitForLine("stderr", /admin API on /))![1]!;
    const drain = () =>
      fetch(`${base}/api/backends/web/${encodeURIComponent(`127.0.0.1:${one.port}`)}/drain`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}` },
      }).then(async (response) => (await response.body?.cancel(), response.status));
    await Deno.writeTextFile(file, config(`{ listen: "0.0.0.0:9000" }`));
    lb.kill("SIGHUP");
    const failed = await lb.waitForLine("stderr", /reload \(SIGHUP\) failed/);
    assert.match(
      failed,
      new RegExp(
        `still running the previous config: ${file}: admin\\.listen 0\\.0\\.0\\.0:9000: ` +
          `not a loopback address, so other hosts could reach the admin API, and no admin ` +
          `token is set`,
      ),
    );
    assert.equal(await drain(), 200, "the old token still works");
    // On loopback, a reload may drop the token: changes are refused from then on.
    await Deno.writeTextFile(file, config(`{ listen: "127.0.0.1:0" }`));
    lb.kill("SIGHUP");
    await lb.waitForLine("stderr", /reloaded \(SIGHUP\)/);
    assert.equal(await drain(), 403);
  } finally {
    await lb.close();
    await one.close();
    await Deno.remove(dir, { recursive: true });
  }
});
