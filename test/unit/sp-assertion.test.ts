import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { describe, expect, it } from "vitest";
import { signJwt } from "../../protocol/jwt.ts";
import { type AssertionExpect, assertionKid, checkAssertion } from "../../sp/assertion.ts";

// Every check of the SP's assertion verification (sp/assertion.ts), each with a token that breaks
// only that one rule, so each test fails if its check is removed.

const NOW = 1_800_000_000;
const ISS = "https://id.example.com";
const key = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519");
const expect0: AssertionExpect = {
  issuer: ISS,
  clientId: "hello",
  nonce: "n-123",
  domain: "example.com",
  now: NOW,
};

function claims(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: ISS,
    sub: "alice@example.com",
    aud: "hello",
    iat: NOW - 10,
    exp: NOW + 290,
    nonce: "n-123",
    jti: "j1",
    act: "human",
    ...over,
  };
}

const sign = (c: Record<string, unknown>, k: KeyObject = key.privateKey, kid = "k1") =>
  signJwt(c, { kid, privateKey: k });
/** `k` null: the IdP's JWKS has no key for the token's kid. */
const check = (token: unknown, k: KeyObject | null = key.publicKey, e: Partial<AssertionExpect> = {}) =>
  checkAssertion(token, k ?? undefined, { ...expect0, ...e });
const reason = (r: ReturnType<typeof check>) => (r.ok ? "ok" : r.reason);

describe("the SP's assertion checks", () => {
  it("accepts a good assertion: sub and act", () => {
    const r = check(sign(claims()));
    expect(r).toMatchObject({ ok: true, sub: "alice@example.com", act: "human" });
    expect(assertionKid(sign(claims()))).toBe("k1");
  });

  it("act agent is an equal (default), and refused when the SP signs in humans only", () => {
    const t = sign(claims({ act: "agent" }));
    expect(check(t)).toMatchObject({ ok: true, act: "agent" });
    expect(reason(check(t, key.publicKey, { acts: ["human"] }))).toBe("act_unknown");
  });

  it("wrong iss", () => expect(reason(check(sign(claims({ iss: "https://evil.example" }))))).toBe("issuer"));
  it("iss of the record, not a look-alike with a path", () =>
    expect(reason(check(sign(claims({ iss: `${ISS}/x` }))))).toBe("issuer"));
  it("wrong aud", () => expect(reason(check(sign(claims({ aud: "other-sp" }))))).toBe("audience"));
  it("aud with another party besides this SP", () =>
    expect(reason(check(sign(claims({ aud: ["hello", "other-sp"] }))))).toBe("audience"));
  it("wrong nonce", () => expect(reason(check(sign(claims({ nonce: "n-999" }))))).toBe("nonce"));
  it("no nonce", () => expect(reason(check(sign(claims({ nonce: undefined }))))).toBe("nonce"));
  it("expired (beyond the leeway)", () =>
    expect(reason(check(sign(claims({ iat: NOW - 400, exp: NOW - 61 }))))).toBe("expired"));
  it("issued in the future", () =>
    expect(reason(check(sign(claims({ iat: NOW + 120, exp: NOW + 300 }))))).toBe("not_yet_valid"));
  it("lives longer than 300 s", () =>
    expect(reason(check(sign(claims({ iat: NOW, exp: NOW + 301 }))))).toBe("lifetime"));
  it("no exp", () => expect(reason(check(sign(claims({ exp: undefined }))))).toBe("malformed"));
  it("act missing", () => expect(reason(check(sign(claims({ act: undefined }))))).toBe("act_missing"));
  it("act unknown (a string, an object)", () => {
    expect(reason(check(sign(claims({ act: "root" }))))).toBe("act_unknown");
    expect(reason(check(sign(claims({ act: { sub: "bot@example.com" } }))))).toBe("act_unknown");
  });
  it("sub of another domain than the one whose record named this IdP", () =>
    expect(reason(check(sign(claims({ sub: "mallory@evil.example" }))))).toBe("domain"));
  it("sub not an identity", () => expect(reason(check(sign(claims({ sub: "not an email" }))))).toBe("sub"));

  it("alg other than EdDSA (none, HS256) is refused before any key is used", () => {
    const [, p] = sign(claims()).split(".");
    for (const alg of ["none", "HS256", "RS256"]) {
      const h = Buffer.from(JSON.stringify({ alg, typ: "JWT", kid: "k1" })).toString("base64url");
      expect(reason(check(`${h}.${p}.${Buffer.alloc(64).toString("base64url")}`))).toBe("alg");
    }
  });

  it("kid unknown (the JWKS has no such key) or missing", () => {
    expect(reason(check(sign(claims()), null))).toBe("unknown_kid");
    const t = signJwt(claims(), { privateKey: key.privateKey });
    expect(assertionKid(t)).toBeUndefined();
    expect(reason(check(t))).toBe("unknown_kid");
  });

  it("signed by another key", () =>
    expect(reason(check(sign(claims(), other.privateKey)))).toBe("signature"));

  it("tampered: a payload changed after signing", () => {
    const [h, , s] = sign(claims()).split(".");
    const p = Buffer.from(JSON.stringify(claims({ sub: "root@example.com" }))).toString("base64url");
    expect(reason(check(`${h}.${p}.${s}`))).toBe("signature");
  });

  it("not a JWT at all", () => {
    expect(reason(check(undefined))).toBe("malformed");
    expect(reason(check("a.b"))).toBe("malformed");
    expect(reason(check("x".repeat(20_000)))).toBe("malformed");
  });
});
