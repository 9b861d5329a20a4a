import { execFileSync } from "node:child_process";
import { generateKeyPairSync, sign, verify } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  fingerprint,
  formatOpenSshPrivateKey,
  formatSshPublicKey,
  KeyFormatError,
  parsePrivateKey,
  parseSshPublicKey,
  publicKeyFromRaw,
  rawPublicKey,
} from "../../protocol/keys.ts";

const hasSshKeygen = (() => {
  try {
    execFileSync("ssh-keygen", ["-?"], { stdio: "ignore" });
    return true;
  } catch (e) {
    return (e as { status?: number }).status !== undefined && (e as { code?: string }).code !== "ENOENT";
  }
})();

describe("Ed25519 key formats", () => {
  it("round-trips OpenSSH private and public keys and signs with them", () => {
    const { privateKey } = generateKeyPairSync("ed25519");
    const text = formatOpenSshPrivateKey(privateKey, "agent@example.com");
    const parsed = parsePrivateKey(text);
    const pubLine = formatSshPublicKey(privateKey, "agent@example.com");
    const { key, comment } = parseSshPublicKey(pubLine);
    expect(comment).toBe("agent@example.com");
    const sig = sign(null, Buffer.from("challenge"), parsed);
    expect(verify(null, Buffer.from("challenge"), key, sig)).toBe(true);
    expect(fingerprint(parsed)).toBe(fingerprint(key));
    expect(fingerprint(key)).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });

  it("reads PKCS#8 PEM keys", () => {
    const { privateKey } = generateKeyPairSync("ed25519");
    const pem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
    expect(fingerprint(parsePrivateKey(pem))).toBe(fingerprint(privateKey));
  });

  it.runIf(hasSshKeygen)("interoperates with ssh-keygen both ways", () => {
    const dir = mkdtempSync(join(tmpdir(), "apes-keys-"));
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "x@y", "-f", join(dir, "k")]);
    const key = parsePrivateKey(readFileSync(join(dir, "k"), "utf8"));
    const pub = readFileSync(join(dir, "k.pub"), "utf8").trim();
    expect(formatSshPublicKey(key, "x@y")).toBe(pub);
    const sshFp = execFileSync("ssh-keygen", ["-l", "-f", join(dir, "k.pub")], { encoding: "utf8" }).split(
      " ",
    )[1];
    expect(fingerprint(key)).toBe(sshFp);
    // ssh-keygen accepts what we write: derive the public key from our private key file.
    writeFileSync(join(dir, "ours"), formatOpenSshPrivateKey(key, "x@y"), { mode: 0o600 });
    const derived = execFileSync("ssh-keygen", ["-y", "-f", join(dir, "ours")], { encoding: "utf8" }).trim();
    expect(derived.split(" ").slice(0, 2)).toEqual(pub.split(" ").slice(0, 2));
  });

  it("says clearly when a key is encrypted", () => {
    expect(() =>
      parsePrivateKey("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----"),
    ).toThrow(expect.objectContaining({ encrypted: true }));
    const { privateKey } = generateKeyPairSync("ed25519");
    const encrypted = privateKey.export({
      format: "pem",
      type: "pkcs8",
      cipher: "aes-256-cbc",
      passphrase: "pw",
    });
    expect(() => parsePrivateKey(encrypted.toString())).toThrow(KeyFormatError);
  });

  it.runIf(hasSshKeygen)("detects an encrypted OpenSSH key", () => {
    const dir = mkdtempSync(join(tmpdir(), "apes-keys-"));
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "secret", "-f", join(dir, "k")]);
    expect(() => parsePrivateKey(readFileSync(join(dir, "k"), "utf8"))).toThrow(
      expect.objectContaining({ encrypted: true, message: expect.stringContaining("encrypted") }),
    );
  });

  it("rejects malformed public keys precisely", () => {
    expect(() => parseSshPublicKey("ssh-rsa AAAAB3Nza")).toThrow(/only ssh-ed25519/);
    expect(() => parseSshPublicKey("ssh-ed25519")).toThrow(/expected/);
    expect(() => parseSshPublicKey("ssh-ed25519 !!!notbase64")).toThrow(KeyFormatError);
    expect(() => parseSshPublicKey("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==")).toThrow(KeyFormatError);
  });

  it("rejects garbage and public keys given as private keys", () => {
    expect(() => parsePrivateKey("hello")).toThrow(/not an OpenSSH or PKCS#8/);
    expect(() => parsePrivateKey("ssh-ed25519 AAAA")).toThrow(/public key/);
    expect(() =>
      parsePrivateKey(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
      ),
    ).toThrow(/corrupt|truncated/);
  });

  it("takes the raw key from either half of a pair, the same 32 bytes as the SPKI encoding ends with", () => {
    for (let i = 0; i < 100; i++) {
      const { publicKey, privateKey } = generateKeyPairSync("ed25519");
      const der = publicKey.export({ format: "der", type: "spki" });
      const raw = rawPublicKey(publicKey);
      expect(raw).toEqual(der.subarray(der.length - 32));
      expect(rawPublicKey(privateKey)).toEqual(raw);
      expect(publicKeyFromRaw(raw).equals(publicKey)).toBe(true);
    }
  });

  it("refuses a key that is not Ed25519", () => {
    for (const other of [
      generateKeyPairSync("x25519").publicKey,
      generateKeyPairSync("ed448").privateKey,
      generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey,
    ]) {
      expect(() => rawPublicKey(other)).toThrow(/not an Ed25519 key/);
      expect(() => fingerprint(other)).toThrow(KeyFormatError);
    }
  });
});
