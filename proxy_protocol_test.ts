import assert from "node:assert/strict";
import type { HostPort } from "./address.ts";
import {
  encodeProxyV1,
  encodeProxyV2,
  encodeProxyV2Local,
  parseProxyHeader,
  PROXY_V1_MAX_LENGTH,
  type ProxyParse,
} from "./proxy_protocol.ts";
import { concat } from "./io.ts";

const text = (value: string) => new TextEncoder().encode(value);
const SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

/** A version 2 header from its parts: version/command, family/protocol, and the block after the length. */
function v2(versionCommand: number, familyProtocol: number, block: number[]): Uint8Array {
  return Uint8Array.from([
    ...SIGNATURE,
    versionCommand,
    familyProtocol,
    block.length >> 8,
    block.length & 0xff,
    ...block,
  ]);
}

const IPV4_BLOCK = [172, 19, 0, 1, 172, 19, 0, 3, 0xa6, 0x52, 0x00, 0x50];

function done(parse: ProxyParse): Extract<ProxyParse, { state: "done" }> {
  assert.equal(parse.state, "done", JSON.stringify(parse));
  return parse as Extract<ProxyParse, { state: "done" }>;
}

function reason(parse: ProxyParse): string {
  assert.equal(parse.state, "invalid", JSON.stringify(parse));
  return (parse as Extract<ProxyParse, { state: "invalid" }>).reason;
}

const address = (hostname: string, port: number): HostPort => ({ hostname, port });

Deno.test("parseProxyHeader() reads the spec's v1 example and leaves the request after it", () => {
  const line = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
  const parse = done(parseProxyHeader(text(`${line}GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n`)));
  assert.deepEqual(parse, {
    state: "done",
    length: line.length,
    header: {
      version: 1,
      command: "PROXY",
      source: address("192.168.0.1", 56324),
      destination: address("192.168.0.11", 443),
      tlvs: [],
    },
  });
});

Deno.test("parseProxyHeader() reads v1 TCP6 and gives IPv6 in one canonical spelling", () => {
  const line = "PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 ::ffff:192.0.2.1 0 65535\r\n";
  const { header, length } = done(parseProxyHeader(text(line)));
  assert.equal(length, line.length);
  assert.deepEqual(header.source, address("2001:db8::1", 0));
  assert.deepEqual(header.destination, address("::ffff:192.0.2.1", 65535));
});

Deno.test("parseProxyHeader() accepts v1 UNKNOWN, short or with fields it ignores, without addresses", () => {
  const worstCase = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff " +
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  assert.equal(worstCase.length, PROXY_V1_MAX_LENGTH);
  for (const line of ["PROXY UNKNOWN\r\n", "PROXY UNKNOWN anything at all\r\n", worstCase]) {
    assert.deepEqual(parseProxyHeader(text(`${line}SSH-2.0-x\r\n`)), {
      state: "done",
      length: line.length,
      header: { version: 1, command: "PROXY", tlvs: [] },
    }, line);
  }
});

Deno.test("parseProxyHeader() reads the v2 TCP over IPv4 header haproxy sends", () => {
  const header = v2(0x21, 0x11, IPV4_BLOCK);
  const parse = done(parseProxyHeader(concat(header, text("GET / HTTP/1.1\r\n"))));
  assert.deepEqual(parse, {
    state: "done",
    length: 28,
    header: {
      version: 2,
      command: "PROXY",
      source: address("172.19.0.1", 42578),
      destination: address("172.19.0.3", 80),
      tlvs: [],
    },
  });
});

Deno.test("parseProxyHeader() reads v2 UDP, and v2 UNSPEC and AF_UNIX without addresses", () => {
  const udp = done(parseProxyHeader(v2(0x21, 0x12, IPV4_BLOCK))).header;
  assert.deepEqual(udp.source, address("172.19.0.1", 42578));
  const unspec = done(parseProxyHeader(v2(0x21, 0x00, [])));
  assert.deepEqual(unspec, {
    state: "done",
    length: 16,
    header: { version: 2, command: "PROXY", tlvs: [] },
  });
  for (const familyProtocol of [0x31, 0x32]) {
    const unix = done(parseProxyHeader(v2(0x21, familyProtocol, new Array(216).fill(0x61))));
    assert.equal(unix.length, 16 + 216);
    assert.equal(unix.header.source, undefined);
    assert.equal(unix.header.destination, undefined);
  }
});

