// deploy/lb.service, checked by systemd's own verifier where it is installed
// (skipped, saying so, where it is not), with the paths it assumes pointed at
// this checkout and this Deno.
import assert from "node:assert/strict";
import { V8_FLAGS } from "./supervisor.ts";
import { have } from "./test_peers.ts";

const ROOT = new URL(".", import.meta.url).pathname.replace(/\/$/, "");
const haveVerifier = await have("systemd-analyze", "systemd");

Deno.test("deploy/lb.service: the keys an operator relies on", async () => {
  const unit = await Deno.readTextFile(`${ROOT}/deploy/lb.service`);
  const values = (key: string) =>
    [...unit.matchAll(new RegExp(`^${key}=(.*)$`, "gm"))].map((m) => m[1]!);
  assert.deepEqual(values("Type"), ["exec"]);
  assert.deepEqual(values("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
  assert.deepEqual(values("DynamicUser"), ["yes"]);
  assert.deepEqual(values("ProtectSystem"), ["strict"]);
  assert.deepEqual(values("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
  assert.deepEqual(values("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
  // Two descriptors per connection at the default maxconn, and room besides.
  assert.ok(Number(values("LimitNOFILE")[0]) >= 2 * 10_000 + 1000);
  // Longer than the default drain, so SIGTERM can finish it.
  assert.ok(Number(values("TimeoutStopSec")[0]) * 1000 > 30_000);
  // The permissions the balancer asks for, and the file it runs.
  const start = values("ExecStart")[0]!;
  for (const flag of ["--allow-net", "--allow-ffi", "--unstable-net", "--cached-only", V8_FLAGS]) {
    assert.ok(start.includes(flag), flag);
  }
  assert.match(start, /\/opt\/lb\/load_balancer\.ts --config \/etc\/lb\/lb\.yaml$/);
});

Deno.test({
  name: "systemd-analyze verify accepts deploy/lb.service",
  ignore: !haveVerifier,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const unit = (await Deno.readTextFile(`${ROOT}/deploy/lb.service`))
        .replaceAll("/usr/local/bin/deno", Deno.execPath())
        .replaceAll("/opt/lb", ROOT);
      await Deno.writeTextFile(`${dir}/lb.service`, unit);
      const { code, stderr } = await new Deno.Command("systemd-analyze", {
        args: ["verify", `${dir}/lb.service`],
        stdout: "null",
        stderr: "piped",
      }).output();
      const said = new TextDecoder().decode(stderr);
      assert.equal(code, 0, said);
      assert.doesNotMatch(said, /lb\.service:\d+: /, "no warning about a line of the unit");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
