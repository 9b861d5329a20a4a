import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { IssuerKeys, KeyStore } from "./jwks.ts";

/**
 * protocol/jwks.ts's key store in files, for verifiers that run as one process per token (the
 * elevation verifier in its HOME, `apes grants verify` in the user's cache dir): one file per cache
 * key (trust anchor and issuer), 0600, written atomically so a concurrent reader never sees half.
 * JwksCache re-checks every entry it reads (issuer, anchor, origins), so a planted file can at worst
 * cost a fetch. Best effort: an unreadable or unwritable cache only costs a fetch, and a failed
 * write removes its temporary file, so failures cannot fill the directory.
 */
export function fileKeyStore(dir: string, options: { create?: boolean } = {}): KeyStore {
  const file = (key: string) =>
    join(dir, `jwks-${createHash("sha256").update(key).digest("hex").slice(0, 24)}.json`);
  return {
    get(key) {
      try {
        return JSON.parse(readFileSync(file(key), "utf8")) as IssuerKeys;
      } catch {
        return undefined;
      }
    },
    set(key, value) {
      const target = file(key);
      const tmp = `${target}.${process.pid}.tmp`;
      try {
        if (options.create) mkdirSync(dir, { recursive: true, mode: 0o700 });
        writeFileSync(tmp, JSON.stringify(value), { mode: 0o600 });
        renameSync(tmp, target);
      } catch {
        try {
          rmSync(tmp, { force: true });
        } catch {
          // nothing more to do: the next fetch tries again
        }
      }
    },
  };
}

/** The trust anchor of connections made with `ca` (a pinned PEM) or the system roots. */
export function trustAnchorId(ca: string | undefined): string {
  return ca ? `sha256:${createHash("sha256").update(ca).digest("hex")}` : "system-roots";
}
