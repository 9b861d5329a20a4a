import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import { rawPublicKey } from "../protocol/keys.ts";
import type { SigningKeyRecord, Store } from "./store/types.ts";
import type { SigningKey } from "./tokens.ts";

/**
 * The IdP's Ed25519 signing keys. The newest unretired key signs; retired keys stay published in the
 * JWKS (and accepted) until every token they signed has expired (`max_exp`). Keys live in the
 * database (0600); imported KeyObjects are cached. `apes idp keys rotate` runs in another process:
 * the server notices through the store's change marker before it signs or meets an unknown kid.
 */

export interface Jwk {
  kty: "OKP";
  crv: "Ed25519";
  x: string;
  kid: string;
  alg: "EdDSA";
  use: "sig";
}

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
export function rotateKeys(store: Store, now: number): SigningKeyRecord {
  const rec = newSigningKeyRecord(now);
  store.addSigningKey(rec);
  store.retireSigningKeys(rec.kid, now);
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
  private marker = -1;

  constructor(store: Store, now: number) {
    this.store = store;
    this.reload(now);
  }

  /** Re-reads the keys when another process changed the database (cheap: one pragma). */
  refresh(now: number): void {
    const m = this.store.externalChangeMarker();
    if (m !== this.marker) this.reload(now);
  }

  private reload(now: number): void {
    this.marker = this.store.externalChangeMarker();
    let recs = this.store.listSigningKeys();
    if (!recs.some((r) => r.retiredAt === undefined)) {
      rotateKeys(this.store, now); // first start (or every key retired): create one
      recs = this.store.listSigningKeys();
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
  signingKey(now: number, exp: number): SigningKey {
    this.refresh(now);
    const k = this.active!;
    if (exp > k.rec.maxExp) {
      this.store.raiseKeyMaxExp(k.rec.kid, exp);
      k.rec.maxExp = exp;
    }
    return { kid: k.rec.kid, privateKey: k.privateKey };
  }

  /** The verification key for kid, if it is still published. */
  publicKey(kid: string, now: number): KeyObject | undefined {
    let k = this.keys.get(kid);
    if (!k) {
      this.refresh(now);
      k = this.keys.get(kid);
    }
    if (!k || !this.published(k, now)) return undefined;
    return k.publicKey;
  }

  /** A retired key is published (and accepted) while a token it signed may still be unexpired. */
  private published(k: LoadedKey, now: number): boolean {
    return k.rec.retiredAt === undefined || k.rec.maxExp > now;
  }

  jwks(now: number): { keys: Jwk[] } {
    this.refresh(now);
    return { keys: [...this.keys.values()].filter((k) => this.published(k, now)).map((k) => k.jwk) };
  }

  activeKid(): string {
    return this.active!.rec.kid;
  }
}
