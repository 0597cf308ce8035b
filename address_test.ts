import assert from "node:assert/strict";
import { formatHostPort, isLoopbackHost, parseHostPort } from "./address.ts";

Deno.test("parseHostPort() reads IPv4, IPv6 in brackets and host names", () => {
  const cases: [string, string, number][] = [
    ["127.0.0.1:5001", "127.0.0.1", 5001],
    ["[::1]:5001", "::1", 5001],
    ["[2001:db8::1]:443", "2001:db8::1", 443],
    ["localhost:65535", "localhost", 65535],
    ["db-1.internal.example:5432", "db-1.internal.example", 5432],
    ["0.0.0.0:1", "0.0.0.0", 1],
  ];
  for (const [text, hostname, port] of cases) {
    assert.deepEqual(parseHostPort(text), { hostname, port }, text);
  }
});

Deno.test("parseHostPort() names the bad part and the value", () => {
  const cases: [string, RegExp][] = [
    ["nonsense", /expected HOST:PORT .*got "nonsense"/],
    ["127.0.0.1:0", /port must be an integer 1-65535: got "0"/],
    ["127.0.0.1:65536", /port must be an integer 1-65535: got "65536"/],
    ["127.0.0.1:", /port must be an integer 1-65535: got ""/],
    ["127.0.0.1:80x", /port must be an integer 1-65535: got "80x"/],
    ["::1:5001", /IPv6 address needs brackets and a port, as in \[::1\]:5001/],
    ["::1", /IPv6 address needs brackets and a port, as in \[::1\]:5001: got "::1"/],
    ["[:::::]:5100", /bracketed host must be an IPv6 address: got "\[:::::\]:5100"/],
    ["[1::2::3]:5100", /bracketed host must be an IPv6 address/],
    ["999.1.1.1:5100", /not an IPv4 address \(four numbers 0-255\): got "999.1.1.1:5100"/],
    ["1.2.3:5100", /not an IPv4 address/],
    ["[::1]5001", /expected HOST:PORT/],
    ["[localhost]:5001", /bracketed host must be an IPv6 address/],
    [":5001", /expected HOST:PORT .*got ":5001"/],
    ["a b:5001", /expected HOST:PORT/],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseHostPort(text), message, text);
  }
});

Deno.test("parseHostPort() accepts port 0 only when asked", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:0", { allowPortZero: true }), {
    hostname: "127.0.0.1",
    port: 0,
  });
});

Deno.test("formatHostPort() round-trips through parseHostPort()", () => {
  for (const text of ["127.0.0.1:5001", "[::1]:5001", "localhost:80"]) {
    assert.equal(formatHostPort(parseHostPort(text)), text);
  }
});

Deno.test("isLoopbackHost() is true for 127.0.0.0/8, ::1 and localhost; never for a wildcard", () => {
  const cases: [string, boolean][] = [
    ["127.0.0.1", true],
    ["127.255.0.9", true],
    ["localhost", true],
    ["LocalHost", true],
    ["::1", true],
    ["0:0:0:0:0:0:0:1", true],
    ["::ffff:127.0.0.1", true],
    ["0.0.0.0", false],
    ["::", false],
    ["128.0.0.1", false],
    ["10.0.0.1", false],
    ["::2", false],
    ["::ffff:10.0.0.1", false],
    ["fe80::1", false],
    ["localhost.example", false],
    ["admin.internal", false],
  ];
  for (const [host, loopback] of cases) assert.equal(isLoopbackHost(host), loopback, host);
});
