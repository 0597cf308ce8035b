/** `--workers N`: a supervisor and N processes sharing one port. */

import assert from "node:assert/strict";
import {
  connectLoopback,
  exchange,
  listenLoopback,
  readAll,
  refusingAddress,
  runScript,
  startBalancerProcess,
  startEchoServer,
  startTaggedServer,
  TEST_ENGINE,
  writeAll,
} from "./test_util.ts";
import { V8_FLAGS } from "./supervisor.ts";

/** The supervisor's worker processes, by pid. */
async function workersOf(supervisorPid: number): Promise<number[]> {
  const { stdout } = await new Deno.Command("pgrep", { args: ["-P", String(supervisorPid)] })
    .output();
  return new TextDecoder().decode(stdout).trim().split("\n").filter(Boolean).map(Number).sort();
}

Deno.test("--workers 2 runs two processes, both listening on one port, and traffic flows", async () => {
  const echo = startEchoServer();
  const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`, "--workers", "2"]);
  try {
    const workers = await workersOf(lb.pid);
    assert.equal(workers.length, 2);
    // Each runs with the V8 flags `deno task lb` runs the balancer with.
    for (const pid of workers) {
      // Through ps: Deno reads /proc/PID/… only with every permission.
      const { stdout } = await new Deno.Command("ps", { args: ["-o", "args=", "-p", String(pid)] })
        .output();
      const args = new TextDecoder().decode(stdout).trim().split(" ");
      assert.ok(args.includes(V8_FLAGS), args.join(" "));
    }
    for (let i = 0; i < 40; i++) assert.equal(await exchange(lb.port, `hello ${i}`), `hello ${i}`);
    // Both workers said where they listen: the same port.
    const listening = lb.stderr.filter((line) => / listening on .*; backends/.test(line));
    assert.equal(listening.length, 2);
    assert.ok(listening.every((line) => line.includes(`127.0.0.1:${lb.port};`)));
    assert.deepEqual(
      listening.map((line) => /^\[worker (\d)\]/.exec(line)?.[1]).sort(),
      ["1", "2"],
    );
    // On the epoll engine, threads do the same in one process: it says so.
    const advice = lb.stderr.some((line) => /--threads 2 does the same .* prefer it/.test(line));
    assert.equal(advice, TEST_ENGINE === "epoll");
  } finally {
    await lb.close();
    await echo.close();
  }
});

Deno.test("a worker that is killed is replaced, and serving goes on", async () => {
  const echo = startEchoServer();
  const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`, "--workers", "2"]);
  try {
    const [victim, survivor] = await workersOf(lb.pid);
    Deno.kill(victim!, "SIGKILL");
    await lb.waitForLine(
      "stderr",
      new RegExp(`worker \\d \\(pid ${victim}\\) exited with signal SIGKILL; restarting in 100 ms`),
    );
    let now: number[] = [];
    for (let wait = 0; wait < 100; wait++) {
      now = await workersOf(lb.pid);
      if (now.length === 2 && !now.includes(victim!)) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(now.length, 2);
    assert.ok(now.includes(survivor!) && !now.includes(victim!), `workers now ${now}`);
    // Three "listening" lines: two at the start, one from the replacement.
    await lb.waitForLine("stderr", /listening on .*; backends/);
    for (let wait = 0; wait < 100; wait++) {
      if (lb.stderr.filter((line) => / listening on .*; backends/.test(line)).length === 3) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(lb.stderr.filter((line) => / listening on .*; backends/.test(line)).length, 3);
    for (let i = 0; i < 20; i++) assert.equal(await exchange(lb.port, `after ${i}`), `after ${i}`);
  } finally {
    await lb.close();
    await echo.close();
  }
});