Deno.test("parseProxyHeader() passes v2 TLVs on, in order, as copies", () => {
  const tlvBytes = [0x01, 0, 2, 0x68, 0x32, 0x04, 0, 0, 0xe0, 0, 3, 1, 2, 3];
  const bytes = concat(v2(0x21, 0x11, [...IPV4_BLOCK, ...tlvBytes]), text("rest"));
  const { header, length } = done(parseProxyHeader(bytes));
  assert.equal(length, 16 + 12 + tlvBytes.length);
  assert.deepEqual(header.tlvs, [
    { type: 0x01, value: text("h2") },
    { type: 0x04, value: new Uint8Array() },
    { type: 0xe0, value: Uint8Array.of(1, 2, 3) },
  ]);
  bytes.fill(0);
  assert.deepEqual(header.tlvs[0]!.value, text("h2"));
});

Deno.test("parseProxyHeader() honours v2 LOCAL: the addresses are skipped, not reported", () => {
  assert.deepEqual(parseProxyHeader(encodeProxyV2Local()), {
    state: "done",
    length: 16,
    header: { version: 2, command: "LOCAL", tlvs: [] },
  });
  // The spec: receivers "must not assume zero is presented for LOCAL connections".
  const withAddresses = done(parseProxyHeader(v2(0x20, 0x11, [...IPV4_BLOCK, 0x04, 0, 0])));
  assert.equal(withAddresses.length, 16 + 15);
  assert.deepEqual(withAddresses.header, {
    version: 2,
    command: "LOCAL",
    tlvs: [{ type: 0x04, value: new Uint8Array() }],
  });
  // ... and that the family "is ignored": a block too short for it is no error.
  const short = done(parseProxyHeader(v2(0x20, 0x21, [1, 2, 3, 4])));
  assert.equal(short.length, 20);
  assert.deepEqual(short.header, { version: 2, command: "LOCAL", tlvs: [] });
});

Deno.test("encodeProxyV1() and encodeProxyV2() read back, for IPv4, IPv6 and mixed families", () => {
  const cases: { source: HostPort; destination: HostPort; expected: [string, string] }[] = [
    {
      source: address("192.0.2.1", 40000),
      destination: address("198.51.100.7", 443),
      expected: ["192.0.2.1", "198.51.100.7"],
    },
    {
      source: address("2001:DB8:0:0:1:0:0:1", 0),
      destination: address("::1", 65535),
      expected: ["2001:db8::1:0:0:1", "::1"],
    },
    {
      source: address("192.0.2.1", 1),
      destination: address("2001:db8::2", 2),
      expected: ["::ffff:192.0.2.1", "2001:db8::2"],
    },
    {
      source: address("2001:db8::2", 3),
      destination: address("10.0.0.1", 4),
      expected: ["2001:db8::2", "::ffff:10.0.0.1"],
    },
  ];
  for (const { source, destination, expected } of cases) {
    for (const [version, encode] of [[1, encodeProxyV1], [2, encodeProxyV2]] as const) {
      const bytes = encode(source, destination);
      const parse = done(parseProxyHeader(concat(bytes, text("after"))));
      assert.equal(parse.length, bytes.length);
      assert.deepEqual(parse.header, {
        version,
        command: "PROXY",
        source: address(expected[0], source.port),
        destination: address(expected[1], destination.port),
        tlvs: [],
      }, `v${version} ${JSON.stringify(source)} ${JSON.stringify(destination)}`);
    }
  }
});

Deno.test("encodeProxyV1() writes the spec's line; encodeProxyV2() its bytes", () => {
  const source = address("192.168.0.1", 56324);
  const destination = address("192.168.0.11", 443);
  assert.equal(
    new TextDecoder().decode(encodeProxyV1(source, destination)),
    "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
  );
  assert.equal(
    new TextDecoder().decode(encodeProxyV1(address("::1", 1), address("192.0.2.1", 2))),
    "PROXY TCP6 ::1 ::ffff:192.0.2.1 1 2\r\n",
  );
  assert.deepEqual(
    encodeProxyV2(address("172.19.0.1", 42578), address("172.19.0.3", 80)),
    v2(0x21, 0x11, IPV4_BLOCK),
  );
  assert.deepEqual(encodeProxyV2Local(), v2(0x20, 0x00, []));
  const ipv6 = encodeProxyV2(address("::1", 1), address("::2", 2));
  assert.equal(ipv6.length, 16 + 36);
  assert.deepEqual([...ipv6.subarray(12, 16)], [0x21, 0x21, 0, 36]);
});

