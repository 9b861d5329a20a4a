import type { ClientContext } from "./context.ts";
import { requireEndpoint } from "./discovery.ts";
import { ClientError } from "./errors.ts";
import { startLoopbackReceiver } from "./loopback.ts";
import {
  CLI_CLIENT_ID,
  oauthEndpoints,
  oauthFailure,
  pkcePair,
  randomToken,
  sessionFrom,
  tokenRequest,
  verifyIdToken,
} from "./oauth.ts";
import type { StoredSession } from "./session-store.ts";

/** How long a browser login waits for the browser to come back. */
export const BROWSER_LOGIN_TIMEOUT_MS = 5 * 60_000;

/**
 * A human's login in the browser: authorization code + PKCE on a loopback redirect (RFC 8252). The
 * order: discovery (issuer = the IdP reached), a fresh state, nonce and PKCE pair, the listener, the
 * browser (`open`: the caller's way to show the URL), the answer with this state, the code exchange
 * (the verifier goes only to the token endpoint), the id_token's checks (verifyIdToken), then the
 * session, which the caller stores.
 */
export async function browserLogin(
  ctx: ClientContext,
  idp: string,
  email: string,
  options: { open: (url: string) => void; timeoutMs?: number },
): Promise<StoredSession> {
  const e = await oauthEndpoints(ctx, idp);
  const authorize = requireEndpoint(e, e.authorizationEndpoint, "authorization_endpoint");
  const state = randomToken();
  const nonce = randomToken();
  const pkce = pkcePair();
  const receiver = await startLoopbackReceiver(state);
  try {
    const url = new URL(authorize);
    url.search = new URLSearchParams({
      response_type: "code",
      client_id: CLI_CLIENT_ID,
      redirect_uri: receiver.redirectUri,
      state,
      nonce,
      code_challenge: pkce.challenge,
      code_challenge_method: "S256",
      login_hint: email,
    }).toString();
    options.open(url.toString());
    const timeoutMs = options.timeoutMs ?? BROWSER_LOGIN_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new ClientError(
              "login_timed_out",
              `no answer from the browser within ${Math.round(timeoutMs / 1000)} s`,
              { email, flow: "browser" },
            ),
          ),
        timeoutMs,
      );
    });
    let code: string;
    try {
      code = await Promise.race([receiver.code, timeout]);
    } finally {
      clearTimeout(timer);
    }
    const a = await tokenRequest(ctx, e, {
      grant_type: "authorization_code",
      code,
      code_verifier: pkce.verifier,
      redirect_uri: receiver.redirectUri,
      client_id: CLI_CLIENT_ID,
    });
    if (a.error !== undefined) throw oauthFailure("the IdP refused the login code", "code", a);
    await verifyIdToken(ctx, e, a.id_token, { email, nonce });
    return sessionFrom(ctx, e, email, a, "browser");
  } finally {
    await receiver.close();
  }
}
