import assert from "node:assert/strict";
import fc from "fast-check";
import { type Cidr, CidrSet, formatCidr, parseCidr, sourceKey } from "./cidr.ts";
import { fuzzParameters } from "./test_util.ts";

Deno.test("parseCidr() reads IPv4, IPv6 and bare addresses, and formatCidr() writes them canonically", () => {
  const cases: [string, string, Cidr["family"], number][] = [
    ["10.0.0.0/8", "10.0.0.0/8", 4, 8],
    ["0.0.0.0/0", "0.0.0.0/0", 4, 0],
    ["127.0.0.1/32", "127.0.0.1/32", 4, 32],
    ["127.0.0.1", "127.0.0.1/32", 4, 32],
    ["255.255.255.255/32", "255.255.255.255/32", 4, 32],
    ["2001:db8::/32", "2001:db8::/32", 6, 32],
    ["2001:0DB8:0000:0000:0000:0000:0000:0000/32", "2001:db8::/32", 6, 32],
    ["[2001:db8::]/32", "2001:db8::/32", 6, 32],
    ["::/0", "::/0", 6, 0],
    ["::", "::/128", 6, 128],
    ["::1", "::1/128", 6, 128],
    ["1::", "1::/128", 6, 128],
    ["fe80::/10", "fe80::/10", 6, 10],
    // RFC 5952: one zero group is written out; the first of two equal runs is compressed.
    ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0/128", 6, 128],
    ["1:0:0:2:0:0:3:4", "1::2:0:0:3:4/128", 6, 128],
    ["1:0:0:2:0:0:0:4", "1:0:0:2::4/128", 6, 128],
    ["2001:db8::192.0.2.1", "2001:db8::c000:201/128", 6, 128],
    ["2001:db8::/128", "2001:db8::/128", 6, 128],
    ["10.0.0.0/008", "10.0.0.0/8", 4, 8],
    // Inside ::ffff:0:0/96 a network is the IPv4 one it names.
    ["::ffff:10.0.0.0/104", "10.0.0.0/8", 4, 8],
    ["::ffff:0:0/96", "0.0.0.0/0", 4, 0],
    ["::ffff:a01:203", "10.1.2.3/32", 4, 32],
    // Shorter than /96 it stays IPv6 (and matches no IPv4 client).
    ["::/80", "::/80", 6, 80],
  ];
  for (const [text, canonical, family, prefixLength] of cases) {
    const cidr = parseCidr(text);
    assert.equal(formatCidr(cidr), canonical, text);
    assert.equal(cidr.family, family, text);
    assert.equal(cidr.prefixLength, prefixLength, text);
    assert.equal(cidr.words.length, family === 4 ? 1 : 4, text);
  }
  assert.deepEqual(parseCidr("10.1.0.0/16").words, [0x0a010000]);
  assert.deepEqual(parseCidr("2001:db8:1::/48").words, [0x20010db8, 0x00010000, 0, 0]);
});

