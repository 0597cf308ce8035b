/** Live reload: SIGHUP and --watch, under traffic. */

import assert from "node:assert/strict";
import {
  connectLoopback,
  exchange,
  listenLoopback,
  readAll,
  startBalancerProcess,
  startTaggedServer,
  writeAll,
} from "./test_util.ts";

const PERMISSIONS = ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"];
const serverOf = (answer: string) => /^\[Server ([^\]]+)\]/.exec(answer)?.[1] ?? answer;

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
