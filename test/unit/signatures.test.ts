import { randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  CHALLENGE_SECRET_FILE,
  CHALLENGE_TTL,
  ChallengeSealer,
  loadChallengeSecret,
} from "../../idp/challenges.ts";
import {
  advertisedFormats,
  isPlainChallenge,
  SignatureInputError,
  signingInput,
} from "../../protocol/signatures.ts";

describe("signingInput (docs/signatures.md)", () => {
  it("names the format, purpose, issuer, id and challenge on lines of their own", () => {
    const bytes = signingInput("login", "https://id.example.com", "alice@example.com", "abcdefghijklmnop");
    expect(bytes.toString("utf8")).toBe(
      "apes-signature-v1\nlogin\nhttps://id.example.com\nalice@example.com\nabcdefghijklmnop",
    );
  });

  it("differs for another issuer or id", () => {
    const a = signingInput("login", "https://a.example", "x@example.com", "abcdefghijklmnop");
    expect(a.equals(signingInput("login", "https://b.example", "x@example.com", "abcdefghijklmnop"))).toBe(
      false,
    );
    expect(a.equals(signingInput("login", "https://a.example", "y@example.com", "abcdefghijklmnop"))).toBe(
      false,
    );
  });

  it("refuses fields that could fake the layout", () => {
    const c = "abcdefghijklmnop";
    expect(() => signingInput("login", "https://a.example\nlogin", "x@e", c)).toThrow(SignatureInputError);
    expect(() => signingInput("login", "https://a.example", "x@e\nhttps://b", c)).toThrow(
      SignatureInputError,
    );
    expect(() => signingInput("login", "https://a.example", "x\u202e@e", c)).toThrow(SignatureInputError);
    expect(() => signingInput("login", "https://a.example", "", c)).toThrow(SignatureInputError);
    expect(() => signingInput("login", "https://a.example", "x@e", `${c}\nx`)).toThrow(SignatureInputError);
  });

  it("a plain challenge is 16-256 characters of a small alphabet without '.' (never a JWT signing input)", () => {
    expect(isPlainChallenge("a".repeat(16))).toBe(true);
    expect(isPlainChallenge("A-z_0~9+/=".repeat(25))).toBe(true);
    expect(isPlainChallenge("a".repeat(15))).toBe(false);
    expect(isPlainChallenge("a".repeat(257))).toBe(false);
    expect(isPlainChallenge("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0")).toBe(false);
    expect(isPlainChallenge("abcdefghijklmnop\n")).toBe(false);
    expect(isPlainChallenge("abcdefghijklmnop ")).toBe(false);
    expect(isPlainChallenge(42)).toBe(false);
  });

  it("reads the advertised formats, ignoring junk", () => {
    expect(advertisedFormats({ apes_auth_signature_formats_supported: ["apes-signature-v1", 3] })).toEqual([
      "apes-signature-v1",
    ]);
    expect(advertisedFormats({ apes_auth_signature_formats_supported: "apes-signature-v1" })).toEqual([]);
    expect(advertisedFormats({})).toEqual([]);
  });
});

describe("sealed challenges", () => {
  const sealer = new ChallengeSealer(randomBytes(32));
  const now = 1_800_000_000;

  it("open for the id they were issued for, until they expire, with a fresh nonce each", () => {
    const c = sealer.issue("alice@example.com", now);
    expect(isPlainChallenge(c)).toBe(true);
    const opened = sealer.open(c, "alice@example.com", now + CHALLENGE_TTL - 1);
    expect(opened?.expiresAt).toBe(now + CHALLENGE_TTL);
    expect(sealer.open(c, "alice@example.com", now + CHALLENGE_TTL)).toBeUndefined();
    expect(sealer.open(c, "bob@example.com", now)).toBeUndefined();
    const other = sealer.open(sealer.issue("alice@example.com", now), "alice@example.com", now);
    expect(other?.nonce).not.toBe(opened?.nonce);
  });

  it("refuse tampering, another server's secret, and challenges from the future", () => {
    const c = sealer.issue("alice@example.com", now);
    const raw = Buffer.from(c, "base64url");
    raw[5] = raw[5]! ^ 1; // the issue time
    expect(sealer.open(raw.toString("base64url"), "alice@example.com", now)).toBeUndefined();
    expect(new ChallengeSealer(randomBytes(32)).open(c, "alice@example.com", now)).toBeUndefined();
    expect(sealer.open(sealer.issue("a@x", now + 3600), "a@x", now)).toBeUndefined();
    expect(sealer.open(`${c}A`, "alice@example.com", now)).toBeUndefined();
    expect(sealer.open("not a challenge", "alice@example.com", now)).toBeUndefined();
  });
});

describe("loadChallengeSecret", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "apes-challenge-secret-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("creates a 0600 secret once and reads the same one after", () => {
    const first = loadChallengeSecret(dir);
    expect(statSync(join(dir, CHALLENGE_SECRET_FILE)).mode & 0o777).toBe(0o600);
    expect(loadChallengeSecret(dir).equals(first)).toBe(true);
  });

  it("refuses a secret others can read, or one of the wrong size", () => {
    loadChallengeSecret(dir);
    chmodSync(join(dir, CHALLENGE_SECRET_FILE), 0o644);
    expect(() => loadChallengeSecret(dir)).toThrow(/mode 0600/);
    writeFileSync(join(dir, CHALLENGE_SECRET_FILE), "short", { mode: 0o600 });
    chmodSync(join(dir, CHALLENGE_SECRET_FILE), 0o600);
    expect(() => loadChallengeSecret(dir)).toThrow(/32-byte/);
  });
});
