/**
 * TLS termination on a balancer process: clients speak TLS with ALPN, the
 * backend gets plain bytes; a reload with a new certificate serves new
 * clients with it and drops none; `--check` refuses a key that is not the
 * certificate's. Needs `openssl` to make certificates (skipped, saying so,
 * without it).
 */

import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import {
  exchange,
  runScript,
  startBalancerProcess,
  startTaggedServer,
  TEST_ENGINE,
} from "./test_util.ts";

const haveOpenssl = await new Deno.Command("openssl", { args: ["version"], stdout: "null" })
  .output().then((out) => out.success, () => false);
if (!haveOpenssl) console.log("TLS tests skipped: install openssl (Debian package openssl)");

/** A self-signed certificate for `name` and its key, as files in `dir`. */
async function certificate(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = `${dir}/${name}.crt`;
  const key = `${dir}/${name}.key`;
  const { success, stderr } = await new Deno.Command("openssl", {
    args: [
      ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"],
      ...["-keyout", key, "-out", cert, "-days", "1", "-subj", `/CN=${name}`],
      ...["-addext", `subjectAltName=DNS:${name}`],
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(success, new TextDecoder().decode(stderr));
  return { cert, key };
}

/** A TLS client that checks the balancer's certificate against `ca` for `name`. */
function connectTls(port: number, ca: string, name: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      servername: name,
      ca: Deno.readTextFileSync(ca),
      ALPNProtocols: ["h2", "http/1.1"],
    }, () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Writes a line and resolves with the first answer. */
function ask(socket: tls.TLSSocket, line: string): Promise<string> {
  return new Promise((resolve) => {
    socket.once("data", (chunk: Uint8Array) => resolve(new TextDecoder().decode(chunk)));
    socket.write(line);
  });
}

function closed(socket: tls.TLSSocket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.closed) return resolve();
    socket.once("close", () => resolve());
    socket.destroy();
  });
}

