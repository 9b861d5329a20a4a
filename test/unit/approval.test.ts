import { createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  type ApprovalInput,
  approvalDigest,
  approvalDigestHex,
  approvalDigestInput,
  approvalSigningInput,
  CanonicalJsonError,
  canonicalJson,
} from "../../protocol/approval.ts";
import { signingInput } from "../../protocol/signatures.ts";

// The vector of docs/signatures.md ("Approvals"); the test below checks the document says the same.
const VECTOR: ApprovalInput = {
  issuer: "https://id.example.com",
  grantId: "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d",
  type: "command",
  request: {
    requester: "bot+agent@example.com",
    target_host: "web1",
    audience: "escapes",
    grant_type: "once",
    command: ["systemctl", "restart", "nginx"],
    cmd_hash: "SHA-256:ad540f1adb35983c1fea7b94f9150054c92121373ea5d270cdee1a0dd9f71d08",
    run_as: "root",
    reason: "deploy 1.2.3",
  },
  decision: "approve",
  grantType: "timed",
  duration: 1800,
};
const VECTOR_JCS =
  '{"approval":{"duration":1800,"grant_type":"timed"},"decision":"approve","grant_id":"0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d","issuer":"https://id.example.com","request":{"audience":"escapes","cmd_hash":"SHA-256:ad540f1adb35983c1fea7b94f9150054c92121373ea5d270cdee1a0dd9f71d08","command":["systemctl","restart","nginx"],"grant_type":"once","reason":"deploy 1.2.3","requester":"bot+agent@example.com","run_as":"root","target_host":"web1"},"type":"command"}';
const VECTOR_DIGEST = "e9148455d661cfe3043cb4cda2ed4d4509d97be79e537f6ae7b1ed8dbdce3d18";
// RFC 8032 section 7.1, test 1: a published key, so anyone can check the signature.
const RFC8032_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const VECTOR_SIGNATURE =
  "W72qnZz0Li7v9BUC7X6cwljQpqwaaROrMJzHLY3glQpodhBzG3o6xyBV3Djw8gDjTLAsJbpJ7va66WfjftKFBg==";

const rfcKey = createPrivateKey({
  key: Buffer.from(`302e020100300506032b657004220420${RFC8032_SEED}`, "hex"),
  format: "der",
  type: "pkcs8",
});

