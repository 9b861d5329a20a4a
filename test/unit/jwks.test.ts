import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { type GetJson, JwksCache, JwksError, memoryKeyStore } from "../../protocol/jwks.ts";

const ISS = "https://id.example.com";
const k1 = generateKeyPairSync("ed25519").publicKey.export({ format: "jwk" });
const k2 = generateKeyPairSync("ed25519").publicKey.export({ format: "jwk" });
const jwk = (k: object, kid: string) => ({ ...k, kid, alg: "EdDSA", use: "sig" });

/** A fake IdP behind the injected GET: counts fetches; its documents can be changed per test. */
function idp(over: { discovery?: Record<string, unknown>; keys?: object[] } = {}) {
  const state = {
    fetches: 0,
    discovery: {
      issuer: ISS,
      jwks_uri: `${ISS}/.well-known/jwks.json`,
      openape_grants_endpoint: `${ISS}/api/grants`,
      ...over.discovery,
    },
    keys: over.keys ?? [jwk(k1, "a")],
  };
  const getJson: GetJson = async (url) => {
    state.fetches++;
    if (url === `${ISS}/.well-known/openid-configuration`) return { status: 200, body: state.discovery };
    if (url === state.discovery.jwks_uri) return { status: 200, body: { keys: state.keys } };
    return { status: 404, body: {} };
  };
  return { state, getJson };
}

describe("protocol/jwks: an issuer's keys, cached", () => {
  it("finds a key, reuses it for the TTL, then refetches", async () => {
    const f = idp();
    const cache = new JwksCache({ getJson: f.getJson, endpoints: ["openape_grants_endpoint"] });
    const first = await cache.lookup(`${ISS}/`, "a", 1000);
    expect(first.key?.asymmetricKeyType).toBe("ed25519");
    expect(first.meta.endpoints.openape_grants_endpoint).toBe(`${ISS}/api/grants`);
    expect(f.state.fetches).toBe(2);
    await cache.lookup(ISS, "a", 1299);
    expect(f.state.fetches).toBe(2);
    await cache.lookup(ISS, "a", 1300);
    expect(f.state.fetches).toBe(4);
  });

  it("refetches at once for an unknown kid (rotation), then at most every refetchMinS", async () => {
    const f = idp();
    const cache = new JwksCache({ getJson: f.getJson });
    await cache.lookup(ISS, "a", 1000);
    f.state.keys = [jwk(k1, "a"), jwk(k2, "b")];
    expect((await cache.lookup(ISS, "b", 1001)).key).toBeDefined();
    expect(f.state.fetches).toBe(4);
    // That refetch was for an unknown kid: made-up kids get no more fetches for refetchMinS (10 s).
    for (let t = 1002; t < 1011; t++) expect((await cache.lookup(ISS, `x${t}`, t)).key).toBeUndefined();
    expect(f.state.fetches).toBe(4);
    expect((await cache.lookup(ISS, "made-up", 1011)).key).toBeUndefined();
    expect(f.state.fetches).toBe(6);
  });

  it("never uses keys fetched under another trust anchor", async () => {
    const store = memoryKeyStore();
    const weak = idp({ keys: [jwk(k2, "a")] });
    await new JwksCache({ getJson: weak.getJson, store, anchor: "ca:weak" }).lookup(ISS, "a", 1000);
    const strong = idp();
    const r = await new JwksCache({ getJson: strong.getJson, store, anchor: "ca:pinned" }).lookup(
      ISS,
      "a",
      1001,
    );
    expect(strong.state.fetches).toBe(2);
    expect(r.key?.export({ format: "jwk" }).x).toBe(k1.x);
  });

  it("keeps discovery on the issuer's origin and names the issuer it was fetched from", async () => {
    const elsewhere = idp({ discovery: { jwks_uri: "https://evil.example/jwks.json" } });
    await expect(new JwksCache({ getJson: elsewhere.getJson }).lookup(ISS, "a", 1)).rejects.toThrow(
      JwksError,
    );
    const grantsElsewhere = idp({
      discovery: { openape_grants_endpoint: "https://evil.example/api/grants" },
    });
    await expect(
      new JwksCache({ getJson: grantsElsewhere.getJson, endpoints: ["openape_grants_endpoint"] }).lookup(
        ISS,
        "a",
        1,
      ),
    ).rejects.toThrow(/origin/);
    const otherIssuer = idp({ discovery: { issuer: "https://other.example.com" } });
    await expect(new JwksCache({ getJson: otherIssuer.getJson }).lookup(ISS, "a", 1)).rejects.toThrow(
      /issuer/,
    );
  });

  it("takes only Ed25519 keys", async () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey.export({ format: "jwk" });
    const f = idp({
      keys: [
        { ...rsa, kid: "a" },
        { kty: "OKP", crv: "Ed25519", x: "short", kid: "b" },
      ],
    });
    const cache = new JwksCache({ getJson: f.getJson });
    expect((await cache.lookup(ISS, "a", 1)).key).toBeUndefined();
    expect((await cache.lookup(ISS, "b", 2)).key).toBeUndefined();
  });
});
