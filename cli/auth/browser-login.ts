import type { Context } from "../context.ts";
import { CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { requireEndpoint } from "../idp-client.ts";
import { openBrowser } from "./browser.ts";
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
import type { StoredSession } from "./store.ts";

/** How long `apes login` waits for the browser to come back. */
export const BROWSER_LOGIN_TIMEOUT_MS = 5 * 60_000;

/**
 * `apes login <email>` in the browser: authorization code + PKCE on a loopback redirect (RFC 8252).
 * The order: discovery (issuer = the IdP reached), a fresh state, nonce and PKCE pair, the listener,
 * the browser, the answer with this state, the code exchange (the verifier goes only to the token
 * endpoint), the id_token's checks (verifyIdToken), then the session.
 */
export async function browserLogin(
  ctx: Context,
  idp: string,
  email: string,
  options: { open?: (url: string) => void; timeoutMs?: number } = {},
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
    (options.open ?? ((u: string) => openBrowser(ctx, u)))(url.toString());
    const timeoutMs = options.timeoutMs ?? BROWSER_LOGIN_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new CliError(`no answer from the browser within ${Math.round(timeoutMs / 1000)} s`, {
              exitCode: ExitCode.TEMPFAIL,
              hint: "run `apes login` again; on a machine without a browser use `apes login --device <email>`",
            }),
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
    if (a.error !== undefined) throw oauthFailure("the IdP refused the login code", a);
    await verifyIdToken(ctx, e, a.id_token, { email, nonce });
    return sessionFrom(ctx, e, email, a, "browser");
  } finally {
    await receiver.close();
  }
}
