/**
 * What a new user, or an attacker, can throw at `load_balancer.ts`: signals,
 * bad files and flag combinations that must fail before anything binds, with
 * one line naming what is wrong. Each case here was seen to go wrong once.
 */

import assert from "node:assert/strict";
import {
  exchange,
  listenLoopback,
  runScript,
  startBalancerProcess,
  startEchoServer,
} from "./test_util.ts";

const CONFIG_PERMISSIONS = ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"];

async function writeTemp(text: string, suffix = ".yaml"): Promise<string> {
  const file = await Deno.makeTempFile({ suffix });
  await Deno.writeTextFile(file, text);
  return file;
}

/** A file whose one listener uses `pool`, with one pool `web`. */
function fileWithPool(pool: string): string {
  return `listeners:
  - { name: web, listen: "127.0.0.1:0", pool: ${pool} }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }] }
`;
}

const SELF_REFERENCE = `listeners:
  - &l { name: a, listen: "127.0.0.1:0", pool: web, maxconn: *l }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }] }
`;

/** Whether something accepts on 127.0.0.1:9229, the inspector's port. */
async function inspectorListening(): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: 9229 });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

Deno.test({
  name: "SIGUSR1 opens no debugger: with --allow-ffi it is ignored, and the balancer serves on",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    assert.equal(await inspectorListening(), false, "something else holds 127.0.0.1:9229");
    const echo = startEchoServer();
    const lb = await startBalancerProcess(["--backend", `127.0.0.1:${echo.port}`], {
      permissions: ["--allow-net", "--allow-ffi"],
    });
    try {
      // The kernel says the signal is ignored before we send it.
      const { stdout } = await new Deno.Command("cat", { args: [`/proc/${lb.pid}/status`] })
        .output();
      const status = new TextDecoder().decode(stdout);
      const ignored = BigInt(`0x${/^SigIgn:\s*([0-9a-f]+)$/m.exec(status)![1]}`);
      assert.equal((ignored >> 9n) & 1n, 1n, "SIGUSR1 (10) is in SigIgn");
      lb.kill("SIGUSR1");
      // The balancer still answers, so the signal has been dealt with.
      assert.equal(await exchange(lb.port, "after"), "after");
      assert.equal(await inspectorListening(), false);
      assert.ok(!lb.stderr.some((line) => /Debugger listening/.test(line)), lb.stderr.join("\n"));
      assert.ok(!lb.stderr.some((line) => /SIGUSR1 would open a debugger/.test(line)));
    } finally {
      await lb.close();
      await echo.close();
    }
  },
});

Deno.test({
  name: "without --allow-ffi the balancer says plainly that SIGUSR1 would open a debugger",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const echo = startEchoServer();
    const lb = await startBalancerProcess([
      "--engine",
      "deno",
      "--backend",
      `127.0.0.1:${echo.port}`,
    ]);
    try {
      await lb.waitForLine("stderr", /warning: SIGUSR1 would open a debugger .*--allow-ffi/);
      // An engine asked for by name is said too, as auto's choice is.
      await lb.waitForLine("stderr", / load_balancer: engine deno$/);
    } finally {
      await lb.close();
      await echo.close();
    }
  },
});

