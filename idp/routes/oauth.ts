import type { Idp, Principal } from "../context.ts";
import { formOrJsonBody, OAuthError, type Router } from "../http.ts";
import { revokeToken, startDeviceAuthorization } from "../oauth/flows.ts";
import { PATHS } from "./discovery.ts";

/** The OAuth endpoints beside /token: device authorization (RFC 8628) and revocation (RFC 7009). */

function onlyParams(body: Record<string, unknown>, known: readonly string[]): void {
  for (const k of Object.keys(body)) {
    if (!known.includes(k)) throw new OAuthError("invalid_request", `unknown parameter ${k}`);
  }
}

export function registerOAuthRoutes(router: Router<Principal>, idp: Idp): void {
  router.add("POST", PATHS.deviceAuthorization, false, async (call) => {
    const body = await formOrJsonBody(call);
    onlyParams(body, ["client_id", "scope"]);
    return { status: 200, body: await startDeviceAuthorization(idp, body, idp.base + PATHS.device) };
  });
  router.add("POST", PATHS.revoke, false, async (call) => {
    const body = await formOrJsonBody(call);
    onlyParams(body, ["token", "token_type_hint", "client_id"]);
    await revokeToken(idp, body);
    return { status: 200, body: {} };
  });
}
