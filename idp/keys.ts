import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import type { Jwk } from "../protocol/jwt.ts";
import { rawPublicKey } from "../protocol/keys.ts";
import type { SigningKeyRecord, Store } from "./store/types.ts";
import { checkClaims, decodeJwt, type SigningKey, type VerifyOptions, verifySignature } from "./tokens.ts";

/**
 * The IdP's Ed25519 signing keys. The newest unretired key signs; retired keys stay published in the
 * JWKS (and accepted) until every token they signed has expired (`max_exp`). Keys live in the
 * database (0600); imported KeyObjects are cached. `apes idp keys rotate` runs in another process:
 * the server notices through the store's change marker before it signs or meets an unknown kid (a
 * store without one is read every time).
 */

/** RFC 7638 JWK thumbprint: a stable kid derived from the public key. */
export function jwkThumbprint(x: string): string {
  return createHash("sha256").update(`{"crv":"Ed25519","kty":"OKP","x":"${x}"}`).digest("base64url");
}

export function newSigningKeyRecord(now: number): SigningKeyRecord {
  const { privateKey } = generateKeyPairSync("ed25519");
  const x = rawPublicKey(privateKey).toString("base64url");
  return {
    kid: jwkThumbprint(x),
    privateKey: privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
    createdAt: now,
    maxExp: 0,
  };
}

/** Adds a new key and retires the others (they stay published until their tokens expire). */
export async function rotateKeys(store: Store, now: number): Promise<SigningKeyRecord> {
  const rec = newSigningKeyRecord(now);
  await store.addSigningKey(rec);
  await store.retireSigningKeys(rec.kid, now);
  return rec;
}

interface LoadedKey {
  rec: SigningKeyRecord;
  privateKey: KeyObject;
  publicKey: KeyObject;
  jwk: Jwk;
}

export class Keyring {
  private readonly store: Store;
  private keys = new Map<string, LoadedKey>();
  private active: LoadedKey | undefined;
  private marker: number | undefined;
  /** One re-read at a time: concurrent callers wait for the same one. */
  private reloading: Promise<void> | undefined;

  private constructor(store: Store) {
    this.store = store;
  }

  /** The keyring of `store`, creating the first key when there is none. */
  static async open(store: Store, now: number): Promise<Keyring> {
    const ring = new Keyring(store);
    await ring.reload(now);
    return ring;
  }

  /** Re-reads the keys when another process changed the database (cheap: one counter). */
  async refresh(now: number): Promise<void> {
    if (this.reloading) return this.reloading;
    const m = this.store.lifecycle?.changeMarker?.("keys");
    if (m === undefined || m !== this.marker) await this.reload(now);
  }

  private reload(now: number): Promise<void> {
    this.reloading ??= this.read(now).finally(() => {
      this.reloading = undefined;
    });
    return this.reloading;
  }

  private async read(now: number): Promise<void> {
    this.marker = this.store.lifecycle?.changeMarker?.("keys");
    let recs = await this.store.listSigningKeys();
    if (!recs.some((r) => r.retiredAt === undefined)) {
      // First start (or every key retired): add one, retiring none. Instances starting together on
      // one database may each add one; all then sign with the newest, and the others stay valid.
      await this.store.addSigningKey(newSigningKeyRecord(now));
      recs = await this.store.listSigningKeys();
    }
    const next = new Map<string, LoadedKey>();
    for (const rec of recs) {
      const old = this.keys.get(rec.kid);
      if (old) {
        old.rec = rec;
        next.set(rec.kid, old);
        continue;
      }
      const privateKey = createPrivateKey(rec.privateKey);
      const publicKey = createPublicKey(privateKey);
      const x = rawPublicKey(publicKey).toString("base64url");
      next.set(rec.kid, {
        rec,
        privateKey,
        publicKey,
        jwk: { kty: "OKP", crv: "Ed25519", x, kid: rec.kid, alg: "EdDSA", use: "sig" },
      });
    }
    this.keys = next;
    const activeRecs = recs.filter((r) => r.retiredAt === undefined);
    this.active = next.get(activeRecs[activeRecs.length - 1]!.kid);
  }

  /**
   * The key to sign with; records that it has signed a token expiring at `exp`. The record is the
   * exact last expiry, so a retired key disappears as soon as its last token has expired. It costs
   * one write per later `exp` (at most about one a second: exp has whole seconds), in the same
   * commit as the request's other writes, durable before the token is handed out.
   */
  async signingKey(now: number, exp: number): Promise<SigningKey> {
    await this.refresh(now);
    const k = this.active!;
    if (exp > k.rec.maxExp) {
      await this.store.raiseKeyMaxExp(k.rec.kid, exp);
      k.rec.maxExp = Math.max(k.rec.maxExp, exp);
    }
    return { kid: k.rec.kid, privateKey: k.privateKey };
  }

  /** The verification key for kid, if it is still published. */
  async publicKey(kid: string, now: number): Promise<KeyObject | undefined> {
    let k = this.keys.get(kid);
    if (!k) {
      // A token signed by another instance's new key can arrive before the notice of it.
      await this.store.lifecycle?.sync?.();
      await this.refresh(now);
      k = this.keys.get(kid);
    }
    if (!k || !this.published(k, now)) return undefined;
    return k.publicKey;
  }

  /** Verifies a token this IdP signed (signature with a published key, then the claim checks). */
  async verify(token: string, checks: VerifyOptions): Promise<Record<string, unknown>> {
    const d = decodeJwt(token);
    const kid = d.header.kid;
    const key = typeof kid === "string" && kid !== "" ? await this.publicKey(kid, checks.now) : undefined;
    verifySignature(d, () => key);
    checkClaims(d.payload, checks);
    return d.payload;
  }

  /** A retired key is published (and accepted) while a token it signed may still be unexpired. */
  private published(k: LoadedKey, now: number): boolean {
    return k.rec.retiredAt === undefined || k.rec.maxExp > now;
  }

  async jwks(now: number): Promise<{ keys: Jwk[] }> {
    await this.refresh(now);
    return { keys: [...this.keys.values()].filter((k) => this.published(k, now)).map((k) => k.jwk) };
  }

  activeKid(): string {
    return this.active!.rec.kid;
  }
}
