import { describe, expect, it } from "vitest";
import { nodeFetch } from "../../client/http.ts";
import { checkDohUrl, DOH_MAX_BODY, parseDohJson, parseTxtData, queryDoh } from "../../protocol/doh.ts";
import { DnsQueryError } from "../../protocol/resolver.ts";
import { type HostileMode, startHostileServer } from "../helpers/hostile-http.ts";

const NAME = "_ddisa.example.com";

describe("parseTxtData", () => {
  it.each([
    ['"v=ddisa1 idp=https://a.example"', "v=ddisa1 idp=https://a.example"],
    ['"v=ddisa1 idp=https://" "a.example; priority=1"', "v=ddisa1 idp=https://a.example; priority=1"],
    ['"part"   "two"', "parttwo"],
    ['"say \\"hi\\""', 'say "hi"'],
    ['"back\\\\slash"', "back\\slash"],
    ['"caf\\195\\169"', "café"],
    ['"snow ☃"', "snow ☃"],
    ['""', ""],
    ["v=ddisa1 idp=https://unquoted.example", "v=ddisa1 idp=https://unquoted.example"],
  ])("%s -> %j", (data, text) => {
    expect(parseTxtData(data)).toBe(text);
  });

  it.each(['"unterminated', '"a" b', '"a\\', '"\\999"'])("rejects %j", (data) => {
    expect(() => parseTxtData(data)).toThrow(/malformed TXT data/);
  });
});

describe("parseDohJson", () => {
  it("keeps type 16 answers of the name, strips quotes, takes the smallest TTL", () => {
    const a = parseDohJson(
      {
        Status: 0,
        Answer: [
          { name: "_ddisa.example.com.", type: 16, TTL: 250, data: '"v=ddisa1 idp=https://a.example"' },
          { name: "_ddisa.example.com.", type: 16, TTL: 100, data: '"v=spf1" " -all"' },
          { name: "_ddisa.example.com.", type: 1, TTL: 5, data: "192.0.2.1" },
          { name: "_ddisa.other.example.", type: 16, TTL: 5, data: '"v=ddisa1 idp=https://evil.example"' },
        ],
      },
      NAME,
      "doh",
    );
    expect(a).toEqual({
      txt: ["v=ddisa1 idp=https://a.example", "v=spf1 -all"],
      ttl: 100,
      rcode: "NOERROR",
      server: "doh",
    });
  });

  it("follows a CNAME", () => {
    const a = parseDohJson(
      {
        Status: 0,
        Answer: [
          { name: "_ddisa.example.com.", type: 5, TTL: 300, data: "ddisa.hoster.example." },
          { name: "ddisa.hoster.example.", type: 16, TTL: 300, data: '"v=ddisa1 idp=https://h.example"' },
        ],
      },
      NAME,
      "doh",
    );
    expect(a.txt).toEqual(["v=ddisa1 idp=https://h.example"]);
  });

  it("uses 300 s when an answer has no TTL", () => {
    const a = parseDohJson({ Status: 0, Answer: [{ name: NAME, type: 16, data: '"x"' }] }, NAME, "doh");
    expect(a.ttl).toBe(300);
  });

  it("NXDOMAIN and NODATA are answers with a short TTL", () => {
    expect(parseDohJson({ Status: 3 }, NAME, "d")).toEqual({
      txt: [],
      ttl: 60,
      rcode: "NXDOMAIN",
      server: "d",
    });
    const soa = { name: "example.com.", type: 6, TTL: 20, data: "ns. admin. 1 2 3 4 5" };
    expect(parseDohJson({ Status: 0, Authority: [soa] }, NAME, "d")).toMatchObject({
      rcode: "NODATA",
      ttl: 20,
    });
    expect(parseDohJson({ Status: 0, Answer: [] }, NAME, "d").rcode).toBe("NODATA");
  });

  it("a server failure status is a failure", () => {
    expect(() => parseDohJson({ Status: 2 }, NAME, "d")).toThrow(/Status 2/);
    expect(() => parseDohJson({ Status: 5 }, NAME, "d")).toThrow(DnsQueryError);
  });

  it.each([
    [null, "not a JSON object"],
    [[], "not a JSON object"],
    [{}, "no numeric Status"],
    [{ Status: "0" }, "no numeric Status"],
    [{ Status: 0, Answer: {} }, "Answer is not an array"],
    [{ Status: 0, Answer: [null] }, "not an object"],
    [{ Status: 0, Answer: [{ name: NAME, type: 16 }] }, "lacks name/type/data"],
    [{ Status: 0, Answer: [{ name: NAME, type: 16, data: '"open' }] }, "unterminated"],
  ])("rejects malformed body %j", (body, why) => {
    expect(() => parseDohJson(body, NAME, "d")).toThrow(why);
  });
});

