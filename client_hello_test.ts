import assert from "node:assert/strict";
import {
  CLIENT_HELLO_MAX_BYTES,
  CLIENT_HELLO_PEEK_BYTES,
  type HelloParse,
  parseClientHello,
  sniMatches,
} from "./client_hello.ts";
import { concat } from "./io.ts";

// --- A real ClientHello, from Deno's own TLS client ---

/**
 * The first flight of a TLS client (rustls, through `Deno.startTls`) towards
 * a plain loopback server that reads until it holds a whole ClientHello and
 * then closes: the handshake never completes.
 */
async function captureClientHello(options: Deno.StartTlsOptions): Promise<Uint8Array> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    const client = await Deno.startTls(tcp, options);
    const handshake = client.handshake().catch(() => "failed, as the server only reads");
    const server = await listener.accept();
    try {
      return await readHello(server);
    } finally {
      server.close();
      await handshake;
      client.close();
    }
  } finally {
    listener.close();
  }
}

async function readHello(conn: Deno.Conn): Promise<Uint8Array> {
  let bytes: Uint8Array = new Uint8Array();
  const buffer = new Uint8Array(4096);
  while (parseClientHello(bytes).state === "incomplete") {
    const read = await conn.read(buffer);
    if (read === null) break;
    bytes = concat(bytes, buffer.subarray(0, read));
  }
  return bytes;
}

// --- A small ClientHello builder (RFC 8446 §4.1.2 layouts), for the cases a real client never sends ---

const ascii = (text: string) => [...new TextEncoder().encode(text)];
const u16 = (value: number) => [value >> 8, value & 0xff];
const vector8 = (bytes: number[]) => [bytes.length, ...bytes];
const vector16 = (bytes: number[]) => [...u16(bytes.length), ...bytes];
const extension = (type: number, data: number[]) => [...u16(type), ...vector16(data)];
const serverName = (name: string) => extension(0, vector16([0, ...vector16(ascii(name))]));
const alpn = (names: string[]) =>
  extension(16, vector16(names.flatMap((name) => vector8(ascii(name)))));

/** A ClientHello body: version, random, session id, one suite, null compression, then `rest`. */
function helloBody(rest: number[], sessionId: number[] = []): number[] {
  return [
    3,
    3,
    ...new Array(32).fill(7),
    ...vector8(sessionId),
    ...vector16([0x13, 0x01]),
    1,
    0,
    ...rest,
  ];
}

/** A handshake message (type, 24-bit length, body). */
function handshake(body: number[], type = 1): number[] {
  return [type, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff, ...body];
}

/** `message` in handshake records of `size` bytes each (the last may be shorter). */
function records(message: number[] | Uint8Array, size: number, version = [3, 1]): Uint8Array {
  const bytes: number[] = [];
  for (let start = 0; start < message.length; start += size) {
    const fragment = [...message.slice(start, start + size)];
    bytes.push(22, ...version, ...u16(fragment.length), ...fragment);
  }
  return Uint8Array.from(bytes);
}

const hello = (extensions: number[]) => records(handshake(helloBody(vector16(extensions))), 16384);

function reason(parse: HelloParse): string {
  assert.equal(parse.state, "not-tls", JSON.stringify(parse));
  return (parse as Extract<HelloParse, { state: "not-tls" }>).reason;
}

// --- Tests ---

Deno.test("parseClientHello() reads SNI and ALPN from a real TLS client's ClientHello", async () => {
  const bytes = await captureClientHello({
    hostname: "Api.Example.com",
    alpnProtocols: ["h2", "http/1.1"],
  });
  assert.deepEqual(parseClientHello(bytes), {
    state: "done",
    sni: "api.example.com",
    alpn: ["h2", "http/1.1"],
  });
  for (let length = 0; length < bytes.length; length++) {
    assert.deepEqual(
      parseClientHello(bytes.subarray(0, length)),
      { state: "incomplete" },
      `${length} bytes`,
    );
  }
});