Deno.test("parseCidr() names the value and what was expected", () => {
  const general = "expected ADDRESS/PREFIX such as 10.0.0.0/8 or 2001:db8::/32";
  const cases: [string, string][] = [
    ["x", `"x": ${general}`],
    ["", `"": ${general}`],
    ["10.0.0.0/33", `"10.0.0.0/33": expected an IPv4 prefix length 0-32`],
    ["10.0.0.0/", `"10.0.0.0/": expected an IPv4 prefix length 0-32`],
    ["10.0.0.0/-1", `"10.0.0.0/-1": expected an IPv4 prefix length 0-32`],
    ["10.0.0.0/8/8", `"10.0.0.0/8/8": expected an IPv4 prefix length 0-32`],
    ["10.0.0.0/ 8", `"10.0.0.0/ 8": expected an IPv4 prefix length 0-32`],
    ["2001:db8::/129", `"2001:db8::/129": expected an IPv6 prefix length 0-128`],
    ["2001:db8::/1e2", `"2001:db8::/1e2": expected an IPv6 prefix length 0-128`],
    [
      "10.0.0.1/8",
      `"10.0.0.1/8": host bits are set beyond the /8 prefix: ` +
      `write 10.0.0.0/8 for the network, or 10.0.0.1/32 for the one address`,
    ],
    [
      "2001:db8::1/32",
      `"2001:db8::1/32": host bits are set beyond the /32 prefix: ` +
      `write 2001:db8::/32 for the network, or 2001:db8::1/128 for the one address`,
    ],
    [
      "::ffff:10.0.0.1/104",
      `"::ffff:10.0.0.1/104": host bits are set beyond the /104 prefix: ` +
      `write 10.0.0.0/8 for the network, or ::ffff:10.0.0.1/128 for the one address`,
    ],
    ["fe80::1%eth0/64", `"fe80::1%eth0/64": expected no zone id (%eth0) in a CIDR`],
    ["[fe80::1%eth0]/64", `"[fe80::1%eth0]/64": expected no zone id (%eth0) in a CIDR`],
    [
      "010.0.0.0/8",
      `"010.0.0.0/8": expected an IPv4 address of four numbers 0-255 (no leading zeros)`,
    ],
    [
      "10.0.0.256",
      `"10.0.0.256": expected an IPv4 address of four numbers 0-255 (no leading zeros)`,
    ],
    ["10.0.0/8", `"10.0.0/8": expected an IPv4 address of four numbers 0-255 (no leading zeros)`],
    ["1.2.3.4.5", `"1.2.3.4.5": expected an IPv4 address of four numbers 0-255 (no leading zeros)`],
    [" 10.0.0.0/8", `" 10.0.0.0/8": ${general}`],
    ["[10.0.0.0]/8", `"[10.0.0.0]/8": ${general}`],
    ["[2001:db8::/32", `"[2001:db8::/32": ${general}`],
    ["1::2::3", `"1::2::3": ${general}`],
    [":1::/8", `":1::/8": ${general}`],
    ["1::/8:", `"1::/8:": expected an IPv6 prefix length 0-128`],
    ["1:2:3:4:5:6:7:8::", `"1:2:3:4:5:6:7:8::": ${general}`],
    ["1:2:3:4:5:6:7:8:9", `"1:2:3:4:5:6:7:8:9": ${general}`],
    ["1:2:3:4:5:6:7", `"1:2:3:4:5:6:7": ${general}`],
    ["1:2:3:4:5:6:7:", `"1:2:3:4:5:6:7:": ${general}`],
    [":::", `":::": ${general}`],
    ["12345::", `"12345::": ${general}`],
    ["g::", `"g::": ${general}`],
    ["1:2:3:4:5:6:7:1.2.3.4", `"1:2:3:4:5:6:7:1.2.3.4": ${general}`],
    ["::1.2.3.4:5", `"::1.2.3.4:5": ${general}`],
    ["::01.2.3.4", `"::01.2.3.4": ${general}`],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseCidr(text), (error: Error) => {
      assert.ok(error instanceof RangeError, text);
      assert.equal(error.message, message);
      return true;
    });
  }
});

