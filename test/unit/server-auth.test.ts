import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { JwtError, signJwt } from "../../protocol/jwt.ts";
import { ProblemError } from "../../protocol/problem.ts";
import { BearerVerifier, bearerToken } from "../../server/bearer.ts";
import type { Call } from "../../server/http.ts";
import { RateLimits } from "../../server/rate-limit.ts";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519");

function verifier(now: { t: number }, lookups: string[]) {
  return new BearerVerifier({
    keyFor: (kid) => {
      lookups.push(kid);
      return kid === "k1" ? publicKey : undefined;
    },
    now: () => now.t,
    claims: { issuer: "https://idp.test", audience: "apes-cli", leeway: 0 },
    accept(claims) {
      if (typeof claims.sub !== "string") throw new JwtError("claims", "no sub");
    },
  });
}

const reason = async (f: () => unknown) => {
  try {
    await f();
  } catch (e) {
    expect(e).toBeInstanceOf(JwtError);
    return (e as JwtError).reason;
  }
  return "accepted";
};

describe("BearerVerifier", () => {
  const claims = { iss: "https://idp.test", aud: "apes-cli", sub: "a@x", exp: 1100 };

  it("verifies through the injected key lookup once, then answers from its cache until exp", async () => {
    const now = { t: 1000 };
    const lookups: string[] = [];
    const v = verifier(now, lookups);
    const token = signJwt(claims, { kid: "k1", privateKey });
    expect(v.verified(token)).toBe(false);
    expect((await v.claims(token)).sub).toBe("a@x");
    expect(v.verified(token)).toBe(true);
    await v.claims(token);
    expect(lookups).toEqual(["k1"]);
    now.t = 1100;
    expect(v.verified(token)).toBe(false);
    expect(await reason(() => v.claims(token))).toBe("expired");
  });

  it("refuses unknown keys, wrong signatures, issuers and audiences, and what accept refuses", async () => {
    const v = verifier({ t: 1000 }, []);
    expect(await reason(() => v.claims(signJwt(claims, { kid: "k2", privateKey })))).toBe("unknown_kid");
    expect(await reason(() => v.claims(signJwt(claims, { kid: "k1", privateKey: other.privateKey })))).toBe(
      "signature",
    );
    expect(
      await reason(() => v.claims(signJwt({ ...claims, iss: "https://evil" }, { kid: "k1", privateKey }))),
    ).toBe("issuer");
    expect(
      await reason(() => v.claims(signJwt({ ...claims, aud: "other" }, { kid: "k1", privateKey }))),
    ).toBe("audience");
    const noSub = signJwt({ ...claims, sub: undefined }, { kid: "k1", privateKey });
    expect(await reason(() => v.claims(noSub))).toBe("claims");
    expect(v.verified(noSub)).toBe(false);
  });

  it("extracts only a well-formed bearer token", () => {
    const call = (authorization?: string) =>
      ({ req: { headers: authorization === undefined ? {} : { authorization } } }) as unknown as Call;
    expect(bearerToken(call("Bearer abc.def.ghi"))).toBe("abc.def.ghi");
    expect(() => bearerToken(call())).toThrow(/Authorization: Bearer/);
    for (const bad of ["Basic abc", "Bearer a b", "Bearer ", "Bearer\tabc"]) {
      expect(() => bearerToken(call(bad)), bad).toThrow(ProblemError);
    }
  });
});

describe("RateLimits", () => {
  it("keeps one bucket table per class, answers 429 with retry_after, and skips classes that are off", () => {
    const limits = new RateLimits({ login: "2/1m", api: "off" });
    limits.take("login", "ip:a");
    limits.take("login", "ip:a");
    let refused: unknown;
    try {
      limits.take("login", "ip:a");
    } catch (e) {
      refused = e;
    }
    expect(refused).toBeInstanceOf(ProblemError);
    expect((refused as ProblemError).status).toBe(429);
    expect((refused as ProblemError).extensions.retry_after).toBeGreaterThan(0);
    limits.take("login", "ip:b");
    for (let i = 0; i < 100; i++) limits.take("api", "ip:a");
  });

  it("refuses a malformed spec when built", () => {
    expect(() => new RateLimits({ api: "lots" })).toThrow(/invalid rate limit/);
  });
});
