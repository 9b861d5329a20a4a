import { describe, expect, it } from "vitest";
import {
  type Actor,
  agentEmail,
  allowedFrom,
  authzClaims,
  authzExp,
  canDecide,
  canRevoke,
  canView,
  consumeResultFor,
  effectiveStatus,
  matchKey,
  parseApproveOverrides,
  parseDuration,
  parseGrantRequest,
} from "../../idp/grants.ts";
import type { UserRecord } from "../../idp/store/types.ts";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { ProblemError } from "../../protocol/problem.ts";
import { loadSchemas } from "../../protocol/schemas.ts";
import type { Grant } from "../../protocol/types.ts";

const schemas = loadSchemas();

const user = (email: string, extra: Partial<UserRecord> = {}): UserRecord => ({
  email,
  kind: "human",
  approvers: [],
  admin: false,
  disabled: false,
  createdAt: 0,
  ...extra,
});
const actor = (sub: string, extra: Partial<Actor> = {}): Actor => ({
  sub,
  kind: "human",
  admin: false,
  delegated: false,
  ...extra,
});

const bot = user("bot@x", { kind: "agent", owner: "alice@x", approvers: ["bob@x"] });
const dave = user("dave@x", { approvers: ["carol@x"] });

const grant = (extra: Partial<Grant> = {}, request: Partial<Grant["request"]> = {}): Grant => ({
  id: "6f1c1f8e-4c1a-4f7e-9d8e-0a6a8b7c9d0e",
  type: "command",
  request: {
    requester: "bot@x",
    target_host: "h",
    audience: "escapes",
    grant_type: "once",
    command: ["ls"],
    ...request,
  },
  status: "approved",
  created_at: 1000,
  ...extra,
});

describe("canDecide", () => {
  it("lets an agent's owner and approvers decide", () => {
    expect(canDecide(actor("alice@x"), bot).ok).toBe(true);
    expect(canDecide(actor("bob@x"), bot).ok).toBe(true);
  });
  it("never lets an agent decide, least of all its own grant", () => {
    expect(canDecide(actor("bot@x", { kind: "agent" }), bot)).toMatchObject({ ok: false });
    expect(canDecide(actor("other@x", { kind: "agent" }), bot)).toMatchObject({ ok: false });
    // even an agent record claiming to be human through its token's act cannot: kind comes from the db
    expect(canDecide(actor("bot@x"), bot)).toMatchObject({ ok: false, reason: expect.stringMatching(/own/) });
  });
  it("refuses strangers, admins of others' agents and delegated tokens", () => {
    expect(canDecide(actor("carol@x"), bot).ok).toBe(false);
    expect(canDecide(actor("root@x", { admin: true }), bot).ok).toBe(false);
    expect(canDecide(actor("alice@x", { delegated: true }), bot).ok).toBe(false);
    expect(canDecide(actor("alice@x"), undefined).ok).toBe(false);
  });
  it("lets a human, its approvers and admins decide the human's grants", () => {
    expect(canDecide(actor("dave@x"), dave).ok).toBe(true);
    expect(canDecide(actor("carol@x"), dave).ok).toBe(true);
    expect(canDecide(actor("root@x", { admin: true }), dave).ok).toBe(true);
    expect(canDecide(actor("alice@x"), dave).ok).toBe(false);
  });
});

describe("canView / canRevoke", () => {
  it("shows grants to the requester, owner, approvers and admins only", () => {
    const g = grant();
    expect(canView(actor("bot@x", { kind: "agent" }), g, bot)).toBe(true);
    expect(canView(actor("alice@x"), g, bot)).toBe(true);
    expect(canView(actor("bob@x"), g, bot)).toBe(true);
    expect(canView(actor("root@x", { admin: true }), g, bot)).toBe(true);
    expect(canView(actor("carol@x"), g, bot)).toBe(false);
    expect(canView(actor("other@x", { kind: "agent" }), g, bot)).toBe(false);
  });
  it("shows delegations to both parties", () => {
    const d = grant(
      { type: "delegation" },
      { requester: "alice@x", delegator: "alice@x", delegate: "bot@x" },
    );
    expect(canView(actor("bot@x", { kind: "agent" }), d, user("alice@x"))).toBe(true);
    expect(canView(actor("carol@x"), d, user("alice@x"))).toBe(false);
  });
  it("lets the requester revoke its own grant and deciders revoke", () => {
    const g = grant();
    expect(canRevoke(actor("bot@x", { kind: "agent" }), g, bot).ok).toBe(true);
    expect(canRevoke(actor("alice@x"), g, bot).ok).toBe(true);
    expect(canRevoke(actor("carol@x"), g, bot).ok).toBe(false);
  });
});