Deno.test("CidrSet.has() matches client addresses in every spelling", () => {
  const set = new CidrSet(
    ["10.0.0.0/8", "192.0.2.66/32", "2001:db8::/32", "fe80::/10", "::1"].map(parseCidr),
  );
  const cases: [string, boolean][] = [
    ["10.0.0.0", true],
    ["10.255.255.255", true],
    ["11.0.0.0", false],
    ["9.255.255.255", false],
    ["192.0.2.66", true],
    ["192.0.2.67", false],
    // IPv4-mapped IPv6, dotted or as URLs and the epoll engine write it.
    ["::ffff:10.1.2.3", true],
    ["::FFFF:10.1.2.3", true],
    ["::ffff:a01:203", true],
    ["0:0:0:0:0:ffff:a01:203", true],
    ["[::ffff:10.1.2.3]", true],
    ["::ffff:11.1.2.3", false],
    // IPv4-compatible (::a.b.c.d) is not mapped: it is IPv6.
    ["::10.1.2.3", false],
    ["2001:db8::1", true],
    ["2001:DB8::1", true],
    ["2001:0db8:0000:0000:0000:0000:0000:0001", true],
    ["2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true],
    ["[2001:db8::1]", true],
    ["2001:db8::192.0.2.1", true],
    ["2001:db9::", false],
    ["::1", true],
    ["0:0:0:0:0:0:0:1", true],
    ["::2", false],
    // A zone id names our interface: ignored, on IPv6 only.
    ["fe80::1%eth0", true],
    ["[fe80::1%25eth0]", true],
    ["fe80::1%", false],
    ["10.1.2.3%eth0", false],
    // Brackets belong to IPv6.
    ["[10.1.2.3]", false],
    ["[2001:db8::1", false],
    ["2001:db8::1]", false],
    // Anything unparseable matches nothing.
    ["", false],
    ["localhost", false],
    ["010.1.2.3", false],
    ["10.1.2.3 ", false],
    ["10.1.2.3/8", false],
    ["2001:db8::1::", false],
  ];
  for (const [address, expected] of cases) {
    assert.equal(set.has(address), expected, address);
  }
  assert.equal(set.size, 5);
});

Deno.test("CidrSet: /0 matches its whole family only; an empty set matches nothing", () => {
  const ipv4 = new CidrSet([parseCidr("0.0.0.0/0")]);
  assert.ok(ipv4.has("1.2.3.4"));
  assert.ok(ipv4.has("::ffff:1.2.3.4"));
  assert.ok(!ipv4.has("2001:db8::1"));
  const ipv6 = new CidrSet([parseCidr("::/0")]);
  assert.ok(ipv6.has("2001:db8::1"));
  assert.ok(ipv6.has("::"));
  assert.ok(!ipv6.has("1.2.3.4"));
  assert.ok(!ipv6.has("::ffff:1.2.3.4"), "a mapped client is IPv4");
  const empty = new CidrSet([]);
  assert.ok(!empty.has("1.2.3.4"));
  assert.equal(empty.size, 0);
  const duplicates = new CidrSet(["10.0.0.0/8", "::ffff:10.0.0.0/104"].map(parseCidr));
  assert.equal(duplicates.size, 1);
});

Deno.test("sourceKey() gives IPv4 as is and IPv6 as its network, one key per address however spelt", () => {
  const cases: [string, number, string][] = [
    ["10.1.2.3", 64, "10.1.2.3"],
    ["::ffff:10.1.2.3", 64, "10.1.2.3"],
    ["::ffff:a01:203", 128, "10.1.2.3"],
    ["2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"],
    ["2001:DB8:1:2:FFFF::1", 64, "2001:db8:1:2::/64"],
    ["[2001:db8:1:2::9%eth0]", 64, "2001:db8:1:2::/64"],
    ["2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"],
    ["2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6/128"],
    ["2001:db8:1:2:3:4:5:6", 0, "::/0"],
    ["2001:0db8::0001", 128, "2001:db8::1/128"],
    ["not an address", 64, "not an address"],
  ];
  for (const [address, prefix, key] of cases) {
    assert.equal(sourceKey(address, prefix), key, `${address} /${prefix}`);
  }
  for (const prefix of [-1, 129, 1.5, NaN]) {
    assert.throws(
      () => sourceKey("::1", prefix),
      new RangeError(`'ipv6Prefix' must be an integer 0-128: got ${prefix}`),
    );
  }
});

// --- Properties --------------------------------------------------------------

/** An address as bits: IPv4 (4 bytes) or IPv6 (16 bytes), the ground truth. */
type Bytes = number[];

/** The reference: family and bits after unmapping, compared bit by bit. */
function normalize(bytes: Bytes): { family: 4 | 6; bytes: Bytes } {
  const mapped = bytes.length === 16 && bytes.slice(0, 10).every((b) => b === 0) &&
    bytes[10] === 0xff && bytes[11] === 0xff;
  if (mapped) return { family: 4, bytes: bytes.slice(12) };
  return { family: bytes.length === 4 ? 4 : 6, bytes };
}

const bitOf = (bytes: Bytes, i: number) => (bytes[i >> 3]! >> (7 - (i & 7))) & 1;

function referenceMatch(address: Bytes, network: Bytes, prefixLength: number): boolean {
  const a = normalize(address);
  let n = normalize(network);
  let length = prefixLength;
  if (network.length === 16 && n.family === 4) {
    if (prefixLength < 96) n = { family: 6, bytes: network }; // stays IPv6
    else length = prefixLength - 96;
  }
  if (a.family !== n.family) return false;
  for (let i = 0; i < length; i++) {
    if (bitOf(a.bytes, i) !== bitOf(n.bytes, i)) return false;
  }
  return true;
}

function masked(bytes: Bytes, prefixLength: number): Bytes {
  return bytes.map((byte, i) => {
    const keep = Math.min(8, Math.max(0, prefixLength - 8 * i));
    return byte & ((0xff << (8 - keep)) & 0xff);
  });
}

/** How to spell an IPv6 address: every liberty a peer or a config may take. */
interface Spelling {
  compress: number; // which zero run to write as `::` (none when there is none)
  upper: boolean;
  pad: boolean;
  dotted: boolean;
  bracket: boolean;
  zone: boolean;
}

const spelling: fc.Arbitrary<Spelling> = fc.record({
  compress: fc.nat(40),
  upper: fc.boolean(),
  pad: fc.boolean(),
  dotted: fc.boolean(),
  bracket: fc.boolean(),
  zone: fc.boolean(),
});

function spellIpv4(bytes: Bytes): string {
  return bytes.join(".");
}

function spellIpv6(bytes: Bytes, how: Spelling, client: boolean): string {
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  const hexGroups = how.dotted ? 6 : 8;
  let text = groups.slice(0, hexGroups).map((group) => {
    const hex = group.toString(16);
    return how.pad ? hex.padStart(4, "0") : hex;
  }).join(":");
  if (how.dotted) text += ":" + spellIpv4(bytes.slice(12));
  // Every run of zero groups (not only the longest) may be written `::`.
  const runs: [number, number][] = [];
  for (let start = 0; start < hexGroups; start++) {
    for (let end = start; end < hexGroups && groups[end] === 0; end++) runs.push([start, end + 1]);
  }
  if (runs.length > 0) {
    const [start, end] = runs[how.compress % runs.length]!;
    const parts = text.split(":");
    const head = parts.slice(0, start).join(":");
    const tail = parts.slice(end).join(":");
    text = `${head}::${tail}`;
  }
  if (how.upper) text = text.toUpperCase();
  if (client && how.zone) text += "%eth0";
  if (how.bracket) text = `[${text}]`;
  return text;
}

/** An address: IPv4, IPv6, or IPv4 mapped into IPv6 (often, to exercise the rule). */
const addressBytes: fc.Arbitrary<Bytes> = fc.oneof(
  fc.array(fc.nat(255), { minLength: 4, maxLength: 4 }),
  fc.array(fc.nat(255), { minLength: 16, maxLength: 16 }),
  fc.array(fc.nat(255), { minLength: 4, maxLength: 4 })
    .map((v4) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...v4]),
  // Sparse IPv6, with zero runs to compress.
  fc.array(fc.constantFrom(0, 0, 0, 1, 0xff), { minLength: 16, maxLength: 16 }),
);

