/** Live reload: SIGHUP and --watch, under traffic. */

import assert from "node:assert/strict";
import {
  connectLoopback,
  exchange,
  listenLoopback,
  readAll,
  serverOf,
  startBalancerProcess,
  startTaggedServer,
  until,
  writeAll,
} from "./test_util.ts";

const PERMISSIONS = ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"];

function freePort(): number {
  const listener = listenLoopback();
  const port = listener.addr.port;
  listener.close();
  return port;
}

function config(listeners: [name: string, port: number, backendPorts: number[]][]): string {
  return `listeners:
${
    listeners.map(([name, port]) =>
      `  - { name: ${name}, listen: "127.0.0.1:${port}", pool: ${name} }`
    ).join("\n")
  }
pools:
${
    listeners.map(([name, , ports]) =>
      `  ${name}: { backends: [${ports.map((p) => `{ address: "127.0.0.1:${p}" }`).join(", ")}] }`
    ).join("\n")
  }
`;
}

/** Sends one line on an open connection to a tagged backend, returns the answer line. */
async function ask(conn: Deno.Conn, line: string): Promise<string> {
  await writeAll(conn, new TextEncoder().encode(`${line}\n`));
  let answer = "";
  const buffer = new Uint8Array(256);
  while (!answer.endsWith("\n")) {
    const read = await conn.read(buffer);
    if (read === null) throw new Error(`closed; got ${JSON.stringify(answer)}`);
    answer += new TextDecoder().decode(buffer.subarray(0, read));
  }
  return answer;
}

Deno.test("SIGHUP reloads under live traffic: open connections finish, new ones follow the new config, a bad file changes nothing", async () => {
  const [a, b, c] = ["a", "b", "c"].map(startTaggedServer);
  const [web, api] = [freePort(), freePort()];
  const file = await Deno.makeTempFile({ suffix: ".yaml" });
  await Deno.writeTextFile(file, config([["web", web, [a!.port]]]));
  const lb = await startBalancerProcess(["--config", file], {
    permissions: PERMISSIONS,
    listen: false,
  });
  // Clients keep coming on the web port all through the reloads.
  let traffic = true;
  const seen: string[] = [];
  const failures: string[] = [];
  const background = (async () => {
    while (traffic) {
      try {
        seen.push(serverOf(await exchange(web, "bg\n")));
      } catch (error) {
        failures.push(String(error));
      }
    }
  })();
  try {
    const held = await connectLoopback(web);
    assert.equal(serverOf(await ask(held, "before")), "a");

    await Deno.writeTextFile(
      file,
      config([["web", web, [b!.port]], ["api", api, [c!.port]]]),
    );
    lb.kill("SIGHUP");
    await lb.waitForLine("stderr", /reloaded \(SIGHUP\): web on .* → web; api on .* → api/);
    assert.equal(serverOf(await exchange(web, "x\n")), "b");
    assert.equal(serverOf(await exchange(api, "x\n")), "c");
    // The connection opened before the reload still goes to its backend, uncut.
    assert.equal(serverOf(await ask(held, "after")), "a");

    // A bad file: one line says why, and the running config stays.
    await Deno.writeTextFile(
      file,
      config([["web", web, [b!.port]]]).replace(/127\.0\.0\.1:\d+" \}\]/, 'nowhere" }]'),
    );
    lb.kill("SIGHUP");
    const failed = await lb.waitForLine("stderr", /reload \(SIGHUP\) failed/);
    assert.match(
      failed,
      /still running the previous config: .*pools\.web\.backends\[0\]\.address: .*got "nowhere"/,
    );
    assert.equal(serverOf(await exchange(web, "x\n")), "b");
    assert.equal(serverOf(await exchange(api, "x\n")), "c");

    await held.closeWrite();
    assert.equal((await readAll(held)).length, 0);
    held.close();
  } finally {
    traffic = false;
    await background;
    await lb.close();
    await Deno.remove(file);
    for (const server of [a, b, c]) await server!.close();
  }
  assert.deepEqual(failures, [], "no client was refused or cut during the reloads");
  assert.ok(seen.length > 0 && seen.every((s) => s === "a" || s === "b"), seen.join(","));
  assert.equal(seen.at(-1), "b");
});

