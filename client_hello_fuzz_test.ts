/**
 * Property tests for the ClientHello reader: whatever a client sends, it
 * never throws and never waits past its window; any valid ClientHello, split
 * into any records and arriving in any segments, reads back to the same SNI
 * and ALPN. Seeds are printed; `LB_FUZZ_SEED=N` replays one (see
 * fuzzParameters).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { CLIENT_HELLO_PEEK_BYTES, type HelloParse, parseClientHello } from "./client_hello.ts";
import { fuzzParameters } from "./test_util.ts";
import { concat } from "./io.ts";

/** What any answer must satisfy. */
function assertSane(bytes: Uint8Array, parse: HelloParse): void {
  if (parse.state === "incomplete") {
    assert.ok(bytes.length < CLIENT_HELLO_PEEK_BYTES, `incomplete with ${bytes.length} bytes`);
  } else if (parse.state === "not-tls") {
    assert.ok(parse.reason.length > 0 && parse.reason.length < 200, parse.reason);
    assert.doesNotMatch(parse.reason, /[^\x20-\x7e…]/);
  } else {
    if (parse.sni !== undefined) assert.equal(parse.sni, parse.sni.toLowerCase());
    assert.ok(parse.alpn.every((name) => name.length > 0));
  }
}

// --- A small ClientHello builder (RFC 8446 §4.1.2 layouts) ---

const u16 = (value: number) => [value >> 8, value & 0xff];
const vector8 = (bytes: number[]) => [bytes.length, ...bytes];
const vector16 = (bytes: number[]) => [...u16(bytes.length), ...bytes];
const extension = (type: number, data: number[]) => [...u16(type), ...vector16(data)];
const latin1 = (text: string) => [...text].map((char) => char.charCodeAt(0));

interface HelloParts {
  sni?: string;
  alpn: string[];
  others: { type: number; data: number[] }[];
  sessionId: number[];
  suites: number;
  compression: number[];
}

/** The handshake message (header included) of a ClientHello made of `parts`. */
function helloMessage(parts: HelloParts): number[] {
  const extensions: number[] = [];
  // Extensions in any order: the ones routed on among the others.
  const others = parts.others.map(({ type, data }) => extension(type, data));
  if (parts.sni !== undefined) {
    others.splice(
      others.length >> 1,
      0,
      extension(0, vector16([0, ...vector16(latin1(parts.sni))])),
    );
  }
  if (parts.alpn.length > 0) {
    others.push(extension(16, vector16(parts.alpn.flatMap((name) => vector8(latin1(name))))));
  }
  for (const bytes of others) extensions.push(...bytes);
  const body = [
    3,
    3,
    ...new Array(32).fill(0x5a),
    ...vector8(parts.sessionId),
    ...vector16(new Array(2 * parts.suites).fill(0x13)),
    ...vector8(parts.compression),
    // No extensions at all is valid before TLS 1.3.
    ...(extensions.length > 0 ? vector16(extensions) : []),
  ];
  return [1, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff, ...body];
}

/** `message` in handshake records of the given sizes, in turn (the last size repeats). */
function frame(message: number[], sizes: number[], minor: number): Uint8Array {
  const bytes: number[] = [];
  let start = 0;
  for (let i = 0; start < message.length; i++) {
    const size = sizes[Math.min(i, sizes.length - 1)]!;
    const fragment = message.slice(start, start + size);
    bytes.push(22, 3, minor, ...u16(fragment.length), ...fragment);
    start += size;
  }
  return Uint8Array.from(bytes);
}

