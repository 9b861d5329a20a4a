import type { KeyObject } from "node:crypto";
import { fingerprint, parseSshPublicKey } from "../protocol/keys.ts";

/** A user's registered ssh-ed25519 key as the IdP checks signatures with it. */
export interface RegisteredKey {
  key: KeyObject;
  /** `SHA256:...`, what an approval proof's key_fingerprint must name. */
  fingerprint: string;
}

/** Bounded: a cleared cache only costs a parse per key again. */
const MAX_KEPT = 10_000;
const parsed = new Map<string, RegisteredKey>();

/**
 * The key a stored `ssh-ed25519 AAAA...` line holds, parsed once per exact line: parsing (base64,
 * SSH wire format, DER import) and fingerprinting cost the IdP more than the signature check they
 * serve (bench/BENCHMARKS.md, "Against its own floor"). A changed key is another line, so nothing
 * stale is used. Throws KeyFormatError for a line that is not a key.
 */
export function registeredKey(line: string): RegisteredKey {
  let found = parsed.get(line);
  if (!found) {
    const key = parseSshPublicKey(line).key;
    found = { key, fingerprint: fingerprint(key) };
    if (parsed.size >= MAX_KEPT) parsed.clear();
    parsed.set(line, found);
  }
  return found;
}