Deno.test("parseClientHello() reads a real ClientHello without SNI or ALPN as done with neither", async () => {
  // rustls sends no server_name for an IP address (RFC 6066 forbids literal addresses in it).
  const bytes = await captureClientHello({ hostname: "127.0.0.1" });
  assert.deepEqual(parseClientHello(bytes), { state: "done", alpn: [] });
});

Deno.test("parseClientHello() reassembles a real ClientHello re-framed across several records", async () => {
  const bytes = await captureClientHello({ hostname: "api.example.com", alpnProtocols: ["h2"] });
  const message = bytes.subarray(5, 5 + ((bytes[3]! << 8) | bytes[4]!));
  const expected = { state: "done", sni: "api.example.com", alpn: ["h2"] };
  for (const size of [1, 2, 3, 4, 5, 7, 64, 100, message.length - 1]) {
    for (const version of [[3, 1], [3, 3], [3, 0]]) {
      const framed = records(message, size, version);
      assert.deepEqual(parseClientHello(framed), expected, `records of ${size}`);
      // What follows the ClientHello (another record, or anything) changes nothing.
      assert.deepEqual(
        parseClientHello(concat(framed, Uint8Array.of(23, 3, 3, 0, 1, 0))),
        expected,
      );
    }
  }
  const framed = records(message, 7);
  for (let length = 0; length < framed.length; length++) {
    assert.deepEqual(
      parseClientHello(framed.subarray(0, length)),
      { state: "incomplete" },
      `${length} bytes`,
    );
  }
});

Deno.test("parseClientHello() reads hellos without extensions, and skips what it does not route on", () => {
  assert.deepEqual(parseClientHello(records(handshake(helloBody([])), 16384)), {
    state: "done",
    alpn: [],
  });
  const grease = extension(0x0a0a, []);
  const otherNameType = [1, ...vector16(ascii("other"))];
  const withOthers = [
    ...grease,
    ...extension(0, vector16([...otherNameType, 0, ...vector16(ascii("WWW.Example.ORG"))])),
    ...extension(43, [2, 3, 4]),
    // ALPN names are opaque bytes: one character per byte.
    ...extension(16, vector16([...vector8(ascii("h2")), 1, 0xff])),
  ];
  assert.deepEqual(parseClientHello(hello(withOthers)), {
    state: "done",
    sni: "www.example.org",
    alpn: ["h2", "\u00ff"],
  });
  assert.deepEqual(parseClientHello(hello([...extension(43, [2, 3, 4])])), {
    state: "done",
    alpn: [],
  });
});

Deno.test("parseClientHello() says not-tls at once for other protocols, naming what it saw", () => {
  const cases: [Uint8Array, RegExp][] = [
    [
      new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n"),
      /^not a TLS handshake record \(starts "GET \/ HTTP\/1.1\\r\\n"…\)$/,
    ],
    [
      new TextEncoder().encode("SSH-2.0-OpenSSH_9.6\r\n"),
      /not a TLS handshake record \(starts "SSH-2.0-OpenSSH_"…\)/,
    ],
    [new TextEncoder().encode("PROXY TCP4 "), /starts "PROXY TCP4 "/],
    [new TextEncoder().encode("G"), /starts "G"\)/],
    // An SSLv2-framed hello, which no current client sends.
    [Uint8Array.of(0x80, 0x2e, 0x01, 0x03, 0x01), /starts "\\x80\.\\x01\\x03\\x01"/],
    [Uint8Array.of(21, 3, 3, 0, 2, 2, 40), /starts "\\x15\\x03\\x03/],
    [Uint8Array.of(22, 4), /record at byte 0 has version 0x04, expected 0x03xx/],
    [Uint8Array.of(22, 3, 0x10), /record at byte 0 has version 0x0310, expected 0x03xx/],
  ];
  for (const [bytes, message] of cases) {
    assert.match(reason(parseClientHello(bytes)), message);
  }
  assert.deepEqual(parseClientHello(new Uint8Array()), { state: "incomplete" });
  assert.deepEqual(parseClientHello(Uint8Array.of(22, 3, 1)), { state: "incomplete" });
});

