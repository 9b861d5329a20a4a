import { describe, expect, it } from "vitest";
import { cmdHash, legacyCmdHash } from "../../protocol/cmd-hash.ts";
import {
  checkIssuer,
  checkTokenShape,
  type Decision,
  decide,
  exitStatusFor,
  LEEWAY_S,
  parseRequest,
  type VerifyRequest,
  verdictFromConsume,
} from "../../verifier/decide.ts";
import type { Policy } from "../../verifier/policy.ts";

// sudo-rs style: fake users, fake claims, one test per check and per denial reason.
const NOW = 1_800_000_000;
const ISS = "https://id.example.com";
const AGENT = "agent-deploy@example.com";
const HUMAN = "alice@example.com";

function policy(over: Partial<Policy> = {}): Policy {
  return {
    version: 1,
    issuers: [ISS],
    approvers: [HUMAN, "bob@example.com"],
    audiences: ["escapes"],
    host: "web1",
    runAs: ["root", "nobody"],
    allowSelfApproval: false,
    users: { deploy: [AGENT], ops: ["ops-agent@example.com"] },
    ...over,
  };
}

const ARGV = ["systemctl", "restart", "nginx"];

function request(over: Partial<VerifyRequest> = {}): VerifyRequest {
  const argv = over.argv ?? ARGV;
  return {
    jwt: "a.b.c",
    argv,
    cmd_hash: cmdHash(argv),
    user: "deploy",
    uid: 1001,
    run_as: "root",
    timing: false,
    ...over,
  };
}

function claims(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: ISS,
    sub: AGENT,
    aud: "escapes",
    target_host: "web1",
    iat: NOW - 5,
    exp: NOW + 295,
    jti: "0b6f3a4e-1111-4222-8333-444455556666",
    grant_id: "9d2c1b0a-1111-4222-8333-444455556666",
    grant_type: "once",
    approval: "once",
    command: ARGV,
    cmd_hash: cmdHash(ARGV),
    run_as: "root",
    decided_by: HUMAN,
    ...over,
  };
}

function reason(d: Decision): string {
  return d.ok ? "allowed" : d.reason;
}

describe("decide: the allowed case", () => {
  it("allows a well-formed grant and returns the verdict the shim reads", () => {
    const d = decide(claims(), request(), policy(), NOW);
    expect(d).toEqual({
      ok: true,
      grant_id: "9d2c1b0a-1111-4222-8333-444455556666",
      cmd_hash: cmdHash(ARGV),
      run_as: "root",
      sub: AGENT,
      decided_by: HUMAN,
      issuer: ISS,
      grant_type: "once",
      jti: "0b6f3a4e-1111-4222-8333-444455556666",
    });
    expect(exitStatusFor(d)).toBe(0);
  });

  it("accepts an issuer written with a trailing slash in the token, and names it normalised", () => {
    const d = decide(claims({ iss: `${ISS}/` }), request(), policy(), NOW);
    expect(d).toMatchObject({ ok: true, issuer: ISS });
  });

  it("accepts an audience array that holds an accepted audience", () => {
    expect(reason(decide(claims({ aud: ["other", "escapes"] }), request(), policy(), NOW))).toBe("allowed");
  });

  it("treats a missing run_as claim as root", () => {
    const c = claims();
    delete c.run_as;
    expect(reason(decide(c, request(), policy(), NOW))).toBe("allowed");
    expect(reason(decide(c, request({ run_as: "nobody" }), policy(), NOW))).toBe("run_as_not_allowed");
  });
});

describe("decide: token shape", () => {
  for (const k of ["sub", "jti", "grant_id", "exp", "iat", "grant_type"]) {
    it(`denies token_malformed without ${k}`, () => {
      const c = claims();
      delete c[k];
      expect(reason(decide(c, request(), policy(), NOW))).toBe("token_malformed");
    });
  }
  it("denies token_malformed for an unknown grant_type", () => {
    expect(reason(decide(claims({ grant_type: "forever" }), request(), policy(), NOW))).toBe(
      "token_malformed",
    );
  });
  it("denies token_malformed for a string exp", () => {
    expect(reason(decide(claims({ exp: String(NOW + 100) }), request(), policy(), NOW))).toBe(
      "token_malformed",
    );
  });
  it("denies token_malformed without aud", () => {
    const c = claims();
    delete c.aud;
    expect(reason(decide(c, request(), policy(), NOW))).toBe("token_malformed");
  });
  it("checkTokenShape rejects what is not a compact JWT", () => {
    expect(checkTokenShape("a.b.c")).toBeUndefined();
    expect(checkTokenShape("a.b")?.reason).toBe("token_malformed");
    expect(checkTokenShape("a.b.c d")?.reason).toBe("token_malformed");
    expect(checkTokenShape(`${"a".repeat(17000)}.b.c`)?.reason).toBe("token_malformed");
  });
});

