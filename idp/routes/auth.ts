import { randomBytes, randomUUID, verify } from "node:crypto";
import { parseSshPublicKey } from "../../protocol/keys.ts";
import { ProblemError } from "../../protocol/problem.ts";
import { CLI_TOKEN_AUDIENCE } from "../../protocol/types.ts";
import type { Idp, Principal } from "../context.ts";
import { jsonBody, onlyFields, type Router } from "../http.ts";
import type { UserRecord } from "../store/types.ts";
import { signJwt } from "../tokens.ts";
import { PATHS } from "./discovery.ts";

export const CHALLENGE_TTL = 300;

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
export function issueSessionToken(idp: Idp, user: UserRecord): { token: string; expiresIn: number } {
  const iat = idp.now();
  const exp = iat + idp.tokenTtl;
  const token = signJwt(
    {
      iss: idp.issuer,
      sub: user.email,
      aud: CLI_TOKEN_AUDIENCE,
      act: user.kind,
      iat,
      exp,
      jti: randomUUID(),
    },
    idp.keys.signingKey(iat, exp),
  );
  return { token, expiresIn: idp.tokenTtl };
}

export function registerAuthRoutes(router: Router<Principal>, idp: Idp): void {
  const challenge = async (call: Parameters<Parameters<typeof router.add>[3]>[0]) => {
    const body = await jsonBody(call);
    onlyFields(body, ["id", "agent_id"]);
    const id = subjectOf(body);
    // Same answer for unknown, disabled or keyless users (no account enumeration), but only real
    // candidates' challenges are stored: nobody can fill the database with challenges for nobody.
    const value = randomBytes(32).toString("base64url");
    const user = idp.store.getUser(id);
    if (user?.publicKey && !user.disabled) idp.store.putChallenge(value, id, idp.now() + CHALLENGE_TTL);
    return { status: 200, body: { challenge: value, expires_in: CHALLENGE_TTL } };
  };
  const authenticate = async (call: Parameters<Parameters<typeof router.add>[3]>[0]) => {
    const body = await jsonBody(call);
    onlyFields(body, ["id", "agent_id", "challenge", "signature"]);
    const id = subjectOf(body);
    if (typeof body.challenge !== "string" || body.challenge.length === 0 || body.challenge.length > 256) {
      throw new ProblemError("invalid_request", "challenge is required");
    }
    // Standard base64 as the protocol says; unpadded and base64url forms are tolerated.
    if (typeof body.signature !== "string" || !/^[A-Za-z0-9+/_-]{86}(==)?$/.test(body.signature)) {
      throw new ProblemError("invalid_request", "signature must be a base64 Ed25519 signature (64 bytes)");
    }
    // Consume first: a challenge is single use even when the signature turns out wrong.
    if (!idp.store.takeChallenge(body.challenge, id, idp.now())) {
      throw new ProblemError("invalid_token", "unknown, used or expired challenge for this id");
    }
    const user = idp.store.getUser(id);
    if (!user?.publicKey || user.disabled) {
      throw new ProblemError("invalid_token", "authentication failed");
    }
    const key = parseSshPublicKey(user.publicKey).key;
    const ok = verify(null, Buffer.from(body.challenge, "utf8"), key, Buffer.from(body.signature, "base64"));
    if (!ok) throw new ProblemError("invalid_token", "authentication failed");
    const { token, expiresIn } = issueSessionToken(idp, user);
    idp.log.log("info", "login", { rid: call.rid, sub: user.email, method: "ed25519" });
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