Deno.test("parseClientHello() says not-tls for every malformed length, naming the field and value", () => {
  const ok = helloBody(vector16(serverName("a.example")));
  const cases: [Uint8Array, RegExp][] = [
    // The record layer.
    [Uint8Array.of(22, 3, 1, 0, 0), /record at byte 0 is an empty handshake record/],
    [Uint8Array.of(22, 3, 1, 0x40, 0x01), /record at byte 0 has length 16385, over the 16384/],
    [
      concat(records(handshake(ok).slice(0, 10), 10), Uint8Array.of(23, 3, 3, 0, 1, 0)),
      /record at byte 15 has content type 23, expected 22/,
    ],
    [
      concat(records(handshake(ok).slice(0, 10), 10), Uint8Array.of(22, 2)),
      /record at byte 15 has version 0x02/,
    ],
    // The handshake header.
    [records(handshake(ok, 2), 16384), /handshake message type 2 is not a ClientHello \(1\)/],
    [
      Uint8Array.of(22, 3, 1, 0, 4, 1, 0, 0x40, 0x00),
      /ClientHello length 16384 is over the 16384 bytes/,
    ],
    // The ClientHello body.
    [records(handshake([3]), 16384), /ClientHello is cut short before its version/],
    [
      records(handshake([4, 0, ...new Array(32).fill(0)]), 16384),
      /ClientHello version 0x0400, expected 0x03xx/,
    ],
    [records(handshake([3, 3, 1, 2, 3]), 16384), /cut short in its random/],
    [
      records(handshake(helloBody([], new Array(33).fill(1))), 16384),
      /session id length 33 is over 32/,
    ],
    [
      records(handshake([3, 3, ...new Array(32).fill(0), 5, 1, 2]), 16384),
      /session id length 5 runs past its end \(2 bytes left\)/,
    ],
    [
      records(handshake([3, 3, ...new Array(32).fill(0), 0, 0, 3, 1, 2, 3, 1, 0]), 16384),
      /cipher suites length 3 must be even/,
    ],
    [
      records(handshake([3, 3, ...new Array(32).fill(0), 0, 0, 0, 1, 0]), 16384),
      /cipher suites length 0 must be even and at least 2/,
    ],
    [
      records(handshake([3, 3, ...new Array(32).fill(0), 0, 0, 2, 0x13, 1, 0]), 16384),
      /compression methods list is empty/,
    ],
    [
      records(handshake([3, 3, ...new Array(32).fill(0), 0, 0, 2, 0x13, 1]), 16384),
      /compression methods is cut short/,
    ],
    [
      records(handshake(helloBody([0, 9, 0, 0])), 16384),
      /ClientHello extensions length 9 runs past its end \(2 bytes left\)/,
    ],
    [records(handshake(helloBody([0])), 16384), /ClientHello extensions is cut short/],
    [
      records(handshake(helloBody([0, 0, 1])), 16384),
      /ClientHello has 1 bytes after its extensions/,
    ],
    // Extensions.
    [hello([0]), /extension at byte 0 is cut short/],
    [hello([0, 43]), /extension 43 is cut short: no room for its length/],
    [hello([0, 43, 0, 5, 1]), /extension 43 length 5 runs past its end/],
    [hello([...extension(43, []), ...extension(43, [])]), /extension 43 appears twice/],
    [hello([...serverName("a.example"), ...serverName("b.example")]), /extension 0 appears twice/],
    // server_name.
    [hello(extension(0, [])), /server_name list is cut short/],
    [hello(extension(0, [0, 0])), /server_name list is empty/],
    [hello(extension(0, [0, 9, 0, 0, 1, 0x61])), /server_name list length 9 runs past its end/],
    [
      hello(extension(0, [...vector16([0, ...vector16(ascii("a"))]), 0])),
      /server_name has 1 bytes after its list/,
    ],
    [
      hello(extension(0, vector16([0, 0, 9, 0x61]))),
      /server_name entry of type 0 length 9 runs past its end/,
    ],
    [
      hello(extension(0, vector16([0, ...vector16(ascii("a")), 0, ...vector16(ascii("b"))]))),
      /two host_name entries/,
    ],
    [hello(serverName("")), /host_name must be a DNS name: got ""/],
    [hello(serverName("a b.example")), /host_name must be a DNS name: got "a b.example"/],
    [hello(serverName("example.com.")), /got "example.com."/],
    [hello(serverName("a..example")), /got "a..example"/],
    [hello(serverName("exa\u0000mple")), /got "exa\\x00mple"/],
    [hello(serverName(`${"a".repeat(64)}.example`)), /host_name must be a DNS name/],
    [
      hello(serverName("a.".repeat(127) + "ab")),
      /host_name must be a DNS name: got "a.a.a.a.a.a.a.a.a.a.a.a."…/,
    ],
    // ALPN.
    [hello(extension(16, [0, 0])), /ALPN list is empty/],
    [hello(extension(16, [0, 4, 2, 0x68, 0x32])), /ALPN list length 4 runs past its end/],
    [
      hello(extension(16, [...vector16(vector8(ascii("h2"))), 7])),
      /ALPN extension has 1 bytes after its list/,
    ],
    [hello(alpn(["h2", ""])), /ALPN protocol 2 is empty/],
    [
      hello(extension(16, vector16([2, 0x68, 0x32, 5, 0x68]))),
      /ALPN protocol 2 length 5 runs past its end/,
    ],
  ];
  for (const [bytes, message] of cases) {
    assert.match(
      reason(parseClientHello(bytes)),
      message,
      JSON.stringify([...bytes.subarray(0, 64)]),
    );
  }
});

