/**
 * Property tests for the PROXY header parser: whatever a client sends, it
 * never throws and its `done` is consistent; every header the encoders write
 * (and v2 ones with TLVs) reads back, arriving in any split; mutated headers
 * are read or refused, never half-read. Seeds are printed;
 * `LB_FUZZ_SEED=N` replays one (see fuzzParameters).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { type HostPort, isIpv4, isIpv6 } from "./address.ts";
import {
  encodeProxyV1,
  encodeProxyV2,
  encodeProxyV2Local,
  parseProxyHeader,
  PROXY_V1_MAX_LENGTH,
  type ProxyParse,
} from "./proxy_protocol.ts";
import { fuzzParameters } from "./test_util.ts";
import { concat } from "./io.ts";

const SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
const V2_LONGEST = 16 + 0xffff;

/** What any `done` answer must satisfy, checked against address.ts's own parsers. */
function assertConsistent(bytes: Uint8Array, parse: ProxyParse): void {
  if (parse.state === "invalid") {
    assert.ok(parse.reason.length > 0 && parse.reason.length < 200, parse.reason);
    return;
  }
  if (parse.state === "incomplete") {
    assert.ok(bytes.length < V2_LONGEST);
    return;
  }
  const { header, length } = parse;
  assert.ok(length >= 15 && length <= bytes.length, `length ${length} of ${bytes.length}`);
  if (header.version === 1) assert.ok(length <= PROXY_V1_MAX_LENGTH);
  assert.equal(header.source === undefined, header.destination === undefined);
  for (const address of [header.source, header.destination]) {
    if (address === undefined) continue;
    assert.ok(isIpv4(address.hostname) || isIpv6(address.hostname), address.hostname);
    assert.ok(Number.isInteger(address.port) && address.port >= 0 && address.port <= 65535);
  }
  // The header is all in its `length` bytes: what follows changes nothing.
  assert.deepEqual(parseProxyHeader(bytes.subarray(0, length)), parse);
}

const ascii = (text: string) => new TextEncoder().encode(text);

// Inputs that get past the first bytes, so the deeper checks are reached too.
const likelyStarts = fc.constantFrom(
  ascii("PROXY "),
  ascii("PROXY TCP4 "),
  ascii("PROXY TCP6 "),
  ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1"),
  ascii("PROXY UNKNOWN"),
  Uint8Array.from(SIGNATURE),
  Uint8Array.from([...SIGNATURE, 0x21, 0x11]),
  Uint8Array.from([...SIGNATURE, 0x21, 0x21, 0x00]),
  Uint8Array.from([...SIGNATURE, 0x20, 0x00, 0x00, 0x07]),
);
const v1Characters = fc.string({
  unit: fc.constantFrom(..."0123456789abcdefABCDEF.: \r\nPROXYTCP46UNKW\t"),
  maxLength: 120,
}).map(ascii);
const anyInput = fc.oneof(
  fc.uint8Array({ maxLength: 200 }),
  fc.tuple(likelyStarts, fc.uint8Array({ maxLength: 120 })).map(([start, rest]) =>
    concat(start, rest)
  ),
  fc.tuple(likelyStarts, v1Characters).map(([start, rest]) => concat(start, rest)),
);

Deno.test("parseProxyHeader(): any bytes never throw, and done is consistent", () => {
  fc.assert(
    fc.property(anyInput, (bytes) => assertConsistent(bytes, parseProxyHeader(bytes))),
    fuzzParameters("parseProxyHeader(any bytes)"),
  );
});

Deno.test("parseProxyHeader(): more bytes never turn invalid or done into something else", () => {
  fc.assert(
    fc.property(anyInput, fc.nat(), (bytes, at) => {
      const early = parseProxyHeader(bytes.subarray(0, at % (bytes.length + 1)));
      const later = parseProxyHeader(bytes);
      if (early.state === "done") assert.deepEqual(later, early);
      if (early.state === "invalid") assert.equal(later.state, "invalid");
    }),
    fuzzParameters("parseProxyHeader(prefix, then more)"),
  );
});

// --- Valid headers and what they must read back as ---

const ipAddress = fc.oneof(fc.ipV4(), fc.ipV6());
const hostPort = fc.record({ hostname: ipAddress, port: fc.integer({ min: 0, max: 65535 }) });
// fc.record's objects have no prototype; the parser's TLVs are plain objects.
const tlv = fc.tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 40 }))
  .map(([type, value]) => ({ type, value }));

interface Case {
  bytes: Uint8Array;
  source?: HostPort;
  destination?: HostPort;
  tlvs: { type: number; value: Uint8Array }[];
}

