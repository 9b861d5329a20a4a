import { createHash } from "node:crypto";
import {
  type AuthenticationResponseJSON,
  type AuthenticatorTransportFuture,
  generateAuthenticationOptions,
  generateRegistrationOptions,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
} from "@simplewebauthn/server";
import { ProblemError } from "../../protocol/problem.ts";
import { CHALLENGE_TTL } from "../challenges.ts";
import type { PasskeyRecord } from "../store/types.ts";
import type { WebContext } from "./context.ts";

/**
 * Passkeys (WebAuthn) with @simplewebauthn/server. User verification is required. Challenges are
 * stateless like the key-login ones (idp/challenges.ts, under a key of their own): a challenge is
 * sealed over its purpose and a digest of caller-supplied binding bytes, so an assertion made for
 * one purpose (login: no binding; an approval: grant id, request digest, decision) verifies for
 * nothing else; it is single use (its nonce is recorded as spent once the assertion verified) and
 * lives CHALLENGE_TTL seconds.
 *
 * The sign counter is kept: an assertion whose counter does not exceed the stored one (when either
 * is non-zero) comes from a cloned authenticator or a replay, and is refused and logged.
 */

const ALLOWED_TRANSPORTS: ReadonlySet<string> = new Set([
  "ble",
  "cable",
  "hybrid",
  "internal",
  "nfc",
  "smart-card",
  "usb",
]);
const B64URL = /^[A-Za-z0-9_-]*$/;
/** Generous bounds for the browser's strings (credential ids are at most 1023 bytes). */
const MAX_ID = 1400;
const MAX_FIELD = 16_384;

/** The same message for every failed login (which emails and credentials exist is not revealed). */
export const SIGN_IN_FAILED = "sign-in failed";

const digest = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("base64url");
const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64url");
const assertionPurpose = (binding: Uint8Array) => `webauthn.get\n${digest(binding)}`;
const registrationPurpose = (email: string, inviteId: string) => `webauthn.create\n${inviteId}\n${email}`;

/** A fresh copy in its own ArrayBuffer (what @simplewebauthn/server's types ask for). */
const bytes = (b: Buffer): Uint8Array<ArrayBuffer> => new Uint8Array(b);

function newChallenge(ctx: WebContext, purpose: string): Uint8Array<ArrayBuffer> {
  return bytes(Buffer.from(ctx.challenges.issue(purpose, ctx.idp.now()), "base64url"));
}

/** The user handle of `email` (the same for all its passkeys, so an authenticator keeps one per account). */
function userHandle(email: string): Uint8Array<ArrayBuffer> {
  return bytes(createHash("sha256").update(`apes-webauthn-user\0${email}`).digest());
}

function transportsOf(list: readonly string[]): AuthenticatorTransportFuture[] {
  return list.filter((t) => ALLOWED_TRANSPORTS.has(t)) as AuthenticatorTransportFuture[];
}

/**
 * Options for `navigator.credentials.get` (startAuthentication in the page). With `email`, only that
 * user's passkeys are allowed (a step-up for a known, signed-in user); without, any discoverable one
 * (login: nothing about which accounts exist is revealed).
 */
export async function startAssertion(
  ctx: WebContext,
  opts: { email?: string; binding: Uint8Array },
): Promise<PublicKeyCredentialRequestOptionsJSON> {
  const allow =
    opts.email === undefined
      ? undefined
      : (await ctx.idp.store.listPasskeys(opts.email)).map((p) => ({
          id: p.credentialId,
          transports: transportsOf(p.transports),
        }));
  return generateAuthenticationOptions({
    rpID: ctx.rpId,
    challenge: newChallenge(ctx, assertionPurpose(opts.binding)),
    timeout: CHALLENGE_TTL * 1000,
    userVerification: "required",
    ...(allow ? { allowCredentials: allow } : {}),
  });
}

/** Why the counters show a cloned authenticator (or a replay); undefined: they are fine. Pure. */
export function counterProblem(stored: number, received: number): string | undefined {
  if (stored === 0 && received === 0) return undefined; // an authenticator that keeps no counter
  if (received <= stored) return `the sign counter went from ${stored} to ${received}`;
  return undefined;
}

