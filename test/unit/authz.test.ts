import { describe, expect, it } from "vitest";
import { checkAuthzShape, checkConsumeAnswer, checkIssuerAllowed } from "../../protocol/authz.ts";

// The AuthZ-JWT checks every verifier shares (the elevation verifier and the target side).

const claims = {
  sub: "agent@example.com",
  jti: "j",
  grant_id: "g",
  iat: 1,
  exp: 2,
  grant_type: "once",
};

describe("checkAuthzShape: act", () => {
  it("accepts act agent or human, and no act from an older IdP", () => {
    expect(checkAuthzShape({ ...claims, act: "agent" })).toBeUndefined();
    expect(checkAuthzShape({ ...claims, act: "human" })).toBeUndefined();
    expect(checkAuthzShape(claims)).toBeUndefined();
  });
  it("refuses a delegated token's actor object or any other act", () => {
    for (const act of [{ sub: "bot@example.com" }, "root", "", null, ["agent"]])
      expect(checkAuthzShape({ ...claims, act })?.reason, JSON.stringify(act)).toBe("token_malformed");
  });
});

describe("checkIssuerAllowed", () => {
  it("normalises a trailing slash and refuses everything else by name", () => {
    expect(checkIssuerAllowed("https://id.example.com/", ["https://id.example.com"])).toEqual({
      issuer: "https://id.example.com",
    });
    expect(checkIssuerAllowed("https://id.example.com.evil", ["https://id.example.com"])).toMatchObject({
      reason: "issuer_not_allowed",
    });
    expect(checkIssuerAllowed(undefined, ["https://id.example.com"])).toMatchObject({
      reason: "token_malformed",
    });
  });
});

describe("checkConsumeAnswer", () => {
  it("lets through consumed for once and valid for timed/always only", () => {
    expect(checkConsumeAnswer(200, { status: "consumed" }, "once")).toBeUndefined();
    expect(checkConsumeAnswer(200, { status: "valid" }, "always")).toBeUndefined();
    expect(checkConsumeAnswer(200, { status: "valid" }, "once")?.reason).toBe("grant_not_usable");
    expect(checkConsumeAnswer(200, { status: "consumed", error: "x" }, "once")?.reason).toBe(
      "grant_not_usable",
    );
    const replay = checkConsumeAnswer(409, { error: "already_consumed", status: "used" }, "once");
    expect(replay).toMatchObject({ reason: "grant_not_usable" });
    expect(replay?.detail).toContain("already_consumed");
    expect(checkConsumeAnswer(401, undefined, "once")?.reason).toBe("grant_not_usable");
  });
});
