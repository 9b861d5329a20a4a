import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import {
  closeSync,
  constants,
  existsSync,
  fstatSync,
  fsyncSync,
  linkSync,
  openSync,
  readSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";

/**
 * Stateless login challenges. A challenge is sealed with a server secret and carries the identity it
 * is for (in the MAC), its issue time and a random nonce, so the IdP stores nothing when it hands one
 * out: nobody can evict a victim's challenge by asking for many more. Single use is enforced at
 * authenticate time by recording the nonce as spent (Store.spendChallenge, one conditional insert);
 * the record expires with the challenge.
 *
 *   base64url( version(1) | issued_at(8, big endian) | nonce(16) | HMAC-SHA256(secret, context | id | prefix) )
 */

export const CHALLENGE_TTL = 300;
/** Challenges "issued" further in the future than this are refused (another instance's clock). */
const CLOCK_SKEW = 30;
const VERSION = 1;
const NONCE_BYTES = 16;
const PREFIX_BYTES = 1 + 8 + NONCE_BYTES;
const MAC_BYTES = 32;
const SEALED_LENGTH = Math.ceil(((PREFIX_BYTES + MAC_BYTES) * 4) / 3);
const MAC_CONTEXT = "apes-login-challenge-v1\n";

export const CHALLENGE_SECRET_FILE = "challenge-secret";
const SECRET_BYTES = 32;

export interface OpenedChallenge {
  /** Key of the spent-nonce record. */
  nonce: string;
  /** Unix seconds: when the challenge (and its spent record) expires. */
  expiresAt: number;
}

export class ChallengeSealer {
  private readonly secret: Buffer;
  constructor(secret: Buffer) {
    if (secret.length !== SECRET_BYTES) throw new Error(`the challenge secret must be ${SECRET_BYTES} bytes`);
    this.secret = secret;
  }

  private mac(id: string, prefix: Buffer): Buffer {
    return createHmac("sha256", this.secret).update(MAC_CONTEXT).update(`${id}\n`).update(prefix).digest();
  }

  /** A fresh challenge for `id` (the normalised identity), issued at `now` (Unix seconds). */
  issue(id: string, now: number): string {
    const prefix = Buffer.alloc(PREFIX_BYTES);
    prefix.writeUInt8(VERSION, 0);
    prefix.writeBigUInt64BE(BigInt(now), 1);
    randomBytes(NONCE_BYTES).copy(prefix, 9);
    return Buffer.concat([prefix, this.mac(id, prefix)]).toString("base64url");
  }

  /** The challenge's nonce when it is ours, for `id`, and live at `now`; otherwise undefined. */
  open(challenge: string, id: string, now: number): OpenedChallenge | undefined {
    if (challenge.length !== SEALED_LENGTH || !/^[A-Za-z0-9_-]+$/.test(challenge)) return undefined;
    const raw = Buffer.from(challenge, "base64url");
    if (raw.length !== PREFIX_BYTES + MAC_BYTES || raw[0] !== VERSION) return undefined;
    const prefix = raw.subarray(0, PREFIX_BYTES);
    if (!timingSafeEqual(raw.subarray(PREFIX_BYTES), this.mac(id, prefix))) return undefined;
    const issuedAt = Number(prefix.readBigUInt64BE(1));
    const expiresAt = issuedAt + CHALLENGE_TTL;
    if (now >= expiresAt || issuedAt > now + CLOCK_SKEW) return undefined;
    return { nonce: prefix.subarray(9).toString("base64url"), expiresAt };
  }
}

/**
 * The data dir's challenge secret, created on first start: written to a private temporary file and
 * linked into place, so the secret appears whole or not at all and two starts cannot install
 * different ones. A secret readable by others is refused (anyone holding it could mint challenges).
 */
export function loadChallengeSecret(dataDir: string): Buffer {
  const file = join(dataDir, CHALLENGE_SECRET_FILE);
  if (!existsSync(file)) {
    const tmp = `${file}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      writeSync(fd, randomBytes(SECRET_BYTES));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(tmp, file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    } finally {
      unlinkSync(tmp);
    }
  }
  const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || (st.mode & 0o077) !== 0 || st.size !== SECRET_BYTES) {
      throw new Error(
        `${file} must be a regular ${SECRET_BYTES}-byte file of mode 0600 (chmod 600 it, or remove it to make a new one)`,
      );
    }
    const secret = Buffer.alloc(SECRET_BYTES);
    if (readSync(fd, secret, 0, SECRET_BYTES, 0) !== SECRET_BYTES) throw new Error(`${file} is truncated`);
    return secret;
  } finally {
    closeSync(fd);
  }
}