describe("decide: issuer", () => {
  it("denies issuer_not_allowed for another issuer", () => {
    const d = decide(claims({ iss: "https://evil.example.com" }), request(), policy(), NOW);
    expect(reason(d)).toBe("issuer_not_allowed");
    expect(d.ok ? "" : d.detail).toContain("evil.example.com");
  });
  it("does not accept an issuer that only shares a prefix", () => {
    expect(reason(decide(claims({ iss: `${ISS}.evil.com` }), request(), policy(), NOW))).toBe(
      "issuer_not_allowed",
    );
    expect(reason(decide(claims({ iss: `${ISS}/other` }), request(), policy(), NOW))).toBe(
      "issuer_not_allowed",
    );
  });
  it("checkIssuer works on unverified claims (before any fetch)", () => {
    expect(checkIssuer(ISS, policy())).toEqual({ ok: true, issuer: ISS });
    expect(checkIssuer(undefined, policy())).toMatchObject({ ok: false, reason: "token_malformed" });
    expect(checkIssuer("http://id.example.com", policy())).toMatchObject({
      ok: false,
      reason: "issuer_not_allowed",
    });
  });
});

describe("decide: audience", () => {
  it("denies audience_not_allowed for another audience", () => {
    expect(reason(decide(claims({ aud: "apes-cli" }), request(), policy(), NOW))).toBe(
      "audience_not_allowed",
    );
  });
  it("accepts an audience array that contains an allowed audience", () => {
    expect(reason(decide(claims({ aud: ["x", "escapes"] }), request(), policy(), NOW))).toBe("allowed");
  });
  it("honours a configured audience list", () => {
    expect(reason(decide(claims({ aud: "ops" }), request(), policy({ audiences: ["ops"] }), NOW))).toBe(
      "allowed",
    );
    expect(reason(decide(claims(), request(), policy({ audiences: ["ops"] }), NOW))).toBe(
      "audience_not_allowed",
    );
  });
});

describe("decide: time", () => {
  it("denies token_expired past exp + leeway", () => {
    expect(reason(decide(claims({ exp: NOW - LEEWAY_S - 1 }), request(), policy(), NOW))).toBe(
      "token_expired",
    );
  });
  it("tolerates up to the leeway after exp", () => {
    expect(reason(decide(claims({ exp: NOW - LEEWAY_S }), request(), policy(), NOW))).toBe("allowed");
  });
  it("denies token_not_yet_valid for iat in the future beyond the leeway", () => {
    expect(reason(decide(claims({ iat: NOW + LEEWAY_S + 1 }), request(), policy(), NOW))).toBe(
      "token_not_yet_valid",
    );
    expect(reason(decide(claims({ iat: NOW + LEEWAY_S }), request(), policy(), NOW))).toBe("allowed");
  });
  it("denies token_not_yet_valid for nbf in the future", () => {
    expect(reason(decide(claims({ nbf: NOW + 3600 }), request(), policy(), NOW))).toBe("token_not_yet_valid");
  });
});

describe("decide: host", () => {
  it("denies host_mismatch for a grant made for another host", () => {
    expect(reason(decide(claims({ target_host: "web2" }), request(), policy(), NOW))).toBe("host_mismatch");
  });
  it("denies host_mismatch without target_host", () => {
    const c = claims();
    delete c.target_host;
    expect(reason(decide(c, request(), policy(), NOW))).toBe("host_mismatch");
  });
});