Deno.test("parseClientHello() gives up within its bounds instead of waiting", () => {
  // A declared length over the maximum: not-tls on the handshake header alone.
  const huge = Uint8Array.of(22, 3, 1, 0, 4, 1, 0, 0x3f, 0xfd);
  assert.match(
    reason(parseClientHello(huge)),
    new RegExp(`over the ${CLIENT_HELLO_MAX_BYTES} bytes`),
  );
  // A hello that fits, framed in 1-byte records whose headers push it past the peek window.
  const padding = extension(21, new Array(4000).fill(0));
  const message = handshake(helloBody(vector16([...serverName("a.example"), ...padding])));
  assert.deepEqual(parseClientHello(records(message, 16384)), {
    state: "done",
    sni: "a.example",
    alpn: [],
  });
  const tiny = records(message, 1);
  assert.ok(tiny.length > CLIENT_HELLO_PEEK_BYTES);
  assert.match(
    reason(parseClientHello(tiny.subarray(0, CLIENT_HELLO_PEEK_BYTES))),
    new RegExp(`no complete ClientHello in the first ${CLIENT_HELLO_PEEK_BYTES} bytes`),
  );
  // A record that would end past the window is refused on its header.
  const big = handshake(helloBody(vector16(extension(21, new Array(12000).fill(0)))));
  const farRecord = concat(records(big.slice(0, 8000), 4000), Uint8Array.of(22, 3, 1, 0x40, 0x00));
  assert.match(
    reason(parseClientHello(farRecord)),
    /record at byte 8010 \(length 16384\) ends past byte 20480/,
  );
});

Deno.test("sniMatches() matches exact names and one-label wildcards, ignoring case", () => {
  const cases: [string, string, boolean][] = [
    ["api.example.com", "api.example.com", true],
    ["API.Example.com", "api.EXAMPLE.com", true],
    ["api.example.com", "www.example.com", false],
    ["api.example.com", "api.example.com.evil", false],
    ["*.example.com", "a.example.com", true],
    ["*.example.com", "A.Example.COM", true],
    ["*.Example.com", "a.example.com", true],
    ["*.example.com", "a.b.example.com", false],
    ["*.example.com", "example.com", false],
    ["*.example.com", ".example.com", false],
    ["*.example.com", "aexample.com", false],
    ["*.example.com", "a.example.org", false],
    ["a.*.com", "a.b.com", false],
    ["a.*.com", "a.*.com", true],
    ["*", "anything", false],
  ];
  for (const [pattern, name, expected] of cases) {
    assert.equal(sniMatches(pattern, name), expected, `${pattern} ~ ${name}`);
  }
});