describe("state transitions", () => {
  it("approve/deny only from pending; revoke from approved, or pending by the requester", () => {
    expect(allowedFrom("approve", false)).toEqual(["pending"]);
    expect(allowedFrom("deny", true)).toEqual(["pending"]);
    expect(allowedFrom("revoke", false)).toEqual(["approved"]);
    expect(allowedFrom("revoke", true)).toEqual(["approved", "pending"]);
  });
  it("treats an approved grant past expires_at as expired", () => {
    expect(effectiveStatus(grant({ expires_at: 2000 }), 1999)).toBe("approved");
    expect(effectiveStatus(grant({ expires_at: 2000 }), 2000)).toBe("expired");
    expect(effectiveStatus(grant({ status: "used", expires_at: 2000 }), 3000)).toBe("used");
  });
  it("maps every status to the consume outcome", () => {
    expect(consumeResultFor(grant(), 0)).toEqual({ ok: true, status: "consumed", markUsed: true });
    expect(consumeResultFor(grant({}, { grant_type: "always" }), 0)).toEqual({
      ok: true,
      status: "valid",
      markUsed: false,
    });
    expect(consumeResultFor(grant({ status: "used" }), 0)).toMatchObject({ error: "already_consumed" });
    expect(consumeResultFor(grant({ status: "revoked" }), 0)).toMatchObject({ error: "revoked" });
    expect(consumeResultFor(grant({ status: "denied" }), 0)).toMatchObject({ error: "denied" });
    expect(consumeResultFor(grant({ status: "pending" }), 0)).toMatchObject({ error: "not_approved" });
    expect(
      consumeResultFor(grant({ expires_at: 5 }, { grant_type: "timed", duration: 5 }), 10),
    ).toMatchObject({
      error: "expired",
      status: "expired",
    });
  });
});

describe("AuthZ-JWT claims", () => {
  it("exp: once +300, timed = expires_at, always +3600", () => {
    expect(authzExp(grant(), 100)).toBe(400);
    expect(authzExp(grant({ expires_at: 9999 }, { grant_type: "timed", duration: 60 }), 100)).toBe(9999);
    expect(authzExp(grant({}, { grant_type: "always" }), 100)).toBe(3700);
  });
  it("produces exactly the schema's fields", () => {
    const g = grant({ decided_by: "alice@x" }, { cmd_hash: cmdHash(["ls"]), run_as: "root", reason: "r" });
    const c = authzClaims({
      issuer: "https://id",
      grant: g,
      act: "agent",
      iat: 100,
      jti: "0b3c6c39-9a0e-4c0d-8f55-8a8f5b2f5e0f",
    });
    schemas.assert("authz-jwt-claims", c);
    expect(c).toEqual({
      iss: "https://id",
      sub: "bot@x",
      act: "agent",
      aud: "escapes",
      target_host: "h",
      iat: 100,
      exp: 400,
      jti: "0b3c6c39-9a0e-4c0d-8f55-8a8f5b2f5e0f",
      grant_id: g.id,
      grant_type: "once",
      approval: "once",
      command: ["ls"],
      cmd_hash: cmdHash(["ls"]),
      run_as: "root",
      decided_by: "alice@x",
    });
  });
});

