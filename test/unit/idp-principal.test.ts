import { describe, expect, it } from "vitest";
import { delegatedTokenProblem, type PrincipalLookups, principalFrom } from "../../idp/context.ts";
import type { StoredGrant, UserRecord } from "../../idp/store/types.ts";
import type { Grant } from "../../protocol/types.ts";

const user = (email: string, extra: Partial<UserRecord> = {}): UserRecord => ({
  email,
  kind: "human",
  approvers: [],
  admin: false,
  disabled: false,
  createdAt: 1,
  ...extra,
});
const ID = "00000000-0000-4000-8000-000000000001";
const delegation = (extra: Partial<Grant> = {}, request: Partial<Grant["request"]> = {}): Grant => ({
  id: ID,
  type: "delegation",
  status: "approved",
  created_at: 1,
  request: {
    requester: "alice@x",
    target_host: "*",
    audience: "apes-cli",
    grant_type: "always",
    delegator: "alice@x",
    delegate: "bot@x",
    ...request,
  },
  ...extra,
});
const lookups = (users: UserRecord[], grants: Grant[]): PrincipalLookups => ({
  getUser: async (e) => users.find((u) => u.email === e),
  getGrant: async (id) => {
    const grant = grants.find((g) => g.id === id);
    return grant ? ({ grant, version: 1, seq: 1 } satisfies StoredGrant) : undefined;
  },
});
const delegatedClaims = { sub: "alice@x", act: { sub: "bot@x" }, delegation_grant: ID, exp: 200 };

describe("delegatedTokenProblem (pure)", () => {
  const bot = user("bot@x", { kind: "agent" });
  it("accepts an approved, unexpired delegation of exactly these parties with an enabled delegate", () => {
    expect(delegatedTokenProblem("alice@x", "bot@x", delegation(), bot, 100)).toBeUndefined();
  });
  it("accepts a used `once` delegation: its one exchange issued the token", () => {
    const used = delegation({ status: "used" }, { grant_type: "once" });
    expect(delegatedTokenProblem("alice@x", "bot@x", used, bot, 100)).toBeUndefined();
  });
  it.each([
    ["missing", undefined, bot, /does not exist/],
    ["a command grant", delegation({ type: "command" }), bot, /does not exist/],
    ["revoked", delegation({ status: "revoked" }), bot, /is revoked/],
    ["denied", delegation({ status: "denied" }), bot, /is denied/],
    ["expired by time", delegation({ expires_at: 100 }), bot, /is expired/],
    ["another delegate", delegation({}, { delegate: "bot2@x" }), bot, /does not match/],
    ["another delegator", delegation({}, { delegator: "bob@x" }), bot, /does not match/],
    ["another audience", delegation({}, { audience: "*" }), bot, /does not match/],
    ["a disabled delegate", delegation(), user("bot@x", { disabled: true }), /acting party/],
    ["an unknown delegate", delegation(), undefined, /acting party/],
  ])("refuses %s", (_what, g, delegate, message) => {
    expect(delegatedTokenProblem("alice@x", "bot@x", g, delegate, 100)).toMatch(message);
  });
});

describe("principalFrom", () => {
  const users = [user("alice@x"), user("bot@x", { kind: "agent" })];
  it("resolves a delegated token to the delegator with the acting party", async () => {
    const p = await principalFrom(delegatedClaims, lookups(users, [delegation()]), 100);
    expect(p).toMatchObject({ sub: "alice@x", actingParty: "bot@x", actor: { delegated: true } });
  });
  it("refuses a delegated token whose delegation is revoked, or which names none", async () => {
    const revoked = lookups(users, [delegation({ status: "revoked" })]);
    await expect(principalFrom(delegatedClaims, revoked, 100)).rejects.toThrow(/revoked/);
    const { delegation_grant: _, ...noDelegation } = delegatedClaims;
    await expect(principalFrom(noDelegation, lookups(users, [delegation()]), 100)).rejects.toThrow(
      /does not exist/,
    );
  });
  it("refuses a disabled subject and an invalid act", async () => {
    const off = lookups([user("alice@x", { disabled: true })], []);
    await expect(principalFrom({ sub: "alice@x", act: "human", exp: 200 }, off, 100)).rejects.toThrow(
      /disabled/,
    );
    const on = lookups(users, []);
    await expect(principalFrom({ sub: "alice@x", act: "robot", exp: 200 }, on, 100)).rejects.toThrow(
      /act claim/,
    );
    expect(
      (await principalFrom({ sub: "alice@x", act: "human", exp: 200 }, on, 100)).actingParty,
    ).toBeUndefined();
  });
});