Deno.test("--watch reloads when the file changes", async () => {
  const [a, b] = ["a", "b"].map(startTaggedServer);
  const port = freePort();
  const file = await Deno.makeTempFile({ suffix: ".yaml" });
  await Deno.writeTextFile(file, config([["web", port, [a!.port]]]));
  const lb = await startBalancerProcess(["--config", file, "--watch"], {
    permissions: PERMISSIONS,
    listen: false,
  });
  try {
    assert.equal(serverOf(await exchange(port, "x\n")), "a");
    await Deno.writeTextFile(file, config([["web", port, [b!.port]]]));
    await lb.waitForLine("stderr", /reloaded \(file changed\)/);
    assert.equal(serverOf(await exchange(port, "x\n")), "b");
  } finally {
    await lb.close();
    await Deno.remove(file);
    await a!.close();
    await b!.close();
  }
});

Deno.test("a reload that cannot be used is one counted line; later reloads and SIGTERM still work", async () => {
  const [a, b] = ["a", "b"].map(startTaggedServer);
  const port = freePort();
  const dir = await Deno.makeTempDir();
  const file = `${dir}/lb.yaml`;
  await Deno.writeTextFile(`${dir}/token`, "t0k3n\n");
  const admin = `admin: { listen: "127.0.0.1:0", token_file: ${dir}/token }\n`;
  await Deno.writeTextFile(file, config([["web", port, [a!.port]]]) + admin);
  const lb = await startBalancerProcess(["--config", file], {
    permissions: PERMISSIONS,
    listen: false,
  });
  try {
    const base = /(http:\/\/\S+) /.exec(await lb.waitForLine("stderr", /admin API on /))![1];
    const bad = [
      // A YAML anchor that refers to itself, and pool names every object has.
      config([["web", port, [b!.port]]]).replace(
        "- { name: web,",
        "- &l { maxconn: *l, name: web,",
      ),
      config([["web", port, [b!.port]]]).replace("pool: web }", "pool: toString }"),
      config([["web", port, [b!.port]]]).replace("pool: web }", "pool: __proto__ }"),
    ];
    for (const [i, text] of bad.entries()) {
      await Deno.writeTextFile(file, text + admin);
      lb.kill("SIGHUP");
      const failures = new RegExp(`^lb_reload_failures_total ${i + 1}$`, "m");
      await until(
        async () => failures.test(await (await fetch(`${base}/metrics`)).text()),
        `reload failure ${i + 1} counted`,
        1000,
        20,
      );
      assert.equal(serverOf(await exchange(port, "x\n")), "a", "the old config still serves");
    }
    const failed = lb.stderr.filter((line) => /reload \(SIGHUP\) failed/.test(line));
    assert.equal(failed.length, 3, failed.join("\n"));
    assert.match(failed[0]!, /listeners\[0\]\.maxconn: expected a whole number .*got \{/);
    assert.match(failed[1]!, /no pool named "toString"/);
    assert.match(failed[2]!, /listeners\[0\]\.pool: expected a name/);
    // Every line the balancer wrote is its own: no stack trace, no continuation.
    for (const line of lb.stderr) assert.match(line, /^\S+ load_balancer: /, line);

    await Deno.writeTextFile(file, config([["web", port, [b!.port]]]) + admin);
    lb.kill("SIGHUP");
    await lb.waitForLine("stderr", /reloaded \(SIGHUP\)/);
    assert.equal(serverOf(await exchange(port, "x\n")), "b");
    lb.kill("SIGTERM");
    assert.equal((await lb.status).code, 0, "the first SIGTERM ends it, cleanly");
  } finally {
    await lb.close();
    await Deno.remove(dir, { recursive: true });
    await a!.close();
    await b!.close();
  }
});

Deno.test("a reload applies a rotated admin token, and names what needs a restart", async () => {
  const a = startTaggedServer("a");
  const port = freePort();
  const dir = await Deno.makeTempDir();
  const file = `${dir}/lb.yaml`;
  await Deno.writeTextFile(`${dir}/token`, "old-token\n");
  const admin = (listen: string) => `admin: { listen: "${listen}", token_file: ${dir}/token }\n`;
  await Deno.writeTextFile(file, config([["web", port, [a.port]]]) + admin("127.0.0.1:0"));
  const lb = await startBalancerProcess(["--config", file], {
    permissions: PERMISSIONS,
    listen: false,
  });
  try {
    const base = /(http:\/\/\S+) /.exec(await lb.waitForLine("stderr", /admin API on /))![1];
    const drain = (token: string) =>
      fetch(`${base}/api/backends/web/${encodeURIComponent(`127.0.0.1:${a.port}`)}/drain`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
      }).then(async (response) => (await response.body?.cancel(), response.status));
    assert.equal(await drain("old-token"), 200);

    await Deno.writeTextFile(`${dir}/token`, "new-token\n");
    const other = freePort();
    await Deno.writeTextFile(file, config([["web", port, [a.port]]]) + admin(`127.0.0.1:${other}`));
    lb.kill("SIGHUP");
    const reloaded = await lb.waitForLine("stderr", /reloaded \(SIGHUP\)/);
    assert.match(
      reloaded,
      new RegExp(
        `not applied until a restart: admin\\.listen \\(127\\.0\\.0\\.1:0 -> 127\\.0\\.0\\.1:${other}\\)$`,
      ),
    );
    assert.equal(await drain("old-token"), 401);
    assert.equal(await drain("new-token"), 200);

    await Deno.writeTextFile(file, config([["web", port, [a.port]]]) + "workers: 2\n");
    lb.kill("SIGHUP");
    const second = await lb.waitForLine("stderr", /reloaded \(SIGHUP\).*workers/);
    assert.match(
      second,
      /not applied until a restart: admin\.listen \(127\.0\.0\.1:\d+ -> off\), workers \(1 -> 2\)$/,
    );
  } finally {
    await lb.close();
    await Deno.remove(dir, { recursive: true });
    await a.close();
  }
});

