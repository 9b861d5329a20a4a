import { type KeyObject, sign } from "node:crypto";
import type { Context } from "../context.ts";
import { CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { HttpError, request } from "../http.ts";
import { type IdpEndpoints, idpEndpoints, requireEndpoint } from "../idp-client.ts";

/**
 * Ed25519 challenge-response login (docs/protocol.md, section 2): POST {id} to the challenge endpoint,
 * sign the exact challenge string, POST {id, challenge, signature} to the authenticate endpoint.
 * IdPs that only know the older `{agent_id}` body are handled by trying the other shape once.
 */

export interface KeyLoginResult {
  token: string;
  email: string;
  act: "human" | "agent";
  /** Unix seconds. */
  expiresAt: number;
  issuedAt?: number;
  endpoints: IdpEndpoints;
}

interface AuthenticateAnswer {
  token?: unknown;
  access_token?: unknown;
  id?: unknown;
  email?: unknown;
  act?: unknown;
  expires_in?: unknown;
}

export async function keyLogin(
  ctx: Context,
  idp: string,
  email: string,
  key: KeyObject,
): Promise<KeyLoginResult> {
  const endpoints = await idpEndpoints(ctx, idp);
  const challengeUrl = requireEndpoint(
    endpoints,
    endpoints.challengeEndpoint,
    "ddisa_auth_challenge_endpoint",
  );
  const authenticateUrl = requireEndpoint(
    endpoints,
    endpoints.authenticateEndpoint,
    "ddisa_auth_authenticate_endpoint",
  );
  const idField = endpoints.challengeFamily === "auth" ? "id" : "agent_id";
  const otherField = idField === "id" ? "agent_id" : "id";

  let field = idField;
  let challenge: string;
  try {
    challenge = await askChallenge(ctx, challengeUrl, field, email);
  } catch (e) {
    // 400/422: maybe the IdP only knows the other body shape.
    if (!(e instanceof HttpError) || (e.status !== 400 && e.status !== 422)) throw loginError(e, email);
    ctx.debug(`login: challenge with {${field}} refused (${e.status}); trying {${otherField}}`);
    field = otherField;
    try {
      challenge = await askChallenge(ctx, challengeUrl, field, email);
    } catch (e2) {
      throw loginError(e2, email);
    }
  }
  const signature = sign(null, Buffer.from(challenge, "utf8"), key).toString("base64");
  let answer: AuthenticateAnswer;
  try {
    const res = await request<AuthenticateAnswer>(ctx, {
      url: authenticateUrl,
      json: { [field]: email, challenge, signature },
    });
    answer = res.body ?? {};
  } catch (e) {
    throw loginError(e, email);
  }
  return interpret(ctx, answer, email, endpoints);
}

async function askChallenge(ctx: Context, url: string, field: string, email: string): Promise<string> {
  const res = await request<{ challenge?: unknown }>(ctx, { url, json: { [field]: email } });
  const c = res.body?.challenge;
  if (typeof c !== "string" || c.length < 16) {
    throw new CliError(`the IdP answered the login challenge request without a usable challenge`, {
      exitCode: ExitCode.UNAVAILABLE,
    });
  }
  return c;
}

function interpret(
  ctx: Context,
  a: AuthenticateAnswer,
  email: string,
  endpoints: IdpEndpoints,
): KeyLoginResult {
  const token =
    typeof a.token === "string" ? a.token : typeof a.access_token === "string" ? a.access_token : undefined;
  if (!token) {
    throw new CliError("the IdP accepted the signature but returned no token", {
      exitCode: ExitCode.UNAVAILABLE,
    });
  }
  const claims = decodeJwtPayload(token);
  const nowS = Math.floor(ctx.clock.now() / 1000);
  const expiresAt =
    typeof claims?.exp === "number"
      ? claims.exp
      : typeof a.expires_in === "number"
        ? nowS + a.expires_in
        : nowS + 3600;
  const actRaw = typeof a.act === "string" ? a.act : typeof claims?.act === "string" ? claims.act : undefined;
  const act = actRaw === "human" ? "human" : "agent";
  const who =
    typeof a.email === "string" && a.email ? a.email : typeof claims?.sub === "string" ? claims.sub : email;
  return {
    token,
    email: who,
    act,
    expiresAt,
    issuedAt:
      typeof claims?.iat === "number" ? claims.iat : typeof a.expires_in === "number" ? nowS : undefined,
    endpoints,
  };
}

/** Unverified payload of a JWT (the client only reads its own token's exp/sub/act; the IdP verifies). */
export function decodeJwtPayload(token: string): Record<string, unknown> | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const v = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
    return v && typeof v === "object" ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function loginError(e: unknown, email: string): unknown {
  if (e instanceof HttpError && e.status >= 400 && e.status < 500 && e.status !== 429) {
    return new CliError(`login as ${email} failed: ${firstLine(e.message)}`, {
      exitCode: ExitCode.NOPERM,
      hint: "check the email, and that this key's public half is registered for it at the IdP (`apes keygen` prints it)",
      cause: e,
    });
  }
  return e;
}

function firstLine(s: string): string {
  const i = s.indexOf(": ");
  return i >= 0 ? s.slice(i + 2) : s;
}
