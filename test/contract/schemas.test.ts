import { readdirSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { externalSchemasDir, loadSchemas, OWN_SCHEMAS_DIR, type SchemaName } from "../../protocol/schemas.ts";

/**
 * The project's own JSON Schemas (protocol/schemas/) are the contract `npm test` checks against.
 * The external conformance set is checked too when APES_SCHEMAS_DIR names it (.ci/run sets it when
 * the protocol family's schemas are beside the clone); every integration test that asserts a schema
 * then checks both sets.
 */

const own = loadSchemas([OWN_SCHEMAS_DIR]);
const id = "2f0c1f8e-8d9b-4c1e-9a57-3b1f2e4d5c6a";
const hash = `SHA-256:${"a".repeat(64)}`;
const request = {
  requester: "bot@example.com",
  target_host: "web1",
  audience: "escapes",
  grant_type: "once",
  command: ["ls", "/root"],
  cmd_hash: hash,
  run_as: "root",
};
const grant = { id, type: "command", request, status: "pending", created_at: 1_700_000_000 };
const claims = {
  iss: "https://id.example.com",
  sub: "agent@example.com",
  act: "agent",
  aud: "prod-server",
  target_host: "prod-server",
  iat: 1_700_000_000,
  exp: 1_700_000_300,
  jti: id,
  grant_id: id,
  grant_type: "once",
  approval: "once",
  permissions: ["deploy"],
  decided_by: "alice@example.com",
};

describe("the project's own schemas", () => {
  it("every file compiles and is a draft 2020-12 schema with its own $id", () => {
    const files = readdirSync(OWN_SCHEMAS_DIR).filter((f) => f.endsWith(".json"));
    expect(files.length).toBeGreaterThanOrEqual(11);
    for (const f of files) {
      const name = f.replace(/\.json$/, "") as SchemaName;
      expect(own.has(name), f).toBe(true);
      // compiling happens on first use; an invalid schema throws here
      expect(() => own.validate(name, {})).not.toThrow();
    }
  });

  it("accepts what the IdP emits and refuses what it must never emit", () => {
    expect(own.validate("grant", grant).valid).toBe(true);
    expect(own.validate("authz-jwt-claims", claims).valid).toBe(true);
    const bad: [SchemaName, unknown][] = [
      ["grant", { ...grant, extra: 1 }],
      ["grant", { ...grant, id: "not-a-uuid" }],
      ["grant", { ...grant, status: "approved" }], // approved without decided_by/decided_at
      ["grant-request", { ...request, grant_type: "timed" }], // timed needs a duration
      ["grant-request", { ...request, duration: 60 }], // a duration only for timed
      ["grant-request", { ...request, cmd_hash: undefined }], // a command always has its hash
      ["grant-request", { ...request, cmd_hash: "abc" }],
      ["delegation", { ...grant, type: "delegation" }], // no delegator/delegate
      [
        "session-token-claims",
        { iss: "https://id.example", sub: "a@b.c", aud: "x", act: "human", iat: 1, exp: 2, jti: "j" },
      ],
      [
        "session-token-claims",
        { iss: "https://id.example", sub: "a@b.c", aud: "apes-cli", act: "root", iat: 1, exp: 2, jti: "j" },
      ],
      ["authz-jwt-claims", { ...claims, act: undefined }], // every AuthZ-JWT names the requester's kind
      ["authz-jwt-claims", { ...claims, act: "root" }],
      ["jwks", { keys: [{ kty: "RSA", kid: "k", alg: "RS256", use: "sig" }] }],
      ["error", { type: "about:blank", title: "x", status: 400 }],
    ];
    for (const [name, value] of bad)
      expect(own.validate(name, value).valid, `${name} ${JSON.stringify(value)}`).toBe(false);
  });
});

const external = externalSchemasDir();

describe("the external conformance set (APES_SCHEMAS_DIR)", () => {
  if (!external)
    console.log(
      "external schema check skipped: APES_SCHEMAS_DIR is not set (.ci/run sets it when the protocol family's schemas lie beside the clone)",
    );

  it.skipIf(!external)("loads and shares the names of the objects the IdP emits", () => {
    const both = loadSchemas([OWN_SCHEMAS_DIR, external!]);
    expect(both.dirs).toEqual([OWN_SCHEMAS_DIR, external]);
    const ext = loadSchemas([external!]);
    for (const name of ["grant", "grant-request", "delegation", "authz-jwt-claims", "error"] as const) {
      expect(ext.has(name), name).toBe(true);
    }
    both.assert("grant", grant);
  });

  it.skipIf(!external)("checks the AuthZ-JWT claims without apes' documented extension (act) only", () => {
    const both = loadSchemas([OWN_SCHEMAS_DIR, external!]);
    both.assert("authz-jwt-claims", claims);
    // The external set refuses unknown claims: only the fields named in EXTENSION_FIELDS are exempt.
    expect(both.validate("authz-jwt-claims", { ...claims, extra: 1 }).valid).toBe(false);
    expect(loadSchemas([external!]).validate("authz-jwt-claims", claims).valid).toBe(true);
  });

  it.skipIf(!external)("checks a decided grant without its approval_proof (apes' extension) only", () => {
    const both = loadSchemas([OWN_SCHEMAS_DIR, external!]);
    const decided = {
      ...grant,
      status: "approved",
      decided_by: "alice@example.com",
      decided_at: 1_700_000_010,
      approval_proof: "ed25519",
    };
    both.assert("grant", decided);
    // Our own schema still checks the extension's value, and any other unknown field is refused.
    expect(both.validate("grant", { ...decided, approval_proof: "trust-me" }).valid).toBe(false);
    expect(both.validate("grant", { ...decided, extra: 1 }).valid).toBe(false);
    expect(loadSchemas([external!]).validate("grant", decided).valid).toBe(true);
  });
});