describe("the approval digest (protocol/approval.ts)", () => {
  it("matches the test vector: format line, RFC 8785 document, SHA-256", () => {
    expect(approvalDigestInput(VECTOR).toString("utf8")).toBe(`apes-approval-v1\n${VECTOR_JCS}`);
    expect(approvalDigestHex(VECTOR)).toBe(VECTOR_DIGEST);
    expect(approvalDigest(VECTOR)).toHaveLength(32);
  });

  it("the Ed25519 proof of the vector: apes-signature-v1, purpose approve, deterministic signature", () => {
    const signed = approvalSigningInput(VECTOR.issuer, "alice@example.com", VECTOR_DIGEST);
    expect(signed.toString("utf8")).toBe(
      `apes-signature-v1\napprove\nhttps://id.example.com\nalice@example.com\n${VECTOR_DIGEST}`,
    );
    expect(sign(null, signed, rfcKey).toString("base64")).toBe(VECTOR_SIGNATURE);
    // A login signature over the same "challenge" is a different message: it never approves.
    const login = signingInput("login", VECTOR.issuer, "alice@example.com", VECTOR_DIGEST);
    const loginSig = sign(null, login, rfcKey);
    expect(verify(null, signed, createPublicKey(rfcKey), loginSig)).toBe(false);
  });

  it("docs/signatures.md states the same vector", () => {
    const doc = readFileSync(join(import.meta.dirname, "..", "..", "docs", "signatures.md"), "utf8");
    expect(doc).toContain(VECTOR_JCS);
    expect(doc).toContain(VECTOR_DIGEST);
    expect(doc).toContain(VECTOR_SIGNATURE);
    expect(doc).toContain(RFC8032_SEED);
  });

  it("does not depend on the order of the request's fields", () => {
    const reversed = Object.fromEntries(Object.entries(VECTOR.request).reverse());
    expect(approvalDigestHex({ ...VECTOR, request: reversed })).toBe(VECTOR_DIGEST);
  });

  const variants: [string, Partial<ApprovalInput> | ((r: Record<string, unknown>) => void)][] = [
    ["issuer", { issuer: "https://id.example.org" }],
    ["issuer with a trailing slash", { issuer: "https://id.example.com/" }],
    ["grant id", { grantId: "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4e" }],
    ["grant category", { type: "delegation" }],
    ["approved as once", { grantType: "once", duration: undefined }],
    ["approved as always", { grantType: "always", duration: undefined }],
    ["another duration", { duration: 1801 }],
    ["requester", (r) => (r.requester = "bot2+agent@example.com")],
    ["target_host", (r) => (r.target_host = "web2")],
    ["audience", (r) => (r.audience = "web1")],
    ["argv element", (r) => (r.command = ["systemctl", "restart", "nginx2"])],
    ["argv split differently", (r) => (r.command = ["systemctl", "restart nginx"])],
    ["argv with one more element", (r) => (r.command = ["systemctl", "restart", "nginx", ""])],
    ["cmd_hash", (r) => (r.cmd_hash = "SHA-256:00")],
    ["run_as", (r) => (r.run_as = "www-data")],
    ["run_as missing", (r) => delete r.run_as],
    ["permissions added", (r) => (r.permissions = ["read"])],
    ["reason", (r) => (r.reason = "deploy 1.2.4")],
    ["requested grant_type", (r) => (r.grant_type = "timed")],
    ["requested duration", (r) => (r.duration = 60)],
    ["an unknown request field", (r) => (r.extra = "x")],
    ["a number as a string", (r) => (r.duration = "60")],
  ];
  it.each(variants)("changes with the %s", (_name, change) => {
    const request = structuredClone(VECTOR.request);
    let input: ApprovalInput = { ...VECTOR, request };
    if (typeof change === "function") change(request);
    else input = { ...input, ...change };
    expect(approvalDigestHex(input)).not.toBe(VECTOR_DIGEST);
  });

  it("a duration counts only for timed approvals", () => {
    const once = { ...VECTOR, grantType: "once" as const, duration: undefined };
    expect(approvalDigestHex({ ...once, duration: 60 })).toBe(approvalDigestHex(once));
  });

  it("every variant gives a distinct digest (no two collide)", () => {
    const seen = new Set<string>([VECTOR_DIGEST]);
    for (const [, change] of variants) {
      const request = structuredClone(VECTOR.request);
      let input: ApprovalInput = { ...VECTOR, request };
      if (typeof change === "function") change(request);
      else input = { ...input, ...change };
      seen.add(approvalDigestHex(input));
    }
    expect(seen.size).toBe(variants.length + 1);
  });
});

describe("canonicalJson (RFC 8785 for JSON data)", () => {
  it("sorts keys by UTF-16 code units, at every depth, without whitespace", () => {
    expect(canonicalJson({ b: 1, a: [{ d: true, c: null }], "\u00e9": "x", Z: "y" })).toBe(
      '{"Z":"y","a":[{"c":null,"d":true}],"b":1,"\u00e9":"x"}',
    );
    // U+1F600 (surrogates D83D DE00) sorts before U+FB01 in UTF-16 order, unlike by code point.
    expect(canonicalJson({ "\ufb01": 1, "\u{1f600}": 2 })).toBe('{"\u{1f600}":2,"\ufb01":1}');
  });

  it("escapes strings as JSON does: control characters, quotes, lone surrogates", () => {
    expect(canonicalJson(['a\u001b[31m\n"\\', "\ud800"])).toBe('["a\\u001b[31m\\n\\"\\\\","\\ud800"]');
  });

  it("leaves out undefined members (as their wire form does) and refuses what JSON cannot carry", () => {
    expect(canonicalJson({ a: undefined, b: 1 })).toBe('{"b":1}');
    expect(() => canonicalJson({ a: Number.NaN })).toThrow(CanonicalJsonError);
    expect(() => canonicalJson({ a: Number.POSITIVE_INFINITY })).toThrow(CanonicalJsonError);
    expect(() => canonicalJson({ a: 1n })).toThrow(CanonicalJsonError);
    expect(() => canonicalJson(new Date(0))).toThrow(CanonicalJsonError);
  });
});