Deno.test("SIGINT to the whole process group (Ctrl-C) drains the workers, not cuts them", async () => {
  const echo = startEchoServer();
  const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`, "--workers", "2"]);
  try {
    const held = await connectLoopback(lb.port);
    await writeAll(held, new TextEncoder().encode("before"));
    assert.equal(await held.read(new Uint8Array(6)), 6);
    // What the kernel does for a terminal's Ctrl-C: the signal to every
    // process of the group. The supervisor passes it on as well, so each
    // worker gets it twice.
    const workers = await workersOf(lb.pid);
    lb.kill("SIGINT");
    for (const pid of workers) Deno.kill(pid, "SIGINT");
    for (const id of [1, 2]) {
      await lb.waitForLine("stderr", new RegExp(`^\\[worker ${id}\\] .* no longer accepting`));
    }
    // The held connection is served to its end.
    await writeAll(held, new TextEncoder().encode(" and after"));
    await held.closeWrite();
    assert.equal(new TextDecoder().decode(await readAll(held)), " and after");
    held.close();
    assert.equal((await lb.status).code, 0);
    assert.doesNotMatch(lb.stderr.join("\n"), /again: exiting now/);
  } finally {
    await lb.close();
    await echo.close();
  }
});

Deno.test("SIGTERM to the supervisor drains every worker, then it exits 0", async () => {
  const echo = startEchoServer();
  const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`, "--workers", "2"]);
  try {
    const held = await connectLoopback(lb.port);
    await writeAll(held, new TextEncoder().encode("before"));
    assert.equal(await held.read(new Uint8Array(6)), 6);
    // Twice, the second as soon as the first is taken, as a process group's
    // signal passed on by `deno task` arrives: the same request, a drain.
    lb.kill("SIGTERM");
    await lb.waitForLine("stderr", /SIGTERM: passed to 2 worker\(s\)/);
    lb.kill("SIGTERM");
    for (const id of [1, 2]) {
      await lb.waitForLine("stderr", new RegExp(`^\\[worker ${id}\\] .* no longer accepting`));
    }
    await assert.rejects(
      Deno.connect({ hostname: "127.0.0.1", port: lb.port }),
      Deno.errors.ConnectionRefused,
    );
    // The held connection is served to its end.
    await writeAll(held, new TextEncoder().encode(" and after"));
    await held.closeWrite();
    assert.equal(new TextDecoder().decode(await readAll(held)), " and after");
    held.close();
    assert.equal((await lb.status).code, 0);
    assert.match(lb.stderr.at(-1)!, /all workers have exited/);
    assert.doesNotMatch(lb.stderr.join("\n"), /again: exiting now/);
  } finally {
    await lb.close();
    await echo.close();
  }
});

Deno.test("--workers still reports a port another program holds, exit 2", async () => {
  const busy = listenLoopback();
  try {
    const { code, stderr } = await runScript(
      "load_balancer.ts",
      ["--listen", `127.0.0.1:${busy.addr.port}`, "--workers", "2"],
      { permissions: ["--allow-net", "--allow-run", "--unstable-net"] },
    );
    assert.equal(code, 2);
    assert.match(
      stderr,
      new RegExp(`^load_balancer: --listen 127.0.0.1:${busy.addr.port}: EADDRINUSE.*\\n$`),
    );
  } finally {
    busy.close();
  }
});