const label = fc.stringMatching(/^[A-Za-z0-9]([A-Za-z0-9_-]{0,14}[A-Za-z0-9])?$/);
const hostName = fc.array(label, { minLength: 1, maxLength: 5 }).map((labels) => labels.join("."));
const protocolName = fc.string({
  unit: fc.integer({ min: 0, max: 255 }).map((byte) => String.fromCharCode(byte)),
  minLength: 1,
  maxLength: 12,
});
const otherExtensions = fc.uniqueArray(
  fc.record({
    type: fc.integer({ min: 1, max: 0xffff }).filter((type) => type !== 16),
    data: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 24 }),
  }),
  { selector: (extension) => extension.type, maxLength: 6 },
);
const helloParts: fc.Arbitrary<HelloParts> = fc.record({
  sni: fc.option(hostName, { nil: undefined }),
  alpn: fc.array(protocolName, { maxLength: 4 }),
  others: otherExtensions,
  sessionId: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 32 }),
  suites: fc.integer({ min: 1, max: 20 }),
  compression: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 3 }),
}, { requiredKeys: ["alpn", "others", "sessionId", "suites", "compression"] });
const recordSizes = fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 6 });

function expected(parts: HelloParts): HelloParse {
  return parts.sni === undefined
    ? { state: "done", alpn: parts.alpn }
    : { state: "done", sni: parts.sni.toLowerCase(), alpn: parts.alpn };
}

Deno.test("parseClientHello(): any ClientHello, in any records and segments, reads back", () => {
  fc.assert(
    fc.property(
      helloParts,
      recordSizes,
      fc.integer({ min: 0, max: 4 }),
      fc.uint8Array({ maxLength: 20 }),
      (parts, sizes, minor, after) => {
        const bytes = frame(helloMessage(parts), sizes, minor);
        for (let length = 0; length < bytes.length; length++) {
          assert.deepEqual(parseClientHello(bytes.subarray(0, length)), { state: "incomplete" });
        }
        assert.deepEqual(parseClientHello(bytes), expected(parts));
        assert.deepEqual(parseClientHello(concat(bytes, after)), expected(parts));
      },
    ),
    fuzzParameters("parseClientHello(built hello, split)"),
  );
});

// --- Any bytes ---

const recordStart = fc.constantFrom(
  Uint8Array.of(22, 3, 1),
  Uint8Array.of(22, 3, 1, 0, 40),
  Uint8Array.of(22, 3, 3, 0, 80, 1, 0, 0, 76),
  Uint8Array.of(22, 3, 1, 0, 4, 1, 0, 0, 90, 22, 3, 1, 0, 90),
);
const anyInput = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  fc.tuple(recordStart, fc.uint8Array({ maxLength: 200 })).map(([start, rest]) =>
    concat(start, rest)
  ),
);

Deno.test("parseClientHello(): any bytes never throw, nor wait past the peek window", () => {
  fc.assert(
    fc.property(anyInput, (bytes) => assertSane(bytes, parseClientHello(bytes))),
    fuzzParameters("parseClientHello(any bytes)"),
  );
});

Deno.test("parseClientHello(): more bytes never turn done or not-tls into something else", () => {
  fc.assert(
    fc.property(anyInput, fc.nat(), (bytes, at) => {
      const early = parseClientHello(bytes.subarray(0, at % (bytes.length + 1)));
      const later = parseClientHello(bytes);
      if (early.state === "done") assert.deepEqual(later, early);
      if (early.state === "not-tls") assert.equal(later.state, "not-tls");
    }),
    fuzzParameters("parseClientHello(prefix, then more)"),
  );
});

const mutation = fc.record({
  kind: fc.constantFrom("set", "insert", "delete"),
  at: fc.nat(),
  byte: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 1, 0xff, 22)),
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

Deno.test("parseClientHello(): mutated ClientHellos never throw, and what reads is sane", () => {
  fc.assert(
    fc.property(
      helloParts,
      recordSizes,
      fc.array(mutation, { minLength: 1, maxLength: 4 }),
      (parts, sizes, mutations) => {
        const bytes = mutate(frame(helloMessage(parts), sizes, 1), mutations);
        assertSane(bytes, parseClientHello(bytes));
      },
    ),
    fuzzParameters("parseClientHello(mutated hello)"),
  );
});