/** A network near `address`: its own bits, maybe one flipped, masked to a random prefix. */
function networkNear(address: Bytes) {
  const bits = address.length * 8;
  return fc.record({
    prefixLength: fc.integer({ min: 0, max: bits }),
    flip: fc.option(fc.nat(bits - 1)),
    family: fc.constantFrom("same", "other"),
  }).chain(({ prefixLength, flip, family }) => {
    const bytes = [...address];
    if (flip !== null) bytes[flip >> 3]! ^= 0x80 >> (flip & 7);
    if (family === "other") {
      // The other family: IPv4 written inside ::ffff:0:0/96, or IPv6 cut to IPv4's length.
      if (bytes.length === 4) {
        return fc.constant({
          bytes: masked([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...bytes], prefixLength + 96),
          prefixLength: prefixLength + 96,
        });
      }
      const length = Math.min(32, prefixLength);
      return fc.constant({ bytes: masked(bytes.slice(12), length), prefixLength: length });
    }
    return fc.constant({ bytes: masked(bytes, prefixLength), prefixLength });
  });
}

function spell(bytes: Bytes, how: Spelling, client: boolean): string {
  return bytes.length === 4 ? spellIpv4(bytes) : spellIpv6(bytes, how, client);
}

Deno.test("property: CidrSet.has() agrees with a bit-by-bit comparison, in any spelling", () => {
  const sample = addressBytes.chain((address) =>
    fc.tuple(
      fc.constant(address),
      fc.array(networkNear(address), { minLength: 1, maxLength: 4 }),
      fc.array(addressBytes.chain(networkNear), { maxLength: 3 }),
      spelling,
      spelling,
    )
  );
  fc.assert(
    fc.property(sample, ([address, near, far, addressHow, networkHow]) => {
      const networks = [...near, ...far];
      const texts = networks.map(({ bytes, prefixLength }) =>
        `${spell(bytes, networkHow, false)}/${prefixLength}`
      );
      const set = new CidrSet(texts.map(parseCidr));
      const client = spell(address, addressHow, true);
      const expected = networks.some(({ bytes, prefixLength }) =>
        referenceMatch(address, bytes, prefixLength)
      );
      assert.equal(set.has(client), expected, `${client} in ${texts.join(", ")}`);
      // Each network alone, too: a bug in one group must not hide behind another.
      networks.forEach(({ bytes, prefixLength }, i) => {
        const one = new CidrSet([parseCidr(texts[i]!)]);
        assert.equal(one.has(client), referenceMatch(address, bytes, prefixLength), texts[i]);
      });
    }),
    fuzzParameters("CidrSet.has() vs bit-by-bit"),
  );
});