Deno.test("workers whose supervisor is killed outright drain and exit by themselves", async () => {
  const echo = startEchoServer();
  const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`, "--workers", "2"]);
  let workers: number[] = [];
  try {
    workers = await workersOf(lb.pid);
    assert.equal(workers.length, 2);
    Deno.kill(lb.pid, "SIGKILL");
    await lb.status;
    // Within about a second each worker sees it has a new parent, drains
    // (nothing is open) and exits.
    for (let wait = 0; wait < 100 && workers.some(alive); wait++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.deepEqual(workers.filter(alive), []);
  } finally {
    for (const pid of workers.filter(alive)) Deno.kill(pid, "SIGKILL");
    await lb.close();
    await echo.close();
  }
});

function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT"); // signal 0 is not offered; SIGCONT is harmless
    return true;
  } catch {
    return false;
  }
}

Deno.test("SIGHUP to the supervisor reloads every worker's config", async () => {
  const [a, b] = [startTaggedServer("a"), startTaggedServer("b")];
  const file = await Deno.makeTempFile({ suffix: ".yaml" });
  const write = (port: number) =>
    Deno.writeTextFile(
      file,
      `listeners: [{ name: web, listen: "127.0.0.1:0", pool: web }]
pools: { web: { backends: [{ address: "127.0.0.1:${port}" }] } }
workers: 2
`,
    );
  await write(a.port);
  const lb = await startBalancerProcess(["--config", file, "--workers", "2"], {
    permissions: [
      "--allow-net",
      "--allow-run",
      "--unstable-net",
      "--allow-read",
      "--allow-env=LOG_TOKENS,LOG_STREAM",
    ],
  });
  try {
    assert.match(await exchange(lb.port, "x\n"), /^\[Server a\]/);
    await write(b.port);
    lb.kill("SIGHUP");
    for (const id of [1, 2]) {
      await lb.waitForLine("stderr", new RegExp(`^\\[worker ${id}\\] .* reloaded \\(SIGHUP\\)`));
    }
    // Whichever worker takes them, new connections go to the new backend.
    for (let i = 0; i < 6; i++) assert.match(await exchange(lb.port, "x\n"), /^\[Server b\]/);
  } finally {
    await lb.close();
    await Deno.remove(file);
    await a.close();
    await b.close();
  }
});

Deno.test("--workers 2 --access-log FILE: workers get the write permission, and SIGUSR2 reopens in each", async () => {
  const echo = startEchoServer();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/access.log`;
  const lb = await startBalancerProcess(
    ["--backend", `127.0.0.1:${echo.port}`, "--workers", "2", "--access-log", path],
    { permissions: ["--allow-net", "--allow-run", "--unstable-net", `--allow-write=${dir}`] },
  );
  const lines = async (file: string) =>
    (await Deno.readTextFile(file).catch(() => "")).split("\n").filter(Boolean);
  try {
    for (let i = 0; i < 10; i++) assert.equal(await exchange(lb.port, `x${i}`), `x${i}`);
    // Lines are flushed within 100 ms of being queued.
    for (let i = 0; i < 200 && (await lines(path)).length < 10; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal((await lines(path)).length, 10);
    await Deno.rename(path, `${path}.1`);
    lb.kill("SIGUSR2");
    await lb.waitForLine("stderr", /^\[worker 1\] .*SIGUSR2: reopened the access log/);
    await lb.waitForLine("stderr", /^\[worker 2\] .*SIGUSR2: reopened the access log/);
    assert.equal(await exchange(lb.port, "after"), "after");
    for (let i = 0; i < 200 && (await lines(path)).length < 1; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal((await lines(path)).length, 1);
    assert.equal((await lines(`${path}.1`)).length, 10);
    assert.ok(!lb.stderr.some((line) => /NotCapable/.test(line)), lb.stderr.join("\n"));
  } finally {
    await lb.close();
    await echo.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the --workers supervisor itself warns about SIGUSR1 when it may not ignore it", async () => {
  const echo = startEchoServer();
  const lb = await startBalancerProcess([
    "--engine",
    "deno",
    "--backend",
    `127.0.0.1:${echo.port}`,
    "--workers",
    "2",
  ]);
  try {
    // Not a worker's line ("[worker N] …"): the supervisor's own.
    await lb.waitForLine("stderr", /^\S+ load_balancer: warning: SIGUSR1 would open a debugger/);
  } finally {
    await lb.close();
    await echo.close();
  }
});

Deno.test("workers of a file reload it as the supervisor would check it: a second listener is refused by name", async () => {
  const echo = startEchoServer();
  const dir = await Deno.makeTempDir();
  const file = `${dir}/lb.yaml`;
  const port = refusingAddress().port; // free now; the balancer takes it
  const config = (extra: string) =>
    `workers: 2
listeners:
  - { name: a, listen: "127.0.0.1:${port}", pool: web }
${extra}pools:
  web: { backends: [{ address: "127.0.0.1:${echo.port}" }] }
`;
  await Deno.writeTextFile(file, config(""));
  const lb = await startBalancerProcess(["--config", file], {
    permissions: [
      "--allow-net",
      "--allow-run",
      "--unstable-net",
      "--allow-read",
      "--allow-env=LOG_TOKENS,LOG_STREAM",
    ],
    listen: false,
  });
  try {
    await Deno.writeTextFile(file, config(`  - { name: b, listen: "127.0.0.1:0", pool: web }\n`));
    lb.kill("SIGHUP");
    const failed = await lb.waitForLine("stderr", /reload \(SIGHUP\) failed/);
    assert.match(failed, /workers: workers 2 with 2 listeners: workers support one listener/);
    assert.doesNotMatch(failed, /--listen/);
    assert.equal(await exchange(port, "still"), "still");
  } finally {
    await lb.close();
    await echo.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task lb runs the balancer with the V8 flags its workers get", async () => {
  const deno = JSON.parse(await Deno.readTextFile(new URL("./deno.json", import.meta.url)));
  assert.ok((deno.tasks.lb as string).split(" ").includes(V8_FLAGS), deno.tasks.lb);
});
