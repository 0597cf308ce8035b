import assert from "node:assert/strict";
import { answerDatagrams } from "../lab.ts";
import { flood, floodPayload, parseFloodArgs, splitReply } from "./udp_flood.ts";

/** A UDP socket on 127.0.0.1, port 0. */
function udpSocket(): Deno.DatagramConn {
  return Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
}

/** Starts `answer` on a fresh socket; `close()` stops it and waits for it. */
function startUdpServer(answer: (socket: Deno.DatagramConn) => Promise<void>) {
  const socket = udpSocket();
  const serving = answer(socket);
  return {
    port: (socket.addr as Deno.NetAddr).port,
    async close() {
      socket.close();
      await serving;
    },
  };
}

Deno.test("floodPayload() names the socket and sequence and fills the rest", () => {
  assert.equal(new TextDecoder().decode(floodPayload(3, 41, 24)), "3 41 ...................");
});

Deno.test("splitReply() finds the server's ID and the echoed bytes, or rejects the reply", () => {
  const reply = new TextEncoder().encode("[Server web-1] 3 41 ..");
  const split = splitReply(reply);
  assert.equal(split?.id, "web-1");
  assert.equal(new TextDecoder().decode(split?.echoed), "3 41 ..");
  for (const text of ["3 41 ..", "[Server 1]3 41", "[Server 1", "[Sorver 1] x"]) {
    assert.equal(splitReply(new TextEncoder().encode(text)), undefined, text);
  }
});

Deno.test("parseFloodArgs() takes repeated targets and checks every number", () => {
  const settings = parseFloodArgs([
    "--target",
    "127.0.0.1:5001",
    "--target",
    "127.0.0.1:5002",
    "--in-flight",
    "2",
  ]);
  assert.deepEqual(settings.targets.map((t) => t.port), [5001, 5002]);
  assert.equal(settings.inFlight, 2);
  assert.equal(settings.sockets, 64);
  assert.throws(() => parseFloodArgs([]), /--target HOST:PORT: expected at least one/);
  assert.throws(
    () => parseFloodArgs(["--target", "127.0.0.1:1", "--sockets", "0"]),
    /--sockets 0: expected a whole number, 1 or more/,
  );
  assert.throws(
    () => parseFloodArgs(["--target", "127.0.0.1:1", "--size", "9"]),
    /--size 9: expected a whole number, 24 or more/,
  );
});

Deno.test("flood() spreads its sockets over the targets and checks every tagged echo", async () => {
  const one = startUdpServer((socket) => answerDatagrams(socket, "1"));
  const two = startUdpServer((socket) => answerDatagrams(socket, "2"));
  try {
    const report = await flood({
      targets: [one, two].map(({ port }) => ({ hostname: "127.0.0.1", port })),
      seconds: 1,
      sockets: 4,
      inFlight: 2,
      size: 32,
    });
    assert.equal(report.mismatched, 0);
    assert.equal(report.lost, 0);
    assert.ok(report.received > 100, `only ${report.received} replies`);
    // Every datagram sent was answered, in the window or after it.
    assert.equal(report.received + report.drained, report.sent);
    assert.deepEqual(Object.keys(report.servers).sort(), ["1", "2"]);
  } finally {
    await one.close();
    await two.close();
  }
});

Deno.test("flood() counts replies that are not the echo of what was sent as mismatched", async () => {
  // Answers with the right tag but the bytes of the socket's next datagram,
  // then with the right bytes under no tag: neither may count as an answer.
  const wrong = startUdpServer(async (socket) => {
    const encoder = new TextEncoder();
    let odd = false;
    try {
      for await (const [datagram, sender] of socket) {
        const [index, sequence] = new TextDecoder().decode(datagram).split(" ");
        odd = !odd;
        const reply = odd
          ? encoder.encode(`[Server x] ${index} ${Number(sequence) + 1} ...`)
          : datagram.slice();
        await socket.send(reply, sender);
      }
    } catch {
      // Closed.
    }
  });
  try {
    const report = await flood({
      targets: [{ hostname: "127.0.0.1", port: wrong.port }],
      seconds: 1,
      sockets: 2,
      inFlight: 1,
      size: 32,
    });
    assert.equal(report.received, 0);
    assert.equal(report.drained, 0);
    assert.equal(report.mismatched, report.sent);
    // No datagram was answered, so each counted as lost.
    assert.equal(report.lost, report.sent);
  } finally {
    await wrong.close();
  }
});
