import assert from "node:assert/strict";
import { readyPort } from "./events.ts";
import { eachLine } from "./io.ts";
import { exchange, readAll, runScript, startTaggedServer } from "./test_util.ts";

Deno.test("backend answers each line with its tag, in order", async () => {
  const server = startTaggedServer("1");
  try {
    assert.equal(
      await exchange(server.port, "hello\nworld\n"),
      "[Server 1] hello\n[Server 1] world\n",
    );
  } finally {
    await server.close();
  }
});

Deno.test("backend answers a last line without a newline at end of input", async () => {
  const server = startTaggedServer("2");
  try {
    assert.equal(await exchange(server.port, "a\npartial"), "[Server 2] a\n[Server 2] partial\n");
    assert.equal(await exchange(server.port, ""), "");
  } finally {
    await server.close();
  }
});

Deno.test("backend joins a line that arrives in pieces", async () => {
  const server = startTaggedServer("3");
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    const encoder = new TextEncoder();
    await conn.write(encoder.encode("hel"));
    await conn.write(encoder.encode("lo\nby"));
    await conn.write(encoder.encode("e\n"));
    await conn.closeWrite();
    assert.equal(
      new TextDecoder().decode(await readAll(conn)),
      "[Server 3] hello\n[Server 3] bye\n",
    );
    conn.close();
  } finally {
    await server.close();
  }
});

Deno.test("backend.ts with missing or bad arguments prints usage and exits 2", async () => {
  const cases: [string[], RegExp][] = [
    [[], /^backend: expected 2 arguments, got 0/],
    [["5001"], /^backend: expected 2 arguments, got 1/],
    [["70000", "1"], /^backend: PORT 70000: port must be an integer 0-65535/],
    [["x", "1"], /^backend: PORT x: port must be an integer/],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await runScript("backend.ts", args);
    assert.equal(code, 2, args.join(" "));
    assert.match(stderr, message);
    assert.match(stderr, /Usage: deno run --allow-net backend.ts PORT ID \[--udp\]/);
  }
});

/** `backend.ts … --udp` as a process, once it has said where it listens. */
interface UdpBackend {
  readonly port: number;
  close(): Promise<void>;
}

/** Starts `deno run --allow-net backend.ts ARGS` in this folder and waits for its ready line. */
async function startUdpBackend(args: string[]): Promise<UdpBackend> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "backend.ts", ...args],
    cwd: new URL(".", import.meta.url).pathname,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  let ready: (port: number) => void;
  const port = new Promise<number>((resolve) => ready = resolve);
  const reading = eachLine(child.stderr, (line) => {
    lines.push(line);
    const found = readyPort(line);
    if (found !== undefined) ready(found);
  });
  const close = async () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
    await reading;
  };
  // It either says where it listens or exits; either way nobody sleeps.
  const ended = child.status.then((status) => {
    throw new Error(`backend.ts exited ${status.code} before it listened:\n${lines.join("\n")}`);
  });
  try {
    return { port: await Promise.race([port, ended]), close };
  } catch (error) {
    await close();
    throw error;
  } finally {
    ended.catch(() => {}); // It ends when closed, after the race is long decided.
  }
}

/** A UDP socket on 127.0.0.1, port 0, as a client. */
function udpClient(): Deno.DatagramConn {
  return Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
}

/** The next datagram `socket` receives, as text; rejects after `timeoutMs`. */
async function receiveText(socket: Deno.DatagramConn, timeoutMs = 10_000): Promise<string> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no datagram in ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    const [datagram] = await Promise.race([socket.receive(new Uint8Array(65536)), timeout]);
    return new TextDecoder().decode(datagram);
  } finally {
    clearTimeout(timer);
  }
}

function sendText(socket: Deno.DatagramConn, port: number, text: string): Promise<number> {
  return socket.send(new TextEncoder().encode(text), {
    transport: "udp",
    hostname: "127.0.0.1",
    port,
  });
}

Deno.test("backend --udp answers a datagram with its tag and the bytes, raw and whole", async () => {
  const backend = await startUdpBackend(["0", "1", "--udp"]);
  const client = udpClient();
  try {
    // A newline inside and none at the end: echoed as they are, not as lines.
    await sendText(client, backend.port, "hello\nworld");
    assert.equal(await receiveText(client), "[Server 1] hello\nworld");
    await sendText(client, backend.port, "");
    assert.equal(await receiveText(client), "[Server 1] ");
  } finally {
    client.close();
    await backend.close();
  }
});

Deno.test("backend --udp answers each of two senders with its own datagrams", async () => {
  // The flag may come first.
  const backend = await startUdpBackend(["--udp", "0", "2"]);
  const first = udpClient();
  const second = udpClient();
  try {
    // Both send before either reads: each must get its own reply, in its order.
    await sendText(first, backend.port, "from first, 1");
    await sendText(second, backend.port, "from second, 1");
    await sendText(first, backend.port, "from first, 2");
    assert.equal(await receiveText(second), "[Server 2] from second, 1");
    assert.equal(await receiveText(first), "[Server 2] from first, 1");
    assert.equal(await receiveText(first), "[Server 2] from first, 2");
  } finally {
    first.close();
    second.close();
    await backend.close();
  }
});

Deno.test("backend.ts with an unknown flag or a value for --udp exits 2 and says which", async () => {
  const cases: [string[], RegExp][] = [
    [["5001", "1", "--tcp"], /^backend: unknown flag --tcp: expected --udp\n/],
    [["-u", "5001", "1"], /^backend: unknown flag -u: expected --udp\n/],
    [["5001", "1", "--udp=yes"], /^backend: --udp takes no value\n/],
    [["5001", "--udp"], /^backend: expected 2 arguments, got 1\n/],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await runScript("backend.ts", args);
    assert.equal(code, 2, args.join(" "));
    assert.match(stderr, message);
    assert.match(stderr, /Usage: deno run --allow-net backend.ts PORT ID \[--udp\]/);
  }
});

Deno.test("backend.ts --udp without --unstable-net exits 2 and says to add it", async () => {
  // --no-config leaves out this folder's deno.json and its "unstable": ["net"].
  const { code, stderr } = await runScript("backend.ts", ["0", "1", "--udp"], {
    permissions: ["--no-config", "--allow-net"],
  });
  assert.equal(code, 2);
  assert.match(stderr, /^backend: --udp needs Deno.listenDatagram, .*--unstable-net/);
});
