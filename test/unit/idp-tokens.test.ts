import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { GrantEvents } from "../../idp/context.ts";
import { decodeJwt, signJwt, TokenError, verifyJwt } from "../../idp/tokens.ts";
import { Router } from "../../server/http.ts";
import { parseRateLimit, RateLimiter } from "../../server/rate-limit.ts";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519");
const key = { kid: "k1", privateKey };
const keyFor = (kid: string) => (kid === "k1" ? publicKey : undefined);

const reason = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(TokenError);
    return (e as TokenError).reason;
  }
  return "accepted";
};

describe("compact EdDSA JWT", () => {
  const payload = { iss: "https://id", sub: "a", aud: "apes-cli", iat: 100, exp: 200 };
  it("round-trips with a kid header", () => {
    const t = signJwt(payload, key);
    expect(decodeJwt(t).header).toEqual({ alg: "EdDSA", typ: "JWT", kid: "k1" });
    expect(verifyJwt(t, keyFor, { now: 150, issuer: "https://id", audience: "apes-cli" })).toEqual(payload);
  });
  it("refuses expired, future, wrong issuer/audience, unknown kid, wrong key, alg none, junk", () => {
    const t = signJwt(payload, key);
    expect(reason(() => verifyJwt(t, keyFor, { now: 200, leeway: 0 }))).toBe("expired");
    expect(reason(() => verifyJwt(t, keyFor, { now: 50, leeway: 0 }))).toBe("not_yet_valid");
    expect(reason(() => verifyJwt(t, keyFor, { now: 150, issuer: "https://evil" }))).toBe("issuer");
    expect(reason(() => verifyJwt(t, keyFor, { now: 150, audience: "escapes" }))).toBe("audience");
    expect(reason(() => verifyJwt(signJwt(payload, { kid: "k2", privateKey }), keyFor, { now: 150 }))).toBe(
      "unknown_kid",
    );
    expect(
      reason(() =>
        verifyJwt(signJwt(payload, { kid: "k1", privateKey: other.privateKey }), keyFor, { now: 150 }),
      ),
    ).toBe("signature");
    const [, p, s] = t.split(".");
    const none = `${Buffer.from('{"alg":"none","kid":"k1"}').toString("base64url")}.${p}.${s}`;
    expect(reason(() => verifyJwt(none, keyFor, { now: 150 }))).toBe("alg");
    for (const junk of ["", "a.b", "a.b.c.d", "!!.??.**", `${p}.${p}.${s}`]) {
      expect(reason(() => verifyJwt(junk, keyFor, { now: 150 }))).not.toBe("accepted");
    }
    const noExp = signJwt({ sub: "a" }, key);
    expect(reason(() => verifyJwt(noExp, keyFor, { now: 150 }))).toBe("claims");
  });
});

describe("rate limiter", () => {
  it("allows a burst of N, then asks to retry, and refills over time", () => {
    const rl = new RateLimiter(3, 60);
    expect([rl.take("a", 0), rl.take("a", 0), rl.take("a", 0)]).toEqual([0, 0, 0]);
    expect(rl.take("a", 0)).toBe(20);
    expect(rl.take("b", 0)).toBe(0);
    expect(rl.take("a", 20_000)).toBe(0);
  });
  it("parses N/PERIOD", () => {
    expect(parseRateLimit("600/1m")).toEqual({ limit: 600, windowSec: 60 });
    expect(parseRateLimit("20/s")).toEqual({ limit: 20, windowSec: 1 });
    expect(parseRateLimit("off")).toBeNull();
    for (const bad of ["", "lots", "5/0s", "0/1m", "5/1y"]) expect(() => parseRateLimit(bad)).toThrow();
  });
});

describe("grant events", () => {
  it("wakes every waiter of one grant and only them", async () => {
    const ev = new GrantEvents();
    const ac = new AbortController();
    let woke = 0;
    const a = ev.wait("g1", ac.signal).then(() => woke++);
    const b = ev.wait("g1", ac.signal).then(() => woke++);
    const other = new AbortController();
    const c = ev.wait("g2", other.signal).then(() => woke++);
    expect(ev.listeners("g1")).toBe(2);
    ev.changed("g1");
    await Promise.all([a, b]);
    expect(woke).toBe(2);
    expect(ev.listeners("g1")).toBe(0);
    other.abort();
    await c;
    expect(ev.listeners("g2")).toBe(0);
  });
});

describe("router", () => {
  it("matches params, reports allowed methods, treats HEAD as GET", () => {
    const r = new Router<unknown>();
    const h = () => ({ status: 200 });
    r.add("GET", "/api/grants/:id", true, h);
    r.add("POST", "/api/grants/:id/approve", true, h);
    expect(r.match("GET", "/api/grants/abc")).toMatchObject({ params: { id: "abc" } });
    expect(r.match("HEAD", "/api/grants/abc")).toMatchObject({ params: { id: "abc" } });
    expect(r.match("DELETE", "/api/grants/abc")).toEqual({ allowed: ["GET"] });
    expect(r.match("GET", "/api/other")).toBeUndefined();
  });
});
