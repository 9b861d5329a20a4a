import { decodeJwt } from "../../protocol/jwt.ts";
import type { Context } from "../context.ts";

/**
 * The Nest's tokens, all from its own session (its own key login, renewed by freshSession):
 *  - for the troop: its session token exchanged at the IdP's token endpoint for the troop's audience
 *    (RFC 8693, subject_token = its own token), so the troop never sees a token for the IdP's APIs;
 *  - for enrolling an agent for its owner: the owner's delegation exchanged (delegation_grant_id, no
 *    subject_token) for a token with sub = the owner, act.sub = the Nest, audience apes-cli.
 * Each is cached until a minute (or half its life) before it expires; none is ever logged.
 */

const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt";

function expiry(token: string, fallbackS: number): { exp: number; iat: number } {
  try {
    const p = decodeJwt(token).payload;
    return {
      exp: typeof p.exp === "number" ? p.exp : fallbackS,
      iat: typeof p.iat === "number" ? p.iat : fallbackS - 60,
    };
  } catch {
    return { exp: fallbackS, iat: fallbackS - 60 };
  }
}

function cached(ctx: Context, mint: () => Promise<string>): (renew?: boolean) => Promise<string> {
  let token: string | undefined;
  let renewAt = 0;
  return async (renew = false) => {
    const nowS = Math.floor(ctx.clock.now() / 1000);
    if (!renew && token && nowS < renewAt) return token;
    const t = await mint();
    const { exp, iat } = expiry(t, nowS + 300);
    token = t;
    renewAt = exp - Math.min(60, Math.max(1, Math.floor((exp - iat) / 2)));
    return t;
  };
}

export function troopTokens(ctx: Context, audience: string): (renew?: boolean) => Promise<string> {
  return cached(ctx, async () => {
    const [{ freshSession }, { idpEndpoints, requireEndpoint }, { request }] = await Promise.all([
      import("../auth/session.ts"),
      import("../idp-client.ts"),
      import("../http.ts"),
    ]);
    const session = await freshSession(ctx);
    const endpoints = await idpEndpoints(ctx, session.idp);
    const url = requireEndpoint(endpoints, endpoints.tokenEndpoint, "token_endpoint");
    const res = await request<{ access_token?: unknown }>(ctx, {
      url,
      form: {
        grant_type: TOKEN_EXCHANGE,
        subject_token: session.token,
        subject_token_type: JWT_TYPE,
        audience,
        requested_token_type: JWT_TYPE,
      },
    });
    const t = res.body?.access_token;
    if (typeof t !== "string") throw new Error("the IdP's token endpoint answered without an access_token");
    return t;
  });
}

export function delegatedTokens(ctx: Context, delegation: string): (renew?: boolean) => Promise<string> {
  return cached(ctx, async () => {
    const [{ exchangeToken }, { CLI_TOKEN_AUDIENCE }] = await Promise.all([
      import("../grants/delegations.ts"),
      import("../../protocol/types.ts"),
    ]);
    return (await exchangeToken(ctx, delegation, CLI_TOKEN_AUDIENCE)).access_token;
  });
}

/** Enrolls the agent's identity for its owner with the delegated token; an identical enrollment is fine. */
export async function enrollAgent(
  ctx: Context,
  token: string,
  agent: { name: string; owner: string },
  publicKey: string,
): Promise<void> {
  const [{ idpEndpoints }, { request, HttpError }, { freshSession }] = await Promise.all([
    import("../idp-client.ts"),
    import("../http.ts"),
    import("../auth/session.ts"),
  ]);
  const endpoints = await idpEndpoints(ctx, (await freshSession(ctx)).idp);
  try {
    await request(ctx, {
      url: endpoints.agentsEndpoint,
      method: "POST",
      token,
      json: { name: agent.name, public_key: publicKey },
    });
  } catch (e) {
    if (!(e instanceof HttpError) || e.status !== 409) throw e;
    const list = await request<{ data?: { name?: string; public_key?: string }[] }>(ctx, {
      url: endpoints.agentsEndpoint,
      token,
    });
    const mine = list.body?.data?.find((a) => a.name === agent.name);
    if (mine?.public_key?.trim() !== publicKey.trim())
      throw new Error(`the identity of ${agent.name} exists at the IdP with another key`);
  }
}
