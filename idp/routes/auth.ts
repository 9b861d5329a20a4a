import { type KeyObject, randomUUID } from "node:crypto";
import { ProblemError } from "../../protocol/problem.ts";
import {
  SIGNATURE_FORMAT_RAW,
  SIGNATURE_FORMAT_V1,
  SignatureInputError,
  signingInput,
} from "../../protocol/signatures.ts";
import { CLI_TOKEN_AUDIENCE } from "../../protocol/types.ts";
import { ed25519Verify } from "../../server/offload.ts";
import { CHALLENGE_TTL, type ChallengeSealer } from "../challenges.ts";
import type { Idp, Principal } from "../context.ts";
import { jsonBody, onlyFields, type Router } from "../http.ts";
import { registeredKey } from "../registered-keys.ts";
import type { UserRecord } from "../store/types.ts";
import { signToken } from "../tokens.ts";
import { PATHS } from "./discovery.ts";

export interface LoginSettings {
  challenges: ChallengeSealer;
  /** Also accept the older raw signature over the bare challenge (an opt-in compatibility mode). */
  allowRawSignatures: boolean;
}

/** The signature formats this IdP verifies, as advertised in discovery (docs/signatures.md). */
export function loginSignatureFormats(settings: Pick<LoginSettings, "allowRawSignatures">): string[] {
  return settings.allowRawSignatures ? [SIGNATURE_FORMAT_V1, SIGNATURE_FORMAT_RAW] : [SIGNATURE_FORMAT_V1];
}

/**
 * Which accepted format `signature` is in, or undefined. The v1 message names this IdP (its issuer)
 * and the id exactly as the client sent it, so a signature made for another IdP or purpose fails.
 */
async function verifiedFormat(
  idp: Idp,
  settings: LoginSettings,
  sentId: string,
  challenge: string,
  key: KeyObject,
  signature: Buffer,
): Promise<string | undefined> {
  try {
    if (await ed25519Verify(signingInput("login", idp.base, sentId, challenge), key, signature)) {
      return SIGNATURE_FORMAT_V1;
    }
  } catch (e) {
    if (!(e instanceof SignatureInputError)) throw e;
  }
  if (settings.allowRawSignatures && (await ed25519Verify(Buffer.from(challenge, "utf8"), key, signature))) {
    return SIGNATURE_FORMAT_RAW;
  }
  return undefined;
}

/** The identity in a challenge/authenticate body: `id` (current) or `agent_id` (older clients). */
function subjectOf(body: Record<string, unknown>): string {
  const id = body.id ?? body.agent_id;
  if (body.id !== undefined && body.agent_id !== undefined && body.id !== body.agent_id) {
    throw new ProblemError("invalid_request", "id and agent_id differ");
  }
  if (typeof id !== "string" || id.length === 0 || id.length > 254) {
    throw new ProblemError("invalid_request", "id (the email of the identity) is required");
  }
  return id.toLowerCase();
}

/** Issues a session token `{iss, sub, aud: apes-cli, act, iat, exp, jti}` for a user. */
export async function issueSessionToken(
  idp: Idp,
  user: UserRecord,
): Promise<{ token: string; expiresIn: number }> {
  const iat = idp.now();
  const exp = iat + idp.tokenTtl;
  const token = await signToken(
    {
      iss: idp.issuer,
      sub: user.email,
      aud: CLI_TOKEN_AUDIENCE,
      act: user.kind,
      iat,
      exp,
      jti: randomUUID(),
    },
    await idp.keys.signingKey(iat, exp),
  );
  return { token, expiresIn: idp.tokenTtl };
}

export function registerAuthRoutes(router: Router<Principal>, idp: Idp, settings: LoginSettings): void {
  const challenge = async (call: Parameters<Parameters<typeof router.add>[3]>[0]) => {
    const body = await jsonBody(call);
    onlyFields(body, ["id", "agent_id"]);
    const id = subjectOf(body);
    // Sealed, not stored: the same answer for every id (no account enumeration), and no flood of
    // requests can evict a challenge someone else holds.
    const value = settings.challenges.issue(id, idp.now());
    return { status: 200, body: { challenge: value, expires_in: CHALLENGE_TTL } };
  };
  const authenticate = async (call: Parameters<Parameters<typeof router.add>[3]>[0]) => {
    const body = await jsonBody(call);
    onlyFields(body, ["id", "agent_id", "challenge", "signature"]);
    const id = subjectOf(body);
    const sentId = (body.id ?? body.agent_id) as string;
    if (typeof body.challenge !== "string" || body.challenge.length === 0 || body.challenge.length > 256) {
      throw new ProblemError("invalid_request", "challenge is required");
    }
    // Standard base64 as the protocol says; unpadded and base64url forms are tolerated.
    if (typeof body.signature !== "string" || !/^[A-Za-z0-9+/_-]{86}(==)?$/.test(body.signature)) {
      throw new ProblemError("invalid_request", "signature must be a base64 Ed25519 signature (64 bytes)");
    }
    const opened = settings.challenges.open(body.challenge, id, idp.now());
    if (!opened) throw new ProblemError("invalid_token", "unknown, used or expired challenge for this id");
    const user = await idp.store.getUser(id);
    if (!user?.publicKey || user.disabled) {
      throw new ProblemError("invalid_token", "authentication failed");
    }
    const { key } = registeredKey(user.publicKey);
    const signature = Buffer.from(body.signature, "base64");
    const format = await verifiedFormat(idp, settings, sentId, body.challenge, key, signature);
    if (!format) throw new ProblemError("invalid_token", "authentication failed");
    // Spent only once verified: a stranger who saw the challenge cannot burn it with a bad signature.
    if (!(await idp.store.spendChallenge(opened.nonce, id, opened.expiresAt))) {
      throw new ProblemError("invalid_token", "unknown, used or expired challenge for this id");
    }
    if (format === SIGNATURE_FORMAT_RAW) {
      idp.log.log("warn", "login with a raw challenge signature (compatibility mode; not domain-separated)", {
        rid: call.rid,
        sub: user.email,
      });
    }
    const { token, expiresIn } = await issueSessionToken(idp, user);
    idp.log.log("info", "login", { rid: call.rid, sub: user.email, method: "ed25519", format });
    return {
      status: 200,
      body: {
        token,
        id: user.email,
        email: user.email,
        name: user.name ?? user.email,
        act: user.kind,
        expires_in: expiresIn,
      },
    };
  };
  router.add("POST", PATHS.challenge, false, challenge);
  router.add("POST", PATHS.authenticate, false, authenticate);
  router.add("POST", PATHS.agentChallenge, false, challenge);
  router.add("POST", PATHS.agentAuthenticate, false, authenticate);
}