describe("decide: command", () => {
  it("denies command_mismatch when one argument differs", () => {
    const d = decide(claims(), request({ argv: ["systemctl", "restart", "sshd"] }), policy(), NOW);
    expect(reason(d)).toBe("command_mismatch");
    expect(d.ok ? "" : d.detail).toContain("argument 2");
  });
  it('denies ["a b"] against ["a","b"] (the ambiguity of the legacy hash)', () => {
    const granted = ["a b"];
    const c = claims({ command: granted, cmd_hash: legacyCmdHash(granted) });
    expect(legacyCmdHash(granted)).toBe(legacyCmdHash(["a", "b"]));
    expect(reason(decide(c, request({ argv: ["a", "b"] }), policy(), NOW))).toBe("command_mismatch");
  });
  it("denies an extra or missing argument", () => {
    expect(reason(decide(claims(), request({ argv: [...ARGV, "--now"] }), policy(), NOW))).toBe(
      "command_mismatch",
    );
    expect(reason(decide(claims(), request({ argv: ARGV.slice(0, 2) }), policy(), NOW))).toBe(
      "command_mismatch",
    );
  });
  it("denies a token without a command claim even when a legacy hash matches", () => {
    const c = claims({ cmd_hash: legacyCmdHash(ARGV) });
    delete c.command;
    expect(reason(decide(c, request(), policy(), NOW))).toBe("command_mismatch");
  });
  it("denies a token without a command claim even when the canonical hash matches", () => {
    const c = claims();
    delete c.command;
    expect(reason(decide(c, request(), policy(), NOW))).toBe("command_mismatch");
  });
  it("denies cmd_hash_mismatch when the canonical hash does not match the command", () => {
    const c = claims({ cmd_hash: cmdHash(["something", "else"]) });
    expect(reason(decide(c, request(), policy(), NOW))).toBe("cmd_hash_mismatch");
  });
  it("denies cmd_hash_mismatch for a malformed SHA-256: value", () => {
    expect(reason(decide(claims({ cmd_hash: "SHA-256:XYZ" }), request(), policy(), NOW))).toBe(
      "cmd_hash_mismatch",
    );
  });
  it("accepts a matching legacy hash next to an equal command", () => {
    expect(reason(decide(claims({ cmd_hash: legacyCmdHash(ARGV) }), request(), policy(), NOW))).toBe(
      "allowed",
    );
  });
  it("denies a legacy hash that does not match", () => {
    expect(reason(decide(claims({ cmd_hash: "00ff" }), request(), policy(), NOW))).toBe("cmd_hash_mismatch");
  });
  it("accepts a token without cmd_hash when the command is equal", () => {
    const c = claims();
    delete c.cmd_hash;
    expect(reason(decide(c, request(), policy(), NOW))).toBe("allowed");
  });
});

describe("decide: approver", () => {
  it("denies approver_not_allowed for an approver outside the policy", () => {
    expect(reason(decide(claims({ decided_by: "mallory@example.com" }), request(), policy(), NOW))).toBe(
      "approver_not_allowed",
    );
  });
  it("denies approver_not_allowed without decided_by", () => {
    const c = claims();
    delete c.decided_by;
    expect(reason(decide(c, request(), policy(), NOW))).toBe("approver_not_allowed");
  });
  it("denies self_approval when the requester approved itself", () => {
    const p = policy({ approvers: [HUMAN, AGENT] });
    expect(reason(decide(claims({ decided_by: AGENT }), request(), p, NOW))).toBe("self_approval");
  });
  it("allows self approval only when the policy says so", () => {
    const p = policy({ approvers: [HUMAN, AGENT], allowSelfApproval: true });
    expect(reason(decide(claims({ decided_by: AGENT }), request(), p, NOW))).toBe("allowed");
  });
  it("denies approver_not_allowed for a decided_by that is not a string", () => {
    for (const decided_by of [["alice@example.com"], 7, null])
      expect(reason(decide(claims({ decided_by }), request(), policy(), NOW))).toBe("approver_not_allowed");
  });
  it("checks the approver list before self approval (an outsider approving itself)", () => {
    expect(reason(decide(claims({ decided_by: AGENT }), request(), policy(), NOW))).toBe(
      "approver_not_allowed",
    );
  });
});

describe("decide: identity mapping", () => {
  it("denies identity_not_mapped when sub is not mapped to the invoking user", () => {
    expect(reason(decide(claims(), request({ user: "ops" }), policy(), NOW))).toBe("identity_not_mapped");
  });
  it("denies identity_not_mapped for a Unix user absent from the policy", () => {
    expect(reason(decide(claims(), request({ user: "mallory" }), policy(), NOW))).toBe("identity_not_mapped");
  });
  it("is not fooled by Object prototype keys as user names", () => {
    expect(
      reason(decide(claims({ sub: "constructor" }), request({ user: "constructor" }), policy(), NOW)),
    ).toBe("identity_not_mapped");
    expect(reason(decide(claims(), request({ user: "__proto__" }), policy(), NOW))).toBe(
      "identity_not_mapped",
    );
  });
});

describe("decide: run_as", () => {
  it("allows --as nobody when the grant and policy say nobody", () => {
    expect(reason(decide(claims({ run_as: "nobody" }), request({ run_as: "nobody" }), policy(), NOW))).toBe(
      "allowed",
    );
  });
  it("denies run_as_not_allowed when the grant names another user than requested", () => {
    expect(reason(decide(claims({ run_as: "nobody" }), request(), policy(), NOW))).toBe("run_as_not_allowed");
    expect(reason(decide(claims(), request({ run_as: "nobody" }), policy(), NOW))).toBe("run_as_not_allowed");
  });
  it("denies run_as_not_allowed for a run_as that is not a string (never the default root)", () => {
    for (const run_as of [["root"], 0, null])
      expect(reason(decide(claims({ run_as }), request(), policy(), NOW))).toBe("run_as_not_allowed");
  });
  it("denies run_as_not_allowed for a target user the policy does not allow", () => {
    expect(reason(decide(claims({ run_as: "daemon" }), request({ run_as: "daemon" }), policy(), NOW))).toBe(
      "run_as_not_allowed",
    );
  });
});