Deno.test("property: formatCidr() is canonical: URL's spelling of IPv6, and parseCidr() reads it back", () => {
  const sample = addressBytes.chain((address) => fc.tuple(networkNear(address), spelling));
  fc.assert(
    fc.property(sample, ([{ bytes, prefixLength }, how]) => {
      const text = `${spell(bytes, how, false)}/${prefixLength}`;
      const cidr = parseCidr(text);
      const canonical = formatCidr(cidr);
      assert.deepEqual(parseCidr(canonical), cidr, text);
      if (cidr.family === 6) {
        const address = canonical.slice(0, canonical.indexOf("/"));
        assert.equal(`[${address}]`, new URL(`http://[${address}]/`).hostname, text);
        assert.equal(
          address,
          new URL(`http://[${spell(bytes, { ...how, bracket: false }, false)}]/`).hostname.slice(
            1,
            -1,
          ),
        );
      }
    }),
    fuzzParameters("formatCidr() canonical"),
  );
});

Deno.test("property: sourceKey() is one key per IPv4 address and per IPv6 /prefix network", () => {
  const pair = fc.tuple(addressBytes, fc.integer({ min: 0, max: 128 })).chain(([a, prefix]) =>
    fc.tuple(
      fc.constant(a),
      // A second address: the same, one bit away, or unrelated.
      fc.oneof(
        fc.constant(a),
        fc.nat(a.length * 8 - 1).map((bit) => {
          const b = [...a];
          b[bit >> 3]! ^= 0x80 >> (bit & 7);
          return b;
        }),
        addressBytes,
      ),
      fc.constant(prefix),
      spelling,
      spelling,
    )
  );
  fc.assert(
    fc.property(pair, ([a, b, prefix, howA, howB]) => {
      const keyA = sourceKey(spell(a, howA, true), prefix);
      const keyB = sourceKey(spell(b, howB, true), prefix);
      const na = normalize(a);
      const nb = normalize(b);
      const bits = na.family === 4 ? 32 : prefix;
      const same = na.family === nb.family &&
        Array.from({ length: bits }, (_, i) => i).every((i) =>
          bitOf(na.bytes, i) === bitOf(nb.bytes, i)
        );
      assert.equal(keyA === keyB, same, `${keyA} vs ${keyB}`);
      if (na.family === 4) assert.equal(keyA, na.bytes.join("."));
    }),
    fuzzParameters("sourceKey() per network"),
  );
});
