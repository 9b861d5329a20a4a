import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";

/**
 * The operator's database key file: 32 random bytes (raw, or as one line of base64), mode 0600 (or
 * stricter), never stored in the database. The signing keys are stored sealed with it (AES-256-GCM,
 * the kid as associated data so a sealed key cannot be moved to another row), and the login
 * challenge secret is derived from it (HKDF), so every instance that holds the file signs, verifies
 * and opens challenges alike, and a copy of the database alone reveals neither.
 *
 *   head -c 32 /dev/urandom > /etc/apes/idp-db.key && chmod 600 /etc/apes/idp-db.key
 */

export const KEY_BYTES = 32;
const SEALED_PREFIX = "aes256gcm:v1:";

export class KeyFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KeyFileError";
  }
}

/** Reads and checks the key file (a regular file, no access for group or others, 32 bytes). */
export function loadKeyFile(path: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    throw new KeyFileError(`cannot open the database key file ${path}: ${(e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new KeyFileError(`the database key file ${path} is not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new KeyFileError(
        `the database key file ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`,
      );
    }
    if (st.size > 256) throw new KeyFileError(`the database key file ${path} is too large`);
    const buf = Buffer.alloc(st.size);
    const n = st.size === 0 ? 0 : readSync(fd, buf, 0, st.size, 0);
    return parseKey(buf.subarray(0, n), path);
  } finally {
    closeSync(fd);
  }
}

function parseKey(buf: Buffer, path: string): Buffer {
  if (buf.length === KEY_BYTES) return Buffer.from(buf);
  const text = buf.toString("latin1").trim();
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) {
    const key = Buffer.from(text, "base64");
    if (key.length === KEY_BYTES) return key;
  }
  throw new KeyFileError(
    `the database key file ${path} must hold exactly ${KEY_BYTES} bytes (raw, or as base64): head -c 32 /dev/urandom > FILE`,
  );
}

/** A subkey for one purpose, so the file's key itself is used for one thing only. */
function subkey(key: Buffer, purpose: string): Buffer {
  return Buffer.from(hkdfSync("sha256", key, Buffer.alloc(0), `apes idp ${purpose} v1`, KEY_BYTES));
}

export function sealSecret(key: Buffer, kid: string, plaintext: string): string {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", subkey(key, "signing key seal"), iv);
  c.setAAD(Buffer.from(kid, "utf8"));
  const ct = Buffer.concat([c.update(plaintext, "utf8"), c.final()]);
  return SEALED_PREFIX + Buffer.concat([iv, c.getAuthTag(), ct]).toString("base64");
}

/** Opens a sealed value; a wrong key, another row's value or a changed byte are refused. */
export function openSecret(key: Buffer, kid: string, sealed: string): string {
  if (!sealed.startsWith(SEALED_PREFIX)) {
    throw new KeyFileError(`signing key ${kid} is not sealed with a database key file: refusing it`);
  }
  const raw = Buffer.from(sealed.slice(SEALED_PREFIX.length), "base64");
  if (raw.length < 12 + 16 + 1) throw new KeyFileError(`signing key ${kid}: sealed value is truncated`);
  const d = createDecipheriv("aes-256-gcm", subkey(key, "signing key seal"), raw.subarray(0, 12));
  d.setAAD(Buffer.from(kid, "utf8"));
  d.setAuthTag(raw.subarray(12, 28));
  try {
    return Buffer.concat([d.update(raw.subarray(28)), d.final()]).toString("utf8");
  } catch {
    throw new KeyFileError(
      `signing key ${kid} does not open with this database key file (another instance's file, or changed data)`,
    );
  }
}

/** The login challenge secret (idp/challenges.ts) every instance holding the key file shares. */
export function challengeSecretOf(key: Buffer): Buffer {
  return subkey(key, "login challenge secret");
}
