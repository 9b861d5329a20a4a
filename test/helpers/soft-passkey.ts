import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from "node:crypto";
import type { PasskeyRecord } from "../../idp/store/types.ts";

/**
 * A software WebAuthn authenticator (ES256, "none" attestation) for in-process tests of
 * idp/web/passkeys.ts: it makes the passkey record a registration would have stored and answers
 * assertion options the way a browser and an authenticator together do, with knobs to get each
 * part wrong (origin, RP ID, user verification, counter). Browser tests use the CDP virtual
 * authenticator instead (test/helpers/browser.ts).
 */

const b64u = (b: Buffer | Uint8Array) => Buffer.from(b).toString("base64url");

export interface SoftPasskey {
  credentialId: string;
  /** The record a registration of this passkey for `email` stores. */
  record(email: string, createdAt?: number): PasskeyRecord;
  /** An AuthenticationResponseJSON for `options` (from startAssertion). */
  assert(options: { challenge: string; rpId?: string }, o?: AssertOptions): Record<string, unknown>;
  /** The next counter value this authenticator signs (0 keeps it at 0: no counter). */
  counter: number;
}

export interface AssertOptions {
  origin?: string;
  rpId?: string;
  userVerified?: boolean;
  /** Sign this counter instead of the next one. */
  counter?: number;
  type?: string;
  /** The user handle a discoverable credential returns (base64url). */
  userHandle?: string;
}

/** COSE_Key (RFC 9053) of a P-256 public key, CBOR-encoded by hand: {1:2, 3:-7, -1:1, -2:x, -3:y}. */
function coseKey(publicKey: KeyObject): Buffer {
  const jwk = publicKey.export({ format: "jwk" });
  const x = Buffer.from(jwk.x!, "base64url");
  const y = Buffer.from(jwk.y!, "base64url");
  return Buffer.concat([
    Buffer.from([0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20]),
    x,
    Buffer.from([0x22, 0x58, 0x20]),
    y,
  ]);
}

export function softPasskey(defaults: { origin: string; rpId: string }, counting = true): SoftPasskey {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const credentialId = b64u(randomBytes(16));
  const key: SoftPasskey = {
    credentialId,
    counter: counting ? 1 : 0,
    record: (email, createdAt = 1) => ({
      credentialId,
      email,
      publicKey: b64u(coseKey(publicKey)),
      counter: 0,
      transports: ["internal"],
      deviceType: "singleDevice",
      backedUp: false,
      createdAt,
    }),
    assert(options, o = {}) {
      const counter = o.counter ?? key.counter;
      if (o.counter === undefined && counting) key.counter++;
      const rpIdHash = createHash("sha256")
        .update(o.rpId ?? options.rpId ?? defaults.rpId)
        .digest();
      const flags = 0x01 | (o.userVerified === false ? 0 : 0x04); // UP, UV
      const counterBytes = Buffer.alloc(4);
      counterBytes.writeUInt32BE(counter);
      const authData = Buffer.concat([rpIdHash, Buffer.from([flags]), counterBytes]);
      const clientData = Buffer.from(
        JSON.stringify({
          type: o.type ?? "webauthn.get",
          challenge: options.challenge,
          origin: o.origin ?? defaults.origin,
          crossOrigin: false,
        }),
      );
      const signature = sign(
        "sha256",
        Buffer.concat([authData, createHash("sha256").update(clientData).digest()]),
        privateKey,
      );
      return {
        id: credentialId,
        rawId: credentialId,
        type: "public-key",
        response: {
          clientDataJSON: b64u(clientData),
          authenticatorData: b64u(authData),
          signature: b64u(signature),
          ...(o.userHandle === undefined ? {} : { userHandle: o.userHandle }),
        },
        clientExtensionResults: {},
      };
    },
  };
  return key;
}
