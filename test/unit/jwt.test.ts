import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  CLOCK_SKEW_S,
  checkClaims,
  decodeJwt,
  JwtError,
  MAX_JWT_LENGTH,
  publicKeyFromJwk,
  signJwt,
  verifyJwt,
} from "../../protocol/jwt.ts";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 });
const key = { kid: "k1", privateKey };
const keyFor = (kid: string) => (kid === "k1" ? publicKey : undefined);
const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

const reason = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(JwtError);
    return (e as JwtError).reason;
  }
  return "accepted";
};

describe("protocol/jwt: the one JWT core", () => {
  const payload = { iss: "https://id.example", sub: "a@example.com", aud: "escapes", iat: 1000, exp: 1300 };

  it("pins alg EdDSA, needs a kid and an Ed25519 key, a 64-byte signature", () => {
    const t = signJwt(payload, key);
    const [, p, s] = t.split(".");
    const now = { now: 1100 };
    expect(reason(() => verifyJwt(t, keyFor, now))).toBe("accepted");
    expect(reason(() => verifyJwt(`${b64({ alg: "none", kid: "k1" })}.${p}.${s}`, keyFor, now))).toBe("alg");
    expect(reason(() => verifyJwt(`${b64({ alg: "HS256", kid: "k1" })}.${p}.${s}`, keyFor, now))).toBe("alg");
    expect(reason(() => verifyJwt(`${b64({ alg: "EdDSA" })}.${p}.${s}`, keyFor, now))).toBe("unknown_kid");
    expect(reason(() => verifyJwt(`${b64({ alg: "EdDSA", kid: "" })}.${p}.${s}`, keyFor, now))).toBe(
      "unknown_kid",
    );
    expect(reason(() => verifyJwt(t, () => rsa.publicKey, now))).toBe("alg");
    expect(
      reason(() => verifyJwt(`${t.split(".").slice(0, 2).join(".")}.${s!.slice(0, -4)}`, keyFor, now)),
    ).toBe("signature");
    const other = generateKeyPairSync("ed25519");
    expect(reason(() => verifyJwt(t, () => other.publicKey, now))).toBe("signature");
  });

  it("parses strictly and bounds the size", () => {
    expect(reason(() => decodeJwt("a.b"))).toBe("malformed");
    expect(reason(() => decodeJwt("a.b.c.d"))).toBe("malformed");
    expect(reason(() => decodeJwt(`${b64([1])}.${b64({})}.AA`))).toBe("malformed");
    expect(reason(() => decodeJwt(`${b64({})}.${b64("x")}.AA`))).toBe("malformed");
    expect(reason(() => decodeJwt(`${b64({})}.${b64({})}.A+A`))).toBe("malformed");
    expect(reason(() => decodeJwt("a".repeat(MAX_JWT_LENGTH + 1)))).toBe("malformed");
  });

  it("checks times with one leeway, and none for a party's own tokens", () => {
    expect(CLOCK_SKEW_S).toBe(60);
    const at = (now: number, leeway?: number) => reason(() => checkClaims(payload, { now, leeway }));
    expect(at(1300 + CLOCK_SKEW_S - 1)).toBe("accepted");
    expect(at(1300 + CLOCK_SKEW_S)).toBe("expired");
    expect(at(1300, 0)).toBe("expired");
    expect(at(1000 - CLOCK_SKEW_S)).toBe("accepted");
    expect(at(1000 - CLOCK_SKEW_S - 1)).toBe("not_yet_valid");
    expect(reason(() => checkClaims({ ...payload, nbf: "0" }, { now: 1100 }))).toBe("not_yet_valid");
    expect(reason(() => checkClaims({ ...payload, exp: undefined }, { now: 1100 }))).toBe("claims");
    expect(reason(() => checkClaims({ ...payload, exp: Number.POSITIVE_INFINITY }, { now: 1 }))).toBe(
      "claims",
    );
  });

  it("checks issuer and audience (a string or an array)", () => {
    const c = (p: Record<string, unknown>, o: object) => reason(() => checkClaims(p, { now: 1100, ...o }));
    expect(c(payload, { issuer: "https://id.example", audience: "escapes" })).toBe("accepted");
    expect(c(payload, { issuer: "https://evil.example" })).toBe("issuer");
    expect(c(payload, { audience: ["apes-cli"] })).toBe("audience");
    expect(c({ ...payload, aud: ["x", "escapes"] }, { audience: "escapes" })).toBe("accepted");
    expect(c({ ...payload, aud: [1] }, { audience: "1" })).toBe("audience");
  });

  it("takes only Ed25519 JWKs", () => {
    const jwk = publicKey.export({ format: "jwk" });
    expect(publicKeyFromJwk({ ...jwk, kid: "k", alg: "EdDSA", use: "sig" })?.asymmetricKeyType).toBe(
      "ed25519",
    );
    expect(publicKeyFromJwk({ ...jwk, alg: "RS256" })).toBeUndefined();
    expect(publicKeyFromJwk({ ...jwk, crv: "X25519" })).toBeUndefined();
    expect(publicKeyFromJwk({ ...jwk, x: "short" })).toBeUndefined();
    expect(publicKeyFromJwk(rsa.publicKey.export({ format: "jwk" }))).toBeUndefined();
    expect(publicKeyFromJwk(null)).toBeUndefined();
  });
});
