import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { registeredKey } from "../../idp/registered-keys.ts";
import { fingerprint, formatSshPublicKey, KeyFormatError, parseSshPublicKey } from "../../protocol/keys.ts";

describe("registered keys (idp/registered-keys.ts)", () => {
  it("parses a stored line once and gives its key and fingerprint", () => {
    const { publicKey } = generateKeyPairSync("ed25519");
    const line = formatSshPublicKey(publicKey, "alice@example.com");
    const first = registeredKey(line);
    expect(first.key.equals(publicKey)).toBe(true);
    expect(first.fingerprint).toBe(fingerprint(parseSshPublicKey(line).key));
    expect(registeredKey(line)).toBe(first);
  });

  it("a changed key is another line: never the old key", () => {
    const a = generateKeyPairSync("ed25519").publicKey;
    const b = generateKeyPairSync("ed25519").publicKey;
    const ka = registeredKey(formatSshPublicKey(a));
    const kb = registeredKey(formatSshPublicKey(b));
    expect(kb.key.equals(b)).toBe(true);
    expect(kb.fingerprint).not.toBe(ka.fingerprint);
  });

  it("refuses a line that is not an ssh-ed25519 key, every time", () => {
    for (const bad of [
      "",
      "ssh-rsa AAAAB3Nza",
      "ssh-ed25519 !!!",
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",
    ]) {
      expect(() => registeredKey(bad)).toThrow(KeyFormatError);
      expect(() => registeredKey(bad)).toThrow(KeyFormatError);
    }
  });
});