Deno.test("a reload that widens a listener on the same port says it needs a restart, and keeps serving", async () => {
  const a = startTaggedServer("a");
  const port = freePort();
  const file = await Deno.makeTempFile({ suffix: ".yaml" });
  await Deno.writeTextFile(file, config([["web", port, [a.port]]]));
  const lb = await startBalancerProcess(["--config", file], {
    permissions: PERMISSIONS,
    listen: false,
  });
  try {
    await Deno.writeTextFile(
      file,
      config([["web", port, [a.port]]]).replace(`127.0.0.1:${port}`, `0.0.0.0:${port}`),
    );
    lb.kill("SIGHUP");
    const failed = await lb.waitForLine("stderr", /reload \(SIGHUP\) failed/);
    assert.match(
      failed,
      new RegExp(`0\\.0\\.0\\.0:${port} overlaps 127\\.0\\.0\\.1:${port}.*needs a restart`),
    );
    assert.equal(serverOf(await exchange(port, "x\n")), "a");
  } finally {
    await lb.close();
    await Deno.remove(file);
    await a.close();
  }
});

Deno.test("SIGTERM after a reload removed a listener drains that listener's connections too", async () => {
  const dir = await Deno.makeTempDir();
  const backend = startTaggedServer("1");
  const [kept, removed] = [freePort(), freePort()];
  const file = `${dir}/lb.yaml`;
  await Deno.writeTextFile(
    file,
    config([["kept", kept, [backend.port]], ["removed", removed, [backend.port]]]) +
      "drain_timeout_ms: 60000\n",
  );
  const lb = await startBalancerProcess(["--config", file], {
    permissions: PERMISSIONS,
    listen: false,
  });
  let held: Deno.TcpConn | undefined;
  try {
    held = await connectLoopback(removed);
    assert.equal(await ask(held, "hi"), "[Server 1] hi\n");
    // Removed with a long drain; then the drain timeout shortened by another reload.
    const keptOnly = config([["kept", kept, [backend.port]]]);
    await Deno.writeTextFile(file, keptOnly + "drain_timeout_ms: 60000\n");
    lb.kill("SIGHUP");
    await lb.waitForLine("stderr", /reloaded/);
    await Deno.writeTextFile(file, keptOnly + "drain_timeout_ms: 300\n");
    lb.kill("SIGHUP");
    await until(
      () => lb.stderr.filter((l) => /reloaded/.test(l)).length === 2,
      "the second reload",
    );
    lb.kill("SIGTERM");
    // The held connection drains with the rest: cut at the (new) drain
    // timeout, with its access line, not dropped by an exit under it.
    assert.equal((await lb.status).code, 0);
    assert.ok(
      lb.stdout.some((line) => /listener=removed .*end=drain-timeout/.test(line)),
      lb.stdout.join("\n"),
    );
  } finally {
    held?.close();
    await lb.close();
    await backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});