/** Appends TLVs to an encoded v2 header and grows its length to match. */
function withTlvs(header: Uint8Array, tlvs: { type: number; value: Uint8Array }[]): Uint8Array {
  const parts = tlvs.map(({ type, value }) =>
    concat(Uint8Array.of(type, value.length >> 8, value.length & 0xff), value)
  );
  const bytes = concat(header, ...parts);
  new DataView(bytes.buffer).setUint16(14, bytes.length - 16);
  return bytes;
}

const validHeader: fc.Arbitrary<Case> = fc.oneof(
  fc.record({ source: hostPort, destination: hostPort }).map(({ source, destination }) => ({
    bytes: encodeProxyV1(source, destination),
    source,
    destination,
    tlvs: [],
  })),
  fc.record({ source: hostPort, destination: hostPort, tlvs: fc.array(tlv, { maxLength: 4 }) })
    .map(({ source, destination, tlvs }) => ({
      bytes: withTlvs(encodeProxyV2(source, destination), tlvs),
      source,
      destination,
      tlvs,
    })),
  fc.array(tlv, { maxLength: 3 }).map((tlvs) => ({
    bytes: withTlvs(encodeProxyV2Local(), tlvs),
    tlvs,
  })),
);

/** One spelling of an address, by the URL parser (not the code under test). */
function canonical(hostname: string): string {
  return new URL(`http://${hostname.includes(":") ? `[${hostname}]` : hostname}/`).hostname;
}

/** The address a header reports: an IPv4 side beside an IPv6 one travels as ::ffff:a.b.c.d. */
function expectedHost(address: HostPort, other: HostPort): string {
  const mixed = address.hostname.includes(":") !== other.hostname.includes(":");
  return canonical(
    mixed && !address.hostname.includes(":") ? `::ffff:${address.hostname}` : address.hostname,
  );
}

function assertReadsBack(testCase: Case, parse: ProxyParse): void {
  assert.equal(parse.state, "done", JSON.stringify(parse));
  if (parse.state !== "done") return;
  assert.equal(parse.length, testCase.bytes.length);
  const { header } = parse;
  assert.deepEqual(header.tlvs, testCase.tlvs);
  if (testCase.source === undefined || testCase.destination === undefined) {
    assert.equal(header.command, "LOCAL");
    assert.equal(header.source, undefined);
    return;
  }
  assert.equal(header.command, "PROXY");
  const { source, destination } = testCase;
  assert.equal(canonical(header.source!.hostname), expectedHost(source, destination));
  assert.equal(canonical(header.destination!.hostname), expectedHost(destination, source));
  assert.equal(header.source!.port, source.port);
  assert.equal(header.destination!.port, destination.port);
}

Deno.test("parseProxyHeader(): every encoded header, split anywhere, is incomplete and then done", () => {
  fc.assert(
    fc.property(validHeader, fc.uint8Array({ maxLength: 20 }), (testCase, after) => {
      const { bytes } = testCase;
      for (let length = 0; length < bytes.length; length++) {
        assert.deepEqual(parseProxyHeader(bytes.subarray(0, length)), { state: "incomplete" });
      }
      assertReadsBack(testCase, parseProxyHeader(bytes));
      assertReadsBack(testCase, parseProxyHeader(concat(bytes, after)));
    }),
    fuzzParameters("parseProxyHeader(encoded header, split)"),
  );
});

// --- Mutations ---

const mutation = fc.record({
  kind: fc.constantFrom("set", "insert", "delete"),
  at: fc.nat(),
  byte: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0x0d, 0x0a, 0x20, 0x3a, 0x2e)),
});

function mutate(
  bytes: Uint8Array,
  mutations: { kind: string; at: number; byte: number }[],
): Uint8Array {
  const list = [...bytes];
  for (const { kind, at, byte } of mutations) {
    const position = at % (list.length + 1);
    if (kind === "insert") list.splice(position, 0, byte);
    else if (kind === "delete") list.splice(position, 1);
    else if (position < list.length) list[position] = byte;
  }
  return Uint8Array.from(list);
}

// Enough stream after a header that no header can still be waiting for more.
const STREAM = new Uint8Array(V2_LONGEST);

Deno.test("parseProxyHeader(): mutated headers are read or refused, never half-read", () => {
  fc.assert(
    fc.property(
      validHeader,
      fc.array(mutation, { minLength: 1, maxLength: 4 }),
      (testCase, mutations) => {
        const bytes = concat(mutate(testCase.bytes, mutations), STREAM);
        const parse = parseProxyHeader(bytes);
        assert.notEqual(parse.state, "incomplete");
        assertConsistent(bytes, parse);
      },
    ),
    fuzzParameters("parseProxyHeader(mutated header)"),
  );
});
