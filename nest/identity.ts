import type { ClientContext } from "../client/context.ts";
import { exchangeOwnToken, exchangeToken } from "../client/delegations.ts";
import { idpEndpoints, normalizeIdpUrl } from "../client/discovery.ts";
import { HttpProblem } from "../client/errors.ts";
import { request } from "../client/http.ts";
import { loadPrivateKey } from "../client/keys.ts";
import { freshSession, logInWithKey } from "../client/session.ts";
import { readSession } from "../client/session-store.ts";
import { decodeJwt } from "../protocol/jwt.ts";
import { CLI_TOKEN_AUDIENCE } from "../protocol/types.ts";

/**
 * The Nest's identity and its tokens, all from its own key and session (client/): it logs in with
 * its own key in its own HOME, and then
 *  - for the troop: exchanges its session token at the IdP's token endpoint for the troop's audience
 *    (RFC 8693, subject_token = its own token; docs/control-plane.md "Tokens"), so the troop never
 *    sees a token for the IdP's own APIs;
 *  - for enrolling an agent for its owner: exchanges the owner's delegation (delegation_grant_id, no
 *    subject_token) for a token with sub = the owner, act.sub = the Nest, audience apes-cli.
 * Each is cached until a minute (or half its life) before it expires; none is ever logged.
 */

/** Logs in unless auth.json already holds a session of this identity made with this very key path. */
export async function loginIfNeeded(
  ctx: ClientContext,
  idp: string,
  email: string,
  keyPath: string,
): Promise<void> {
  const current = await readSession(ctx);
  if (current && current.email === email && current.key_path === keyPath) return;
  await logInWithKey(ctx, normalizeIdpUrl(idp), email, await loadPrivateKey(ctx, keyPath));
}

function lifetime(token: string, nowS: number): { exp: number; iat: number } {
  try {
    const p = decodeJwt(token).payload;
    return {
      exp: typeof p.exp === "number" ? p.exp : nowS + 300,
      iat: typeof p.iat === "number" ? p.iat : nowS,
    };
  } catch {
    return { exp: nowS + 300, iat: nowS };
  }
}

/** A token source that mints when asked to renew or when the cached token is near its end. */
export function cachedToken(
  ctx: Pick<ClientContext, "clock">,
  mint: () => Promise<string>,
): (renew?: boolean) => Promise<string> {
  let token: string | undefined;
  let renewAt = 0;
  return async (renew = false) => {
    const nowS = Math.floor(ctx.clock.now() / 1000);
    if (!renew && token && nowS < renewAt) return token;
    const t = await mint();
    const { exp, iat } = lifetime(t, nowS);
    token = t;
    renewAt = exp - Math.min(60, Math.max(1, Math.floor((exp - iat) / 2)));
    return t;
  };
}

export function troopTokens(ctx: ClientContext, audience: string): (renew?: boolean) => Promise<string> {
  return cachedToken(ctx, async () => (await exchangeOwnToken(ctx, audience)).access_token);
}

export function delegatedTokens(
  ctx: ClientContext,
  delegation: string,
): (renew?: boolean) => Promise<string> {
  return cachedToken(
    ctx,
    async () => (await exchangeToken(ctx, delegation, CLI_TOKEN_AUDIENCE)).access_token,
  );
}

/** Enrolls the agent's identity for its owner with the delegated token; the same enrollment again is fine. */
export async function enrollAgent(
  ctx: ClientContext,
  token: string,
  agent: { name: string },
  publicKey: string,
): Promise<void> {
  const endpoints = await idpEndpoints(ctx, (await freshSession(ctx)).idp);
  try {
    await request(ctx, {
      url: endpoints.agentsEndpoint,
      method: "POST",
      token,
      json: { name: agent.name, public_key: publicKey },
    });
  } catch (e) {
    if (!(e instanceof HttpProblem) || e.status !== 409) throw e;
    const list = await request<{ data?: { name?: string; public_key?: string }[] }>(ctx, {
      url: endpoints.agentsEndpoint,
      token,
    });
    const mine = list.body?.data?.find((a) => a.name === agent.name);
    if (mine?.public_key?.trim() !== publicKey.trim())
      throw new Error(`the identity of ${agent.name} exists at the IdP with another key`);
  }
}
