import { createHash, randomBytes } from "node:crypto";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { InviteRecord } from "../store/types.ts";

/**
 * One-time registration links: `<issuer>/invite#<secret>`. The secret (32 random bytes) is in the
 * fragment, which browsers never send: it reaches no server log, proxy or Referer; the page's
 * script posts it. The store keeps only its SHA-256. Made by the offline admin commands
 * (`apes idp users add --invite`, `apes idp users invite`), spent by one conditional update when a
 * passkey is registered with it.
 */

export const DEFAULT_INVITE_TTL = 24 * 3600;
export const MAX_INVITE_TTL = 30 * 24 * 3600;
export const INVITE_PATH = "/invite";
const SECRET = /^[A-Za-z0-9_-]{43}$/;

/** The stored id of an invite secret; undefined for anything that is not one. */
export function inviteId(secret: string): string | undefined {
  if (!SECRET.test(secret)) return undefined;
  return createHash("sha256").update(`apes-invite\0${secret}`).digest("base64url");
}

export function newInvite(email: string, now: number, ttl: number): { secret: string; record: InviteRecord } {
  const secret = randomBytes(32).toString("base64url");
  return { secret, record: { id: inviteId(secret)!, email, createdAt: now, expiresAt: now + ttl } };
}

export function inviteUrl(issuer: string, secret: string): string {
  return `${issuer.replace(/\/+$/, "")}${INVITE_PATH}#${secret}`;
}

export const ISSUER_FILE = "issuer";

/**
 * The server writes its issuer into the data dir at every start, so the offline admin commands can
 * print invite links without being told it (written whole: a temporary file renamed into place).
 */
export function recordIssuer(dataDir: string, issuer: string): void {
  const file = join(dataDir, ISSUER_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${issuer}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

/** The issuer the last server on this data dir ran as; undefined when none has run. */
export function recordedIssuer(dataDir: string): string | undefined {
  try {
    const text = readFileSync(join(dataDir, ISSUER_FILE), "utf8").trim();
    return /^https?:\/\/[^\s]{1,2000}$/.test(text) ? text : undefined;
  } catch {
    return undefined;
  }
}