describe("queryDoh", () => {
  const fetchJson =
    (body: string, status = 200): typeof fetch =>
    async () =>
      new Response(body, { status, headers: { "content-type": "application/dns-json" } });

  it("builds the GET request and parses the answer", async () => {
    let seen: string | undefined;
    const a = await queryDoh("https://doh.example/dns-query?ct=1", NAME, {
      timeoutMs: 1000,
      fetch: async (input, init) => {
        seen = String(input);
        expect(new Headers(init?.headers).get("accept")).toBe("application/dns-json");
        return new Response(
          JSON.stringify({ Status: 0, Answer: [{ name: NAME, type: 16, TTL: 9, data: '"x"' }] }),
        );
      },
    });
    expect(seen).toBe("https://doh.example/dns-query?ct=1&name=_ddisa.example.com&type=TXT");
    expect(a).toMatchObject({ txt: ["x"], ttl: 9, server: "https://doh.example/dns-query?ct=1" });
  });

  it("malformed JSON, HTTP errors and fetch errors are failures", async () => {
    const opts = (f: typeof fetch) => ({ timeoutMs: 1000, fetch: f });
    await expect(queryDoh("https://d.example", NAME, opts(fetchJson("{not json")))).rejects.toThrow(
      /not JSON/,
    );
    await expect(queryDoh("https://d.example", NAME, opts(fetchJson("{}", 500)))).rejects.toThrow(/HTTP 500/);
    await expect(
      queryDoh(
        "https://d.example",
        NAME,
        opts(async () => {
          throw new TypeError("fetch failed");
        }),
      ),
    ).rejects.toThrow(/DoH request failed: fetch failed/);
  });

  // Both transports apes hands to queryDoh: the runtime's fetch and the CLI's node:http client.
  const transports: [string, typeof fetch][] = [
    ["fetch", fetch],
    ["the CLI's nodeFetch", ((input, init) => nodeFetch(input as string, init)) as typeof fetch],
  ];

  describe.each(transports)("against a real server, through %s", (_name, transport) => {
    it("reads a good answer", async () => {
      const server = await startHostileServer((_req, res) => {
        res.writeHead(200, { "content-type": "application/dns-json" });
        res.end(JSON.stringify({ Status: 0, Answer: [{ name: NAME, type: 16, TTL: 9, data: '"x"' }] }));
      });
      try {
        expect((await queryDoh(server.url, NAME, { fetch: transport, timeoutMs: 5000 })).txt).toEqual(["x"]);
      } finally {
        await server.close();
      }
    });

    const query = async (mode: HostileMode, timeoutMs: number) => {
      const server = await startHostileServer(mode);
      try {
        const error = await queryDoh(server.url, NAME, { fetch: transport, timeoutMs }).catch(
          (e: unknown) => e,
        );
        await server.settled();
        return { error: error as DnsQueryError, sent: server.bytesSent() };
      } finally {
        await server.close();
      }
    };

    it("an endless body is refused as soon as it passes the cap, not buffered until the deadline", async () => {
      const { error, sent } = await query("endless", 20_000);
      expect(error).toBeInstanceOf(DnsQueryError);
      expect(error.kind).toBe("malformed");
      expect(error.message).toMatch(/DoH answer refused: the answer is larger than 256 KiB/);
      // The cap plus what the loopback socket buffers held: nowhere near 20 s of streaming.
      expect(sent).toBeLessThan(DOH_MAX_BODY + 64 * 1024 * 1024);
    });

    it("a Content-Length above the cap is refused before reading", async () => {
      const { error } = await query("huge-length", 20_000);
      expect(error.message).toMatch(/larger than 256 KiB/);
    });

    it("a body trickling in under the cap ends at the total deadline", async () => {
      const { error } = await query("trickle", 500);
      expect(error.kind).toBe("timeout");
      expect(error.message).toMatch(/no DoH answer within 500 ms/);
    });
  });

  it("accepts https, and plain http only on loopback", () => {
    expect(checkDohUrl("https://dns.example/resolve").host).toBe("dns.example");
    expect(checkDohUrl("http://127.0.0.1:8053/resolve").port).toBe("8053");
    expect(checkDohUrl("http://[::1]/resolve").hostname).toBe("[::1]");
    expect(() => checkDohUrl("http://dns.example/resolve")).toThrow(/must use https/);
    expect(() => checkDohUrl("file:///etc/passwd")).toThrow(/must use https/);
    expect(() => checkDohUrl("not a url")).toThrow(/not a URL/);
  });
});