describe("decide: check order", () => {
  it("reports the first failing check in contract order", () => {
    const all = claims({
      iss: "https://evil.example.com",
      aud: "x",
      exp: NOW - 1000,
      target_host: "other",
      decided_by: "x@y",
    });
    expect(reason(decide(all, request(), policy(), NOW))).toBe("issuer_not_allowed");
    expect(reason(decide({ ...all, iss: ISS }, request(), policy(), NOW))).toBe("audience_not_allowed");
    expect(reason(decide({ ...all, iss: ISS, aud: "escapes" }, request(), policy(), NOW))).toBe(
      "token_expired",
    );
    expect(
      reason(decide({ ...all, iss: ISS, aud: "escapes", exp: NOW + 10 }, request(), policy(), NOW)),
    ).toBe("host_mismatch");
  });
});

describe("parseRequest", () => {
  const line = (o: Record<string, unknown>) => JSON.stringify(o);
  const good = {
    jwt: "a.b.c",
    argv: ["id", "-u"],
    cmd_hash: cmdHash(["id", "-u"]),
    user: "deploy",
    uid: 1001,
    run_as: "root",
  };
  it("parses the shim's line", () => {
    expect(parseRequest(line(good))).toMatchObject({ argv: ["id", "-u"], user: "deploy", timing: false });
    expect(parseRequest(line({ ...good, timing: true }))).toMatchObject({ timing: true });
  });
  it("rejects a hash that is not the hash of argv", () => {
    expect(parseRequest(line({ ...good, cmd_hash: cmdHash(["id"]) }))).toMatchObject({
      reason: "request_invalid",
    });
  });
  it("rejects unknown fields, empty argv, non-strings and non-JSON", () => {
    expect(parseRequest(line({ ...good, extra: 1 }))).toMatchObject({ reason: "request_invalid" });
    expect(parseRequest(line({ ...good, argv: [] }))).toMatchObject({ reason: "request_invalid" });
    expect(parseRequest(line({ ...good, argv: ["id", 1] }))).toMatchObject({ reason: "request_invalid" });
    expect(parseRequest(line({ ...good, uid: -1 }))).toMatchObject({ reason: "request_invalid" });
    expect(parseRequest("{")).toMatchObject({ reason: "request_invalid" });
    expect(parseRequest("[]")).toMatchObject({ reason: "request_invalid" });
  });
});

describe("verdictFromConsume and exit status", () => {
  const allowed = decide(claims(), request(), policy(), NOW);
  if (!allowed.ok) throw new Error("fixture must be allowed");
  const timed = { ...allowed, grant_type: "timed" as const };
  it("allows consumed for once and valid for timed/always", () => {
    expect(verdictFromConsume(200, { status: "consumed" }, allowed)).toBe(allowed);
    expect(verdictFromConsume(200, { status: "valid" }, timed)).toBe(timed);
  });
  it("denies a once grant the IdP calls merely valid (no replay protection)", () => {
    expect(reason(verdictFromConsume(200, { status: "valid" }, allowed))).toBe("grant_not_usable");
  });
  for (const error of ["already_consumed", "revoked", "denied", "expired", "not_approved"]) {
    it(`denies grant_not_usable for ${error} and names it`, () => {
      const d = verdictFromConsume(409, { error, status: "used" }, allowed);
      expect(reason(d)).toBe("grant_not_usable");
      expect(d.ok ? "" : d.detail).toContain(error);
      expect(exitStatusFor(d)).toBe(77);
    });
  }
  it("denies an error carried in a 200 body", () => {
    expect(reason(verdictFromConsume(200, { error: "revoked", status: "revoked" }, allowed))).toBe(
      "grant_not_usable",
    );
  });
  it("maps reasons to the contract's exit statuses", () => {
    expect(exitStatusFor({ ok: false, reason: "idp_unreachable", detail: "" })).toBe(69);
    expect(exitStatusFor({ ok: false, reason: "jwks_unavailable", detail: "" })).toBe(69);
    expect(exitStatusFor({ ok: false, reason: "config_invalid", detail: "" })).toBe(78);
    expect(exitStatusFor({ ok: false, reason: "signature_invalid", detail: "" })).toBe(77);
  });
});