Deno.test({
  name:
    "tls: beside a plain listener, on either engine; a new certificate on reload serves new clients, keeps old ones",
  ignore: !haveOpenssl,
  async fn() {
    const dir = await Deno.makeTempDir();
    const backend = startTaggedServer("1");
    const one = await certificate(dir, "one.test");
    const two = await certificate(dir, "two.test");
    const live = { cert: `${dir}/live.crt`, key: `${dir}/live.key` };
    await Deno.copyFile(one.cert, live.cert);
    await Deno.copyFile(one.key, live.key);
    await Deno.writeTextFile(
      `${dir}/lb.yaml`,
      `listeners:
  - name: tls
    listen: "127.0.0.1:0"
    pool: p
    tls: { cert: ${live.cert}, key: ${live.key}, alpn: [h2, http/1.1] }
  - { name: plain, listen: "127.0.0.1:0", pool: p }
pools:
  p: { backends: [{ address: "127.0.0.1:${backend.port}" }] }
`,
    );
    // On the engine under test: with epoll, the TLS listener runs on deno beside the threads.
    const lb = await startBalancerProcess(["--config", `${dir}/lb.yaml`], {
      permissions: ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"],
      listen: false,
    });
    const sockets: tls.TLSSocket[] = [];
    try {
      // Readiness lines come in the file's order: the TLS listener, then the plain one.
      const other = new RegExp(`listening on (?!127\\.0\\.0\\.1:${lb.port};)`);
      const plain = Number(/:(\d+);/.exec(await lb.waitForLine("stderr", other))![1]);
      assert.equal(await exchange(plain, "plain\n"), "[Server 1] plain\n");
      if (TEST_ENGINE === "epoll") {
        assert.ok(!lb.stderr.some((line) => /engine deno/.test(line)), lb.stderr.join("\n"));
      }
      const first = await connectTls(lb.port, one.cert, "one.test");
      sockets.push(first);
      assert.equal(first.alpnProtocol, "h2");
      assert.equal(first.getPeerCertificate().subject.CN, "one.test");
      assert.equal(await ask(first, "hi\n"), "[Server 1] hi\n");

      await Deno.copyFile(two.cert, live.cert);
      await Deno.copyFile(two.key, live.key);
      lb.kill("SIGHUP");
      await lb.waitForLine("stderr", /reloaded \(SIGHUP\)/);
      const second = await connectTls(lb.port, two.cert, "two.test");
      sockets.push(second);
      assert.equal(second.getPeerCertificate().subject.CN, "two.test");
      assert.equal(await ask(second, "new\n"), "[Server 1] new\n");
      // The first client, on the old certificate, was not dropped.
      assert.equal(await ask(first, "still\n"), "[Server 1] still\n");
      // Half-close through TLS: the client ends its side, the answer still comes back.
      const third = await connectTls(lb.port, two.cert, "two.test");
      const answer = new Promise<string>((resolve) => {
        let text = "";
        third.on("data", (chunk: Uint8Array) => text += new TextDecoder().decode(chunk));
        third.once("end", () => resolve(text));
      });
      third.end("a\nb");
      assert.equal(await answer, "[Server 1] a\n[Server 1] b\n");
      sockets.push(third);
      // TLS off for a running listener waits for a restart; it keeps serving TLS.
      const yaml = await Deno.readTextFile(`${dir}/lb.yaml`);
      await Deno.writeTextFile(`${dir}/lb.yaml`, yaml.replace(/^ {4}tls: .*\n/m, ""));
      lb.kill("SIGHUP");
      await lb.waitForLine(
        "stderr",
        /reload \(SIGHUP\) failed.*turning TLS off .* needs a restart/,
      );
      const fourth = await connectTls(lb.port, two.cert, "two.test");
      sockets.push(fourth);
      assert.equal(await ask(fourth, "tls\n"), "[Server 1] tls\n");
    } finally {
      await Promise.all(sockets.map(closed));
      await lb.close();
      await backend.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "tls: --check refuses a key that is not the certificate's, and a PROXY header before TLS",
  ignore: !haveOpenssl,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const one = await certificate(dir, "one.test");
      const two = await certificate(dir, "two.test");
      const check = (...args: string[]) =>
        runScript("load_balancer.ts", [...args, "--check"], {
          permissions: ["--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"],
        });
      const mismatched = await check("--tls-cert", one.cert, "--tls-key", two.key);
      assert.equal(mismatched.code, 1, mismatched.stderr);
      assert.match(mismatched.stderr, /the key is not the certificate's \(subject CN=one\.test\)/);
      const good = await check("--tls-cert", one.cert, "--tls-key", one.key);
      assert.equal(good.code, 0, good.stderr);
      const proxied = await check("--tls-cert", one.cert, "--tls-key", one.key, "--accept-proxy");
      assert.equal(proxied.code, 2, proxied.stderr);
      assert.match(proxied.stderr, /a PROXY header comes before TLS/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "tls: a source the ACLs deny is closed before its handshake; others are served",
  ignore: !haveOpenssl,
  async fn() {
    const dir = await Deno.makeTempDir();
    const backend = startTaggedServer("1");
    const one = await certificate(dir, "one.test");
    const lb = await startBalancerProcess([
      ...["--tls-cert", one.cert, "--tls-key", one.key, "--deny", "127.0.0.9/32"],
      ...["--backend", `127.0.0.1:${backend.port}`],
    ], { permissions: ["--allow-net", "--allow-read", "--allow-env=LOG_TOKENS,LOG_STREAM"] });
    try {
      const outcome = await new Promise<string>((resolve) => {
        // From 127.0.0.9: node:tls takes a source address through its TCP socket.
        const tcp = net.connect({ host: "127.0.0.1", port: lb.port, localAddress: "127.0.0.9" });
        const socket = tls.connect({
          socket: tcp,
          servername: "one.test",
          ca: Deno.readTextFileSync(one.cert),
        }, () => resolve("handshake done"));
        socket.once("error", () => resolve("closed before the handshake"));
        socket.once("close", () => resolve("closed before the handshake"));
      });
      assert.equal(outcome, "closed before the handshake");
      const allowed = await connectTls(lb.port, one.cert, "one.test");
      assert.equal(await ask(allowed, "ok\n"), "[Server 1] ok\n");
      await closed(allowed);
    } finally {
      await lb.close();
      await backend.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
