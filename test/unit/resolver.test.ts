import { isIP } from "node:net";
import { describe, expect, it } from "vitest";
import {
  clampTtl,
  DdisaCache,
  DnsQueryError,
  type DnsServer,
  DnsUnavailableError,
  decodeMessage,
  encodeTxtQuery,
  formatServer,
  interpretResponse,
  parseServer,
  resolveDdisa,
  type TxtAnswer,
  type TxtQuery,
} from "../../protocol/resolver.ts";
import { FakeClock } from "../helpers/fake-context.ts";

// A DNS response built byte by byte (RFC 1035 4.1), independent of the code under test.
function name(n: string): number[] {
  const out: number[] = [];
  for (const l of n.split(".")) out.push(l.length, ...Buffer.from(l));
  return [...out, 0];
}
function rr(owner: number[], type: number, ttl: number, rdata: number[]): number[] {
  return [
    ...owner,
    0,
    type,
    0,
    1,
    (ttl >>> 24) & 255,
    (ttl >>> 16) & 255,
    (ttl >>> 8) & 255,
    ttl & 255,
    rdata.length >> 8,
    rdata.length & 255,
    ...rdata,
  ];
}
function txt(...strings: string[]): number[] {
  return strings.flatMap((s) => [Buffer.byteLength(s), ...Buffer.from(s)]);
}
function response(opts: {
  id?: number;
  rcode?: number;
  tc?: boolean;
  qname?: string;
  answers?: number[][];
  authority?: number[][];
}): Uint8Array {
  const id = opts.id ?? 0x1234;
  const flags = 0x8180 | (opts.tc ? 0x0200 : 0) | (opts.rcode ?? 0);
  const an = opts.answers ?? [];
  const ns = opts.authority ?? [];
  return Uint8Array.from([
    id >> 8,
    id & 255,
    flags >> 8,
    flags & 255,
    0,
    1,
    0,
    an.length,
    0,
    ns.length,
    0,
    0,
    ...name(opts.qname ?? "_ddisa.example.com"),
    0,
    16,
    0,
    1,
    ...an.flat(),
    ...ns.flat(),
  ]);
}
const PTR_QNAME = [0xc0, 12]; // compression pointer to the question name at offset 12