Deno.test("--check and start agree: what --check calls valid starts, what it refuses fails alike", async () => {
  const missing = `${await Deno.makeTempDir()}/no-such-token`;
  const blank = await writeTemp("  \n\t\n", ".token");
  const busy = listenLoopback();
  const files = {
    self: await writeTemp(SELF_REFERENCE),
    toString: await writeTemp(fileWithPool("toString")),
    proto: await writeTemp(fileWithPool("__proto__")),
    empty: await writeTemp(fileWithPool('""')),
    emptyFile: await writeTemp(""),
    twoListeners: await writeTemp(`workers: 2
listeners:
  - { name: a, listen: "127.0.0.1:0", pool: web }
  - { name: b, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }] }
`),
    overlap: await writeTemp(`listeners:
  - { name: a, listen: "127.0.0.1:5200", pool: web }
  - { name: b, listen: "0.0.0.0:5200", pool: web }
  - { name: c, listen: "localhost:5201", pool: web }
  - { name: d, listen: "127.0.0.1:5201", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }] }
`),
    duplicate: await writeTemp(`listeners:
  - { name: a, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }, { address: "127.0.0.1:5001", weight: 3 }] }
`),
    badYaml: await writeTemp("listeners: [\npools: x\n"),
    loop: await writeTemp(`listeners:
  - { name: a, listen: "0.0.0.0:5611", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }, { address: "localhost:5611" }] }
`),
    protoPool: await writeTemp(
      '{"listeners":[{"name":"a","listen":"127.0.0.1:0","pool":"web"}],' +
        '"pools":{"__proto__":{"backends":[{"address":"x"}]},' +
        '"web":{"backends":[{"address":"127.0.0.1:5001"}]}}}',
      ".json",
    ),
  };
  const cases: [string[], RegExp][] = [
    [["--config", files.self], /listeners\[0\]\.maxconn: expected a whole number .*got \{/],
    [
      ["--config", files.toString],
      /listeners\[0\]\.pool: no pool named "toString"; pools are "web"/,
    ],
    [["--config", files.proto], /listeners\[0\]\.pool: expected a name of 1-64 letters/],
    [["--config", files.empty], /listeners\[0\]\.pool: expected a name of 1-64 letters.*got ""/],
    [["--config", files.emptyFile], /the file is empty; expected listeners and pools/],
    [["--config", files.twoListeners], /workers: workers 2 with 2 listeners/],
    [
      ["--config", files.overlap],
      /listeners\[1\]\.listen: "0\.0\.0\.0:5200" overlaps listeners\[0\]/,
    ],
    [
      ["--config", files.overlap],
      /listeners\[3\]\.listen: "127\.0\.0\.1:5201" overlaps listeners\[2\]/,
    ],
    [
      ["--config", files.duplicate],
      /backends\[1\]\.address: "127\.0\.0\.1:5001" is already backends\[0\]/,
    ],
    [["--config", files.badYaml], /not valid YAML or JSON: line \d+, column \d+: [^:]*[^:\s]$/m],
    [
      ["--workers", "2", "--admin", "9000"],
      /--workers 2: the admin API with workers 2 is not supported/,
    ],
    [
      ["--backend", "127.0.0.1:5001", "--backend", "127.0.0.1:5001,weight=3"],
      /is already backends\[0\]/,
    ],
    [
      ["--admin", "9000", "--admin-token-file", missing],
      /admin\.token_file .*no-such-token: ENOENT/,
    ],
    [["--admin", "9000", "--admin-token-file", blank], /expected one token .*got an empty file/],
    [
      ["--access-log", "/nonexistent/dir/x.log"],
      /--access-log \/nonexistent\/dir\/x\.log: ENOENT/,
    ],
    [["--watch"], /--watch: needs --config FILE to watch/],
    [
      ["--listen", "[:::::]:5100"],
      /--listen \[:::::\]:5100: bracketed host must be an IPv6 address/,
    ],
    [
      ["--listen", "127.0.0.1:5100", "--admin", "5100"],
      /--admin 5100: "127\.0\.0\.1:5100" overlaps listeners\[0\]\.listen/,
    ],
    [["--admin", "9000"], /needs --allow-env=LB_ADMIN_TOKEN/],
    [
      ["--listen", "127.0.0.1:5611", "--backend", "127.0.0.1:5611"],
      /--backend 127\.0\.0\.1:5611: "127\.0\.0\.1:5611" is listener default's own address/,
    ],
    [
      ["--config", files.loop],
      /backends\[1\]\.address: "localhost:5611" is listener a's own address/,
    ],
    [
      ["--listen", "[::ffff:127.0.0.1]:5600", "--admin", "5600"],
      /--admin 5600: "127\.0\.0\.1:5600" overlaps listeners\[0\]\.listen/,
    ],
    [["--workers", "2"], /workers 2: starting the worker processes needs --allow-run/],
    [["--config", files.protoPool], /pools\.__proto__: "__proto__" is not a pool name/],
    [["--backend", "127.0.0.1:5001,weight=2,weight=3"], /weight is given twice/],
    [["--backend", "0.0.0.0:5001"], /"0\.0\.0\.0:5001" is not an address to connect to/],
    [["--admin-token-file", blank], /--admin-token-file: needs --admin/],
  ];
  const permissions = [...CONFIG_PERMISSIONS, "--allow-write=/nonexistent"];
  const one = async ([args, message]: [string[], RegExp]) => {
    const what = args.join(" ");
    const checked = await runScript("load_balancer.ts", [...args, "--check"], { permissions });
    // A bad flag is a usage error (2) even with --check, its line naming the flag; a bad
    // setting (the file's, or what start-up checks beyond the flags) is 1.
    const usage = /^load_balancer: --/.test(checked.stderr);
    assert.equal(checked.code, usage ? 2 : 1, `--check ${what}: ${checked.stderr}`);
    assert.match(checked.stderr, message, `--check ${what}`);
    assert.doesNotMatch(checked.stderr, /^\s+at |TypeError|unexpected error/m, what);
    // Start-up refuses it the same way, before anything listens.
    const started = await runScript("load_balancer.ts", args, { permissions });
    assert.equal(started.code, 2, `${what}: ${started.stderr}`);
    assert.match(started.stderr, message, what);
    assert.doesNotMatch(started.stderr, /listening on|^\s+at |TypeError/m, what);
  };
  try {
    // Four at a time: each case is two short-lived processes.
    for (let i = 0; i < cases.length; i += 4) await Promise.all(cases.slice(i, i + 4).map(one));
  } finally {
    busy.close();
    for (const file of [...Object.values(files), blank]) await Deno.remove(file);
  }
});

Deno.test("flags: messages say what was wrong with the value given", async () => {
  const cases: [string[], RegExp][] = [
    [["--check=yes"], /^load_balancer: --check takes no value \(see --help\)$/],
    [
      ["--connect-timeout", "-5"],
      /^load_balancer: --connect-timeout -5: expected a whole number 1-2147483647, got -5$/,
    ],
    [["--admin", "::1"], /^load_balancer: --admin ::1: an IPv6 address needs brackets and a port/],
    [["--admin", "foo"], /^load_balancer: --admin foo: expected PORT or HOST:PORT/],
    [["--listen", "999.0.0.1:5000"], /^load_balancer: --listen 999\.0\.0\.1:5000: not an IPv4/],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await runScript("load_balancer.ts", args);
    assert.equal(code, 2, args.join(" "));
    assert.match(stderr.trimEnd(), message, args.join(" "));
  }
});

Deno.test("--version prints the version and Deno's, and exits 0", async () => {
  const { code, stdout } = await runScript("load_balancer.ts", ["--version"]);
  assert.equal(code, 0);
  assert.match(stdout, /^load_balancer \d+\.\d+\.\d+ \(deno \d+\.\d+\.\d+\)\n$/);
});

Deno.test("admin.listen in a file takes a bare port, as --admin does", async () => {
  const token = await writeTemp("s3cret\n", ".token");
  const file = await writeTemp(`listeners:
  - { name: web, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }] }
admin: { listen: 9000, token_file: ${token} }
`);
  try {
    const { code, stdout, stderr } = await runScript("load_balancer.ts", [
      "--config",
      file,
      "--check",
    ], { permissions: CONFIG_PERMISSIONS });
    assert.equal(code, 0, stderr);
    assert.match(stdout, /valid/);
  } finally {
    await Deno.remove(file);
    await Deno.remove(token);
  }
});

Deno.test("an LB_ADMIN_TOKEN of more than one word is refused, as such a token file is", async () => {
  const { code, stderr } = await runScript("load_balancer.ts", ["--admin", "9000", "--check"], {
    permissions: ["--allow-net", "--allow-env=LB_ADMIN_TOKEN"],
    env: { LB_ADMIN_TOKEN: "a b" },
  });
  assert.equal(code, 1);
  assert.match(stderr, /LB_ADMIN_TOKEN: expected one token \(no spaces\)/);
});

Deno.test("two listeners on port 0 are two free ports, not a clash", async () => {
  const file = await writeTemp(`listeners:
  - { name: a, listen: "127.0.0.1:0", pool: web }
  - { name: b, listen: "127.0.0.1:0", pool: web }
pools:
  web: { backends: [{ address: "127.0.0.1:5001" }] }
`);
  try {
    const { code, stderr } = await runScript("load_balancer.ts", ["--config", file, "--check"], {
      permissions: CONFIG_PERMISSIONS,
    });
    assert.equal(code, 0, stderr);
  } finally {
    await Deno.remove(file);
  }
});