describe("request validation", () => {
  const problem = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      expect(e).toBeInstanceOf(ProblemError);
      return (e as ProblemError).status;
    }
    throw new Error("expected a ProblemError");
  };
  it("builds a schema-valid request with the canonical cmd_hash", () => {
    const r = parseGrantRequest(
      { target_host: "h", audience: "escapes", grant_type: "timed", duration: "1h", command: ["a b"] },
      "bot@x",
    );
    schemas.assert("grant-request", r);
    expect(r).toMatchObject({
      requester: "bot@x",
      audience: "escapes",
      duration: 3600,
      cmd_hash: cmdHash(["a b"]),
    });
  });
  it("takes the grant flow's example body: target is the target system and the default audience", () => {
    const body = {
      requester: "agent@example.com",
      target: "prod-server",
      grant_type: "once",
      permissions: ["deploy"],
      reason: "Deploy hotfix #123",
    };
    const r = parseGrantRequest(body, "agent@example.com");
    schemas.assert("grant-request", r);
    expect(r).toEqual({
      requester: "agent@example.com",
      target_host: "prod-server",
      audience: "prod-server",
      grant_type: "once",
      permissions: ["deploy"],
      reason: "Deploy hotfix #123",
    });
    // An explicit audience wins; target and target_host may both be sent only when they agree.
    expect(parseGrantRequest({ ...body, audience: "deployer" }, "agent@example.com").audience).toBe(
      "deployer",
    );
    expect(parseGrantRequest({ ...body, target_host: "prod-server" }, "agent@example.com").target_host).toBe(
      "prod-server",
    );
    expect(problem(() => parseGrantRequest({ ...body, target_host: "staging" }, "agent@example.com"))).toBe(
      400,
    );
    expect(problem(() => parseGrantRequest({ ...body, target: "" }, "agent@example.com"))).toBe(400);
    expect(problem(() => parseGrantRequest({ ...body, target: "a\u202eb" }, "agent@example.com"))).toBe(400);
    const { target: _, ...noTarget } = body;
    expect(problem(() => parseGrantRequest(noTarget, "agent@example.com"))).toBe(400);
    // A command grant without an audience is for its target too (elevation sends "escapes" itself).
    expect(parseGrantRequest({ target_host: "h", grant_type: "once", command: ["ls"] }, "b").audience).toBe(
      "h",
    );
  });
  it("refuses what it does not understand", () => {
    const base = { target_host: "h", grant_type: "once", command: ["ls"] };
    expect(problem(() => parseGrantRequest({ ...base, grant_type: "forever" }, "b"))).toBe(400);
    expect(problem(() => parseGrantRequest({ ...base, grant_type: "timed" }, "b"))).toBe(400);
    expect(problem(() => parseGrantRequest({ ...base, extra: 1 }, "b"))).toBe(400);
    expect(problem(() => parseGrantRequest({ ...base, requester: "x" }, "b"))).toBe(403);
    expect(problem(() => parseGrantRequest({ ...base, cmd_hash: cmdHash(["a", "b"]) }, "b"))).toBe(400);
    expect(problem(() => parseGrantRequest({ ...base, command: ["\ud800"] }, "b"))).toBe(400);
    expect(problem(() => parseGrantRequest({ ...base, target_host: "" }, "b"))).toBe(400);
    expect(problem(() => parseGrantRequest({ ...base, target_host: "a\nb" }, "b"))).toBe(400);
    expect(problem(() => parseGrantRequest({ target_host: "h", grant_type: "once" }, "b"))).toBe(400);
  });
  it("refuses control, bidi and invisible characters in every field but command, naming the field", () => {
    const base = { target_host: "h", grant_type: "once", command: ["ls"] };
    const detail = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return `${(e as ProblemError).status} ${(e as ProblemError).message}`;
      }
      return "accepted";
    };
    const bad = ["a\x1b[2Kb", "a\rb", "a\bb", "\u202eab", "a\u200db", "a\u00a0b", "a\x85b"];
    for (const text of bad) {
      for (const field of ["reason", "audience", "target", "target_host", "run_as"]) {
        expect(detail(() => parseGrantRequest({ ...base, [field]: text }, "b"))).toMatch(
          new RegExp(`^400 ${field} contains control, bidi or invisible characters`),
        );
      }
      expect(detail(() => parseGrantRequest({ ...base, permissions: ["ok", text] }, "b"))).toMatch(
        /^400 permissions\[1\] contains control/,
      );
      // A command may need them (a newline in a script): accepted, and every display marks it.
      expect(parseGrantRequest({ ...base, command: ["sh", "-c", text] }, "b").command).toEqual([
        "sh",
        "-c",
        text,
      ]);
    }
    expect(parseGrantRequest({ ...base, reason: "déploiement, 日本" }, "b").reason).toBe("déploiement, 日本");
  });
  it("parses durations", () => {
    expect(parseDuration(90)).toBe(90);
    expect(parseDuration("30m")).toBe(1800);
    expect(parseDuration("1h30m")).toBe(5400);
    expect(parseDuration("2d")).toBe(172800);
    for (const bad of [0, -1, 1.5, "", "1y", "m", "10 m", null, 10 ** 9])
      expect(() => parseDuration(bad)).toThrow(ProblemError);
  });
  it("applies approver overrides", () => {
    const req = { requester: "b", target_host: "h", audience: "a", grant_type: "always" as const };
    expect(parseApproveOverrides({}, req)).toEqual({ grantType: "always", duration: undefined });
    expect(parseApproveOverrides({ grant_type: "timed", duration: "30m" }, req)).toEqual({
      grantType: "timed",
      duration: 1800,
    });
    expect(() => parseApproveOverrides({ grant_type: "timed" }, req)).toThrow(ProblemError);
    expect(() => parseApproveOverrides({ grant_type: "once", duration: 5 }, req)).toThrow(ProblemError);
    expect(() => parseApproveOverrides({ approve: true }, req)).toThrow(ProblemError);
  });
  it("keys reuse on host, audience, run_as and command only", () => {
    const r = parseGrantRequest({ target_host: "h", grant_type: "always", command: ["ls"] }, "b");
    expect(matchKey(r)).toBe(matchKey({ ...r, grant_type: "once", reason: "other" }));
    expect(matchKey(r)).not.toBe(matchKey({ ...r, run_as: "root" }));
    expect(matchKey(r)).not.toBe(matchKey({ ...r, cmd_hash: cmdHash(["ls", "-l"]) }));
  });
  it("agent emails", () => {
    expect(agentEmail("helper", "alice@example.com")).toBe("helper+agent@example.com");
  });
});