Deno.test("encodeProxyV1() and encodeProxyV2() refuse names and bad ports, naming the field", () => {
  const good = address("127.0.0.1", 1);
  const cases: [HostPort, HostPort, RegExp][] = [
    [
      address("localhost", 1),
      good,
      /source\.hostname must be an IPv4 or IPv6 address .*"localhost"/,
    ],
    [good, address("01.2.3.4", 1), /destination\.hostname .*got "01.2.3.4"/],
    [good, address("fe80::1%eth0", 1), /destination\.hostname .*"fe80::1%eth0"/],
    [address("127.0.0.1", 65536), good, /source\.port must be an integer 0-65535: got 65536/],
    [good, address("::1", 1.5), /destination\.port must be an integer 0-65535: got 1.5/],
  ];
  for (const [source, destination, message] of cases) {
    assert.throws(() => encodeProxyV1(source, destination), message);
    assert.throws(() => encodeProxyV2(source, destination), message);
  }
});

Deno.test("parseProxyHeader() refuses every malformed v1 line, naming the field and value", () => {
  const cases: [string, RegExp][] = [
    [
      "GET / HTTP/1.1\r\nHost: x\r\n",
      /^not a PROXY header \(starts "GET \/ HTTP\/1.1\\r\\n"…\)$/,
    ],
    ["SSH-2.0-OpenSSH_9.6\r\n", /not a PROXY header \(starts "SSH-2.0-/],
    ["proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", /not a PROXY header/],
    ["PROXY\r\n", /not a PROXY header \(starts "PROXY\\r\\n"\)/],
    ["PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", /protocol must be TCP4, TCP6 or UNKNOWN: got "TCP5"/],
    ["PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", /protocol .*got "tcp4"/],
    ["PROXY UNKNOWNX\r\n", /protocol .*got "UNKNOWNX"/],
    ["PROXY \r\n", /protocol .*got ""/],
    [
      "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
      /source address must be an IPv4 address: got "1.2.3.256"/,
    ],
    [
      "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
      /source address must be an IPv4 address: got "01.2.3.4"/,
    ],
    ["PROXY TCP4 1.2.3.4 5.6.7 1 2\r\n", /destination address .*got "5.6.7"/],
    ["PROXY TCP4 ::1 ::1 1 2\r\n", /source address must be an IPv4 address: got "::1"/],
    ["PROXY TCP6 1.2.3.4 ::1 1 2\r\n", /source address must be an IPv6 address: got "1.2.3.4"/],
    ["PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", /source address must be an IPv6 address/],
    ["PROXY TCP6 1::2::3 ::1 1 2\r\n", /source address must be an IPv6 address: got "1::2::3"/],
    ["PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", /source address .*got "1:2:3:4:5:6:7"/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n", /source port must be a port 0-65535 .*got "080"/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 80 65536\r\n", /destination port .*got "65536"/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 80 -1\r\n", /destination port .*got "-1"/],
    ["PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", /separated by single spaces/],
    [
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
      /expected 6 fields separated by single spaces, got more/,
    ],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", /expected 6 fields, got 5/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", /line ends in LF without CR/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", /CR not followed by LF/],
    ["PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", /source address .*got "1.2.3.4\\t5.6.7.8"/],
    [`PROXY UNKNOWN ${"x".repeat(200)}\r\n`, /no CRLF within the first 107 bytes/],
  ];
  for (const [line, message] of cases) {
    assert.match(reason(parseProxyHeader(text(line))), message, JSON.stringify(line));
  }
});

Deno.test("parseProxyHeader() refuses every malformed v2 header, naming the field and value", () => {
  const cases: [Uint8Array, RegExp][] = [
    [v2(0x11, 0x11, IPV4_BLOCK), /PROXY v2: version must be 2: got 1/],
    [v2(0x31, 0x11, IPV4_BLOCK), /version must be 2: got 3/],
    [v2(0x22, 0x11, IPV4_BLOCK), /command must be 0 \(LOCAL\) or 1 \(PROXY\): got 2/],
    [v2(0x2f, 0x11, IPV4_BLOCK), /command .*got 15/],
    [
      v2(0x21, 0x41, IPV4_BLOCK),
      /family and protocol byte must be one of 0x00, 0x11, .*: got 0x41/,
    ],
    [v2(0x21, 0x13, IPV4_BLOCK), /got 0x13/],
    [v2(0x21, 0x10, IPV4_BLOCK), /got 0x10/],
    [
      v2(0x21, 0x11, [1, 2, 3, 4]),
      /length 4 is shorter than the 12 address bytes of TCP over IPv4/,
    ],
    [v2(0x21, 0x21, IPV4_BLOCK), /length 12 is shorter than the 36 address bytes of TCP over IPv6/],
    [v2(0x21, 0x31, []), /length 0 is shorter than the 216 .* UNIX stream/],
    [
      v2(0x21, 0x11, [...IPV4_BLOCK, 0x01, 0, 5, 0x68]),
      /TLV 0x01 at byte 28 has length 5, past the header's end at byte 32/,
    ],
    [v2(0x21, 0x11, [...IPV4_BLOCK, 0x04, 0]), /2 stray byte\(s\) after the last TLV, at byte 28/],
    [v2(0x20, 0x11, [...IPV4_BLOCK, 0x04]), /1 stray byte\(s\)/],
    [
      Uint8Array.from([...SIGNATURE.slice(0, 11), 0x00]),
      /not a PROXY header \(starts "\\r\\n\\r\\n\\x00\\r\\nQUIT\\x00"\)/,
    ],
  ];
  for (const [bytes, message] of cases) {
    assert.match(reason(parseProxyHeader(bytes)), message);
  }
});

Deno.test("parseProxyHeader() answers invalid as soon as the bytes cannot become a header", () => {
  const early: [Uint8Array, RegExp][] = [
    [text("G"), /not a PROXY header \(starts "G"\)/],
    [Uint8Array.of(0x16, 0x03, 0x01), /not a PROXY header \(starts "\\x16\\x03\\x01"\)/],
    [text("PROXY X"), /protocol .*got "X"/],
    [text("PROXY TCP4 1.2.3.4 X"), /destination address .*got "X"/],
    [text("PROXY TCP4 1.2.3.4 256"), /destination address .*got "256"/],
    [text("PROXY TCP4 1.2.3.04"), /source address .*got "1.2.3.04"/],
    [text("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999"), /destination port .*got "99999"/],
    [text("PROXY TCP4 1.2.3.4 5.6.7.8 1 00"), /destination port .*got "00"/],
    [text("PROXY TCP6 ::1 :::"), /destination address must be an IPv6 address: got ":::"/],
    [text(`PROXY UNKNOWN ${"x".repeat(92)}`), /no CRLF within the first 107 bytes/],
    [Uint8Array.from([...SIGNATURE, 0x10]), /version must be 2: got 1/],
    [Uint8Array.from([...SIGNATURE, 0x21, 0x55]), /got 0x55/],
    [Uint8Array.from([...SIGNATURE, 0x21, 0x21, 0, 4]), /length 4 is shorter than the 36/],
    [
      Uint8Array.from([...SIGNATURE, 0x21, 0x11, 0, 20, ...IPV4_BLOCK, 0x04, 0, 9]),
      /TLV 0x04 .*length 9/,
    ],
  ];
  for (const [bytes, message] of early) {
    assert.match(reason(parseProxyHeader(bytes)), message, JSON.stringify([...bytes]));
  }
});

Deno.test("parseProxyHeader() is incomplete at every prefix of a valid header, then done", () => {
  const headers = [
    text("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"),
    text("PROXY TCP6 ffff:f:ff:fff::1 ::ffff:1.2.3.4 0 10\r\n"),
    text("PROXY UNKNOWN\r\n"),
    text("PROXY UNKNOWN a b c\r\n"),
    encodeProxyV2(address("192.0.2.1", 1), address("192.0.2.2", 2)),
    encodeProxyV2(address("2001:db8::1", 1), address("192.0.2.2", 2)),
    v2(0x21, 0x11, [...IPV4_BLOCK, 0x01, 0, 2, 0x68, 0x32, 0x04, 0, 0]),
    v2(0x21, 0x31, new Array(216).fill(0)),
    encodeProxyV2Local(),
  ];
  for (const header of headers) {
    for (let length = 0; length < header.length; length++) {
      assert.deepEqual(
        parseProxyHeader(header.subarray(0, length)),
        { state: "incomplete" },
        `${length} bytes of ${JSON.stringify([...header])}`,
      );
    }
    assert.equal(done(parseProxyHeader(header)).length, header.length);
  }
});

Deno.test("parseProxyHeader() keeps reasons short and printable, whatever the client sent", () => {
  const hostile = [
    Uint8Array.from({ length: 300 }, (_, i) => i % 256),
    text(`PROXY TCP4 ${"9".repeat(100)}`),
    text(`PROXY TCP5${"\u001b[31m".repeat(20)}`),
  ];
  for (const bytes of hostile) {
    const why = reason(parseProxyHeader(bytes));
    assert.ok(why.length < 120, why);
    assert.doesNotMatch(why, /[^\x20-\x7e…]/, why);
  }
});