/**
 * Verifies an assertion made on startAssertion's options for the same `binding` (and, with `email`,
 * by that user): signature, origin, RP ID, user verification, challenge (ours, this purpose,
 * live, unspent), credential (registered, its user an enabled human), counter. Spends the
 * challenge and records the use. Throws a 401 problem with SIGN_IN_FAILED otherwise.
 */
export async function verifyAssertion(
  ctx: WebContext,
  response: unknown,
  opts: { binding: Uint8Array; email?: string },
): Promise<{ email: string; credentialId: string }> {
  const idp = ctx.idp;
  const fail = (reason: string, extra: Record<string, string | number> = {}): never => {
    idp.log.log("warn", "passkey assertion refused", { reason, ...extra });
    throw new ProblemError("invalid_token", SIGN_IN_FAILED);
  };
  const r = assertionResponse(response);
  if (!r) return fail("malformed response");
  const passkey = await idp.store.getPasskey(r.id);
  if (!passkey) return fail("unknown credential");
  if (opts.email !== undefined && passkey.email !== opts.email) return fail("credential of another user");
  // A discoverable credential names its account too: it must be the one the credential is stored for.
  if (r.response.userHandle !== undefined && r.response.userHandle !== b64(userHandle(passkey.email))) {
    return fail("user handle of another account");
  }
  const user = await idp.store.getUser(passkey.email);
  if (!user || user.disabled || user.kind !== "human") return fail("user disabled or unknown");
  const purpose = assertionPurpose(opts.binding);
  const now = idp.now();
  let opened: ReturnType<typeof ctx.challenges.open>;
  let result: Awaited<ReturnType<typeof verifyAuthenticationResponse>>;
  try {
    result = await verifyAuthenticationResponse({
      response: r,
      expectedChallenge: (c) => {
        opened = ctx.challenges.open(c, purpose, now);
        return opened !== undefined;
      },
      expectedOrigin: ctx.origin,
      expectedRPID: ctx.rpId,
      // Counter 0: the counter is checked below, where a regression is told apart and logged.
      credential: {
        id: passkey.credentialId,
        publicKey: bytes(Buffer.from(passkey.publicKey, "base64url")),
        counter: 0,
        transports: transportsOf(passkey.transports),
      },
      requireUserVerification: true,
    });
  } catch (e) {
    return fail("verification failed", { error: (e as Error).message.slice(0, 200) });
  }
  if (!result.verified || !opened) return fail("verification failed");
  const info = result.authenticationInfo;
  const regression = counterProblem(passkey.counter, info.newCounter);
  if (regression) {
    idp.log.log("error", "passkey counter regression: possibly a cloned authenticator; refused", {
      sub: passkey.email,
      credential: passkey.credentialId.slice(0, 16),
      stored: passkey.counter,
      received: info.newCounter,
    });
    throw new ProblemError("invalid_token", SIGN_IN_FAILED);
  }
  // Spent only once verified: a stranger who saw the challenge cannot burn it.
  if (!(await idp.store.spendChallenge(opened.nonce, `webauthn:${passkey.email}`, opened.expiresAt))) {
    return fail("challenge already used");
  }
  const recorded = await idp.store.recordPasskeyUse(passkey.credentialId, {
    fromCounter: passkey.counter,
    counter: info.newCounter,
    backedUp: info.credentialBackedUp,
    usedAt: now,
  });
  if (!recorded) return fail("concurrent use of the credential");
  return { email: passkey.email, credentialId: passkey.credentialId };
}

/** Options for `navigator.credentials.create` for `email`, bound to the invite being redeemed. */
export async function startRegistration(
  ctx: WebContext,
  opts: { email: string; inviteId: string },
): Promise<PublicKeyCredentialCreationOptionsJSON> {
  const existing = await ctx.idp.store.listPasskeys(opts.email);
  return generateRegistrationOptions({
    rpName: ctx.rpName,
    rpID: ctx.rpId,
    userName: opts.email,
    userID: userHandle(opts.email),
    challenge: newChallenge(ctx, registrationPurpose(opts.email, opts.inviteId)),
    timeout: CHALLENGE_TTL * 1000,
    attestationType: "none",
    // An authenticator that already holds one of this user's passkeys is not registered twice.
    excludeCredentials: existing.map((p) => ({ id: p.credentialId, transports: transportsOf(p.transports) })),
    authenticatorSelection: { residentKey: "required", userVerification: "required" },
  });
}

