import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { IssuerKeys, KeyStore } from "../../protocol/jwks.ts";

/**
 * An issuer's published keys cached in files of the user's own cache dir (0700, files 0600), so
 * that `apes grants verify`, one process per token, asks the issuer at most once per cache period.
 * protocol/jwks.ts re-checks every entry it reads (issuer, trust anchor, origins); `anchor` names
 * what the fetching connections trusted, so keys fetched under one trust never serve another.
 * Best effort: an unreadable or unwritable cache only costs a fetch.
 */
export function fileKeyStore(dir: string, anchor: string): KeyStore {
  const file = (cacheKey: string) =>
    join(dir, `${createHash("sha256").update(`${anchor}\n${cacheKey}`).digest("hex").slice(0, 32)}.json`);
  return {
    get(cacheKey) {
      try {
        return JSON.parse(readFileSync(file(cacheKey), "utf8")) as IssuerKeys;
      } catch {
        return undefined;
      }
    },
    set(cacheKey, value) {
      try {
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        const target = file(cacheKey);
        const tmp = `${target}.${process.pid}.tmp`;
        writeFileSync(tmp, JSON.stringify(value), { mode: 0o600 });
        renameSync(tmp, target);
      } catch {
        // read-only or full: the next verify fetches again
      }
    },
  };
}