describe("DNS wire format", () => {
  it("encodes a TXT query with RD and an EDNS0 OPT record", () => {
    const q = encodeTxtQuery(0xbeef, "_ddisa.example.com");
    expect([...q.subarray(0, 4)]).toEqual([0xbe, 0xef, 0x01, 0x00]);
    expect(Buffer.from(q).includes(Buffer.from([6, ...Buffer.from("_ddisa"), 7]))).toBe(true);
    expect([...q.subarray(q.length - 11)]).toEqual([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    expect(() => encodeTxtQuery(1, `${"a".repeat(64)}.com`)).toThrow();
    expect(() => encodeTxtQuery(1, "a..com")).toThrow();
  });

  it("decodes TXT answers with compression, joins character-strings, keeps the TTL", () => {
    const msg = decodeMessage(
      response({
        answers: [
          rr(PTR_QNAME, 16, 120, txt("v=ddisa1 idp=https://", "id.example.com")),
          rr(PTR_QNAME, 16, 90, txt("v=spf1 -all")),
        ],
      }),
    );
    const a = interpretResponse(msg, "_ddisa.example.com", "s");
    expect(a).toEqual({
      txt: ["v=ddisa1 idp=https://id.example.com", "v=spf1 -all"],
      ttl: 90,
      rcode: "NOERROR",
      server: "s",
    });
  });

  it("follows a CNAME chain and ignores TXT records of other names", () => {
    const msg = decodeMessage(
      response({
        answers: [
          rr(PTR_QNAME, 5, 300, name("target.example.net")),
          rr(name("target.example.net"), 16, 200, txt("v=ddisa1 idp=https://t.example")),
          rr(name("other.example.net"), 16, 200, txt("v=ddisa1 idp=https://evil.example")),
        ],
      }),
    );
    expect(interpretResponse(msg, "_ddisa.example.com", "s").txt).toEqual(["v=ddisa1 idp=https://t.example"]);
  });

  it("treats NXDOMAIN and NODATA as 'no record', with the SOA negative TTL capped at 60 s", () => {
    const soa = (ttl: number, minimum: number) =>
      rr(name("example.com"), 6, ttl, [
        ...name("ns.example.com"),
        ...name("admin.example.com"),
        ...Array(16).fill(0),
        (minimum >>> 24) & 255,
        (minimum >>> 16) & 255,
        (minimum >>> 8) & 255,
        minimum & 255,
      ]);
    const nx = interpretResponse(
      decodeMessage(response({ rcode: 3, authority: [soa(3600, 30)] })),
      "_ddisa.example.com",
      "s",
    );
    expect(nx).toMatchObject({ txt: [], rcode: "NXDOMAIN", ttl: 30 });
    const nodata = interpretResponse(
      decodeMessage(response({ authority: [soa(3600, 3600)] })),
      "_ddisa.example.com",
      "s",
    );
    expect(nodata).toMatchObject({ txt: [], rcode: "NODATA", ttl: 60 });
    const noSoa = interpretResponse(decodeMessage(response({ rcode: 3 })), "_ddisa.example.com", "s");
    expect(noSoa.ttl).toBe(60);
  });

  it.each([
    [2, "servfail"],
    [5, "refused"],
    [1, "rcode"],
    [4, "rcode"],
  ] as const)("turns rcode %i into a failure (%s)", (rcode, kind) => {
    const msg = decodeMessage(response({ rcode }));
    try {
      interpretResponse(msg, "_ddisa.example.com", "s");
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(DnsQueryError);
      expect((e as DnsQueryError).kind).toBe(kind);
    }
  });

  it("refuses an answer for another question", () => {
    const msg = decodeMessage(response({ qname: "_ddisa.evil.example" }));
    expect(() => interpretResponse(msg, "_ddisa.example.com", "s")).toThrow(/different name/);
  });

  it("rejects malformed messages", () => {
    const good = response({ answers: [rr(PTR_QNAME, 16, 1, txt("x"))] });
    expect(() => decodeMessage(good.subarray(0, good.length - 2))).toThrow();
    expect(() => decodeMessage(Uint8Array.from([0, 1, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).toThrow(
      /not a DNS response/,
    );
    // A compression pointer loop.
    const loop = response({});
    loop[12] = 0xc0;
    loop[13] = 12;
    expect(() => decodeMessage(loop)).toThrow();
    // A TXT character-string longer than its record.
    expect(() => decodeMessage(response({ answers: [rr(PTR_QNAME, 16, 1, [10, 65])] }))).toThrow();
  });

  it("treats a TTL with the high bit set as 0 (RFC 2181)", () => {
    const msg = decodeMessage(response({ answers: [rr(PTR_QNAME, 16, 0x80000000, txt("x"))] }));
    expect(msg.answers[0]!.ttl).toBe(0);
  });

  it("clamps TTLs", () => {
    expect(clampTtl(10 * 86_400)).toBe(86_400);
    expect(clampTtl(-5)).toBe(0);
    expect(clampTtl(Number.NaN)).toBe(0);
    expect(clampTtl(300)).toBe(300);
  });
});

describe("parseServer", () => {
  const cases: [string, DnsServer][] = [
    ["1.2.3.4", { host: "1.2.3.4", port: 53, family: 4 }],
    ["127.0.0.1:5353", { host: "127.0.0.1", port: 5353, family: 4 }],
    ["::1", { host: "::1", port: 53, family: 6 }],
    ["[::1]:5353", { host: "::1", port: 5353, family: 6 }],
    ["[2001:db8::1]", { host: "2001:db8::1", port: 53, family: 6 }],
  ];
  it.each(cases)("parses %s", (text, server) => {
    expect(parseServer(text, isIP)).toEqual(server);
  });
  it.each(["dns.google", "dns.google:53", "1.2.3.4:0", "1.2.3.4:70000", "[::1]:x", "", "1.2.3.4:"])(
    "rejects %j",
    (text) => {
      expect(() => parseServer(text, isIP)).toThrow();
    },
  );
  it("formats back", () => {
    expect(formatServer(parseServer("[::1]:5353", isIP))).toBe("[::1]:5353");
    expect(formatServer(parseServer("1.2.3.4", isIP))).toBe("1.2.3.4:53");
  });
});

describe("DdisaCache", () => {
  const answer = (ttl: number, rcode: TxtAnswer["rcode"] = "NOERROR"): TxtAnswer => ({
    txt: rcode === "NOERROR" ? ["v=ddisa1 idp=https://a.example"] : [],
    ttl,
    rcode,
    server: "s",
  });

  it("honours the TTL, with a fake clock", () => {
    const clock = new FakeClock();
    const cache = new DdisaCache(clock);
    cache.set("example.com", answer(300), "dns");
    expect(cache.get("example.com")?.ttl).toBe(300);
    clock.advance(299_000);
    expect(cache.get("example.com")?.ttl).toBe(1);
    clock.advance(1_000);
    expect(cache.get("example.com")).toBeUndefined();
  });

  it("keys by bare domain: case and trailing dot do not matter", () => {
    const cache = new DdisaCache(new FakeClock());
    cache.set("Example.COM.", answer(300), "dns");
    expect(cache.get("example.com")?.txt).toEqual(["v=ddisa1 idp=https://a.example"]);
    expect(cache.get("sub.example.com")).toBeUndefined();
  });

  it("caches misses for at most 60 s, hits up to a day", () => {
    const clock = new FakeClock();
    const cache = new DdisaCache(clock);
    cache.set("miss.example", answer(3600, "NXDOMAIN"), "dns");
    cache.set("nodata.example", answer(3600, "NODATA"), "doh");
    cache.set("hit.example", answer(30 * 86_400), "dns");
    expect(cache.get("miss.example")?.ttl).toBe(60);
    expect(cache.get("nodata.example")?.source).toBe("doh");
    expect(cache.get("hit.example")?.ttl).toBe(86_400);
    clock.advance(60_000);
    expect(cache.get("miss.example")).toBeUndefined();
    expect(cache.get("nodata.example")).toBeUndefined();
    expect(cache.get("hit.example")).toBeDefined();
  });

  it("does not cache a TTL of 0 and replaces older entries", () => {
    const cache = new DdisaCache(new FakeClock());
    cache.set("a.example", answer(300), "dns");
    cache.set("a.example", answer(0), "dns");
    expect(cache.get("a.example")).toBeUndefined();
  });

  it("is bounded", () => {
    const cache = new DdisaCache(new FakeClock(), 2);
    cache.set("a.example", answer(300), "dns");
    cache.set("b.example", answer(300), "dns");
    cache.set("c.example", answer(300), "dns");
    expect(cache.size).toBe(2);
    expect(cache.get("a.example")).toBeUndefined();
    expect(cache.get("c.example")).toBeDefined();
  });
});

describe("resolveDdisa", () => {
  const record = "v=ddisa1 idp=https://id.example.com; priority=1";
  // A scripted transport: per server, an answer or a failure.
  function scripted(script: Record<string, TxtAnswer | DnsQueryError>) {
    const asked: string[] = [];
    const query: TxtQuery = async (qname, server) => {
      const key = formatServer(server);
      asked.push(`${key} ${qname}`);
      const r = script[key];
      if (!r) throw new DnsQueryError("timeout", key, "no answer");
      if (r instanceof DnsQueryError) throw r;
      return { ...r, server: key };
    };
    return { query, asked };
  }
  const ok = (txt: string[], ttl = 300): TxtAnswer => ({ txt, ttl, rcode: "NOERROR", server: "" });

  it("queries _ddisa.<bare domain> and selects", async () => {
    const { query, asked } = scripted({ "127.0.0.1:5300": ok([record, "v=spf1 -all"], 120) });
    const r = await resolveDdisa("Example.COM", { servers: ["127.0.0.1:5300"], query });
    expect(asked).toEqual(["127.0.0.1:5300 _ddisa.example.com"]);
    expect(r).toMatchObject({ domain: "example.com", name: "_ddisa.example.com", via: "dns", ttl: 120 });
    expect(r.selection.selected?.idp).toBe("https://id.example.com");
  });

  it("tries the next server after a failure and reports the failure", async () => {
    const { query, asked } = scripted({
      "127.0.0.1:1": new DnsQueryError("servfail", "127.0.0.1:1", "server answered SERVFAIL"),
      "127.0.0.1:2": ok([record]),
    });
    const r = await resolveDdisa("example.com", { servers: ["127.0.0.1:1", "127.0.0.1:2"], query });
    expect(asked).toHaveLength(2);
    expect(r.server).toBe("127.0.0.1:2");
    expect(r.failures).toEqual([{ server: "127.0.0.1:1", error: "server answered SERVFAIL" }]);
  });

  it("does not fall back on NXDOMAIN/NODATA: they are answers", async () => {
    let fetched = 0;
    const { query, asked } = scripted({
      "127.0.0.1:1": { txt: [], ttl: 60, rcode: "NXDOMAIN", server: "" },
      "127.0.0.1:2": ok([record]),
    });
    const r = await resolveDdisa("example.com", {
      servers: ["127.0.0.1:1", "127.0.0.1:2"],
      dohUrl: "https://doh.example/resolve",
      fetch: async () => {
        fetched++;
        throw new Error("must not be called");
      },
      query,
    });
    expect(asked).toHaveLength(1);
    expect(fetched).toBe(0);
    expect(r.rcode).toBe("NXDOMAIN");
    expect(r.selection.selected).toBeUndefined();
  });

  it("falls back to DoH when every server fails", async () => {
    const { query } = scripted({});
    const urls: string[] = [];
    const r = await resolveDdisa("example.com", {
      servers: ["127.0.0.1:1"],
      dohUrl: "https://doh.example/resolve",
      query,
      fetch: async (input, init) => {
        urls.push(String(input));
        expect(new Headers(init?.headers).get("accept")).toBe("application/dns-json");
        return Response.json({
          Status: 0,
          Answer: [{ name: "_ddisa.example.com.", type: 16, TTL: 77, data: `"${record}"` }],
        });
      },
    });
    expect(urls).toEqual(["https://doh.example/resolve?name=_ddisa.example.com&type=TXT"]);
    expect(r).toMatchObject({ via: "doh", ttl: 77, server: "https://doh.example/resolve" });
    expect(r.failures).toHaveLength(1);
    expect(r.selection.selected?.idp).toBe("https://id.example.com");
  });

  it("throws DnsUnavailableError listing every failure when DNS and DoH fail", async () => {
    const { query } = scripted({});
    const p = resolveDdisa("example.com", {
      servers: ["127.0.0.1:1", "[::1]:2"],
      dohUrl: "https://doh.example/resolve",
      query,
      fetch: async () => new Response("oops", { status: 502 }),
    });
    await expect(p).rejects.toBeInstanceOf(DnsUnavailableError);
    const e = (await p.catch((x) => x)) as DnsUnavailableError;
    expect(e.failures.map((f) => f.server)).toEqual([
      "127.0.0.1:1",
      "[::1]:2",
      "https://doh.example/resolve",
    ]);
    expect(e.message).toContain("HTTP 502");
  });

  it("answers from the cache until the TTL passes, and never caches failures", async () => {
    const clock = new FakeClock();
    const cache = new DdisaCache(clock);
    let answers = 0;
    let fail = false;
    const query: TxtQuery = async () => {
      if (fail) throw new DnsQueryError("timeout", "s", "no answer");
      answers++;
      return ok([record], 100);
    };
    const opts = { servers: ["127.0.0.1:1"], query, cache };
    expect((await resolveDdisa("example.com", opts)).via).toBe("dns");
    clock.advance(40_000);
    const cached = await resolveDdisa("EXAMPLE.com", opts);
    expect(cached).toMatchObject({ via: "cache", source: "dns", ttl: 60 });
    expect(cached.selection.selected?.idp).toBe("https://id.example.com");
    expect(answers).toBe(1);
    clock.advance(60_000);
    fail = true;
    await expect(resolveDdisa("example.com", opts)).rejects.toBeInstanceOf(DnsUnavailableError);
    expect(cache.size).toBe(0);
    fail = false;
    expect((await resolveDdisa("example.com", opts)).via).toBe("dns");
    expect(answers).toBe(2);
  });

  it("re-applies the loopback option to cached records", async () => {
    const cache = new DdisaCache(new FakeClock());
    const query: TxtQuery = async () => ok(["v=ddisa1 idp=http://127.0.0.1:4000"]);
    const base = { servers: ["127.0.0.1:1"], query, cache };
    expect((await resolveDdisa("example.com", base)).selection.selected).toBeUndefined();
    const r = await resolveDdisa("example.com", { ...base, allowLoopbackHttp: true });
    expect(r.via).toBe("cache");
    expect(r.selection.selected?.idp).toBe("http://127.0.0.1:4000");
  });

  it("rejects a server that is not an IP literal", async () => {
    await expect(resolveDdisa("example.com", { servers: ["dns.google"] })).rejects.toThrow(
      /not an IP address/,
    );
  });
});