/**
 * Verifies a registration made on startRegistration's options for the same email and invite; returns
 * the passkey to store (not stored here: the caller spends the invite first). Throws 400 otherwise.
 */
export async function verifyRegistration(
  ctx: WebContext,
  response: unknown,
  opts: { email: string; inviteId: string },
): Promise<{ passkey: PasskeyRecord; nonce: string; expiresAt: number }> {
  const idp = ctx.idp;
  const fail = (reason: string, extra: Record<string, string> = {}): never => {
    idp.log.log("warn", "passkey registration refused", { reason, ...extra });
    throw new ProblemError("invalid_request", "the passkey could not be registered");
  };
  const r = registrationResponse(response);
  if (!r) return fail("malformed response");
  const purpose = registrationPurpose(opts.email, opts.inviteId);
  const now = idp.now();
  let opened: ReturnType<typeof ctx.challenges.open>;
  let result: Awaited<ReturnType<typeof verifyRegistrationResponse>>;
  try {
    result = await verifyRegistrationResponse({
      response: r,
      expectedChallenge: (c) => {
        opened = ctx.challenges.open(c, purpose, now);
        return opened !== undefined;
      },
      expectedOrigin: ctx.origin,
      expectedRPID: ctx.rpId,
      requireUserVerification: true,
    });
  } catch (e) {
    return fail("verification failed", { error: (e as Error).message.slice(0, 200) });
  }
  if (!result.verified || !opened) return fail("verification failed");
  const info = result.registrationInfo;
  const passkey: PasskeyRecord = {
    credentialId: info.credential.id,
    email: opts.email,
    publicKey: Buffer.from(info.credential.publicKey).toString("base64url"),
    counter: info.credential.counter,
    transports: transportsOf(info.credential.transports ?? r.response.transports ?? []),
    deviceType: info.credentialDeviceType,
    backedUp: info.credentialBackedUp,
    createdAt: now,
  };
  return { passkey, nonce: opened.nonce, expiresAt: opened.expiresAt };
}

// --- bounded parsing of what the browser sends (simplewebauthn checks the meaning) ---

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const isB64 = (v: unknown, max: number, optional = false): boolean =>
  (optional && v === undefined) || (typeof v === "string" && v.length <= max && B64URL.test(v));

function assertionResponse(v: unknown): AuthenticationResponseJSON | undefined {
  if (!isObject(v) || v.type !== "public-key" || !isObject(v.response)) return undefined;
  if (!isB64(v.id, MAX_ID) || v.id === "" || v.rawId !== v.id) return undefined;
  const a = v.response;
  if (
    !isB64(a.clientDataJSON, MAX_FIELD) ||
    !isB64(a.authenticatorData, MAX_FIELD) ||
    !isB64(a.signature, 1024)
  )
    return undefined;
  if (!isB64(a.userHandle, 512, true)) return undefined;
  return {
    id: v.id as string,
    rawId: v.id as string,
    type: "public-key",
    response: {
      clientDataJSON: a.clientDataJSON as string,
      authenticatorData: a.authenticatorData as string,
      signature: a.signature as string,
      ...(a.userHandle === undefined ? {} : { userHandle: a.userHandle as string }),
    },
    clientExtensionResults: {},
  };
}

function registrationResponse(v: unknown): RegistrationResponseJSON | undefined {
  if (!isObject(v) || v.type !== "public-key" || !isObject(v.response)) return undefined;
  if (!isB64(v.id, MAX_ID) || v.id === "" || v.rawId !== v.id) return undefined;
  const a = v.response;
  if (!isB64(a.clientDataJSON, MAX_FIELD) || !isB64(a.attestationObject, MAX_FIELD)) return undefined;
  const transports = Array.isArray(a.transports)
    ? transportsOf(a.transports.filter((t): t is string => typeof t === "string").slice(0, 10))
    : [];
  return {
    id: v.id as string,
    rawId: v.id as string,
    type: "public-key",
    response: {
      clientDataJSON: a.clientDataJSON as string,
      attestationObject: a.attestationObject as string,
      transports,
    },
    clientExtensionResults: {},
  };
}
