import { CLI_CLIENT_ID, type ClientInfo, redirectUriAllowed, redirectWith } from "./clients.ts";
import { isCodeChallenge, PKCE_METHOD } from "./pkce.ts";

/**
 * The checks of an authorization request (RFC 6749 section 4.1.1, RFC 7636, OIDC), as a pure
 * function in the order that keeps redirects safe: first the client and its redirect URI. Until
 * both are known good, every problem is shown as a page (RFC 6749 section 4.1.2.1: never redirect
 * to an unchecked URI). After that, problems go back to the client as `error` on its redirect URI.
 */

export const MAX_PARAM_LENGTH = 512;

/** The parameters /authorize reads; others (scope, prompt, response_mode ...) are ignored. */
export const AUTHORIZE_PARAMS = [
  "response_type",
  "client_id",
  "redirect_uri",
  "state",
  "nonce",
  "code_challenge",
  "code_challenge_method",
  "login_hint",
] as const;

export interface AuthorizeRequest {
  clientId: string;
  redirectUri: string;
  state: string;
  nonce: string;
  codeChallenge: string;
  loginHint?: string;
}

export type AuthorizeCheck =
  | { kind: "ok"; request: AuthorizeRequest }
  | { kind: "page"; message: string }
  | { kind: "redirect"; location: string };

/** Printable ASCII of bounded length: a state or nonce can be echoed and signed without surprises. */
const PRINTABLE = /^[\x20-\x7e]+$/;

/**
 * `params` are the request's parameters in order (query or form); `client` is the stored client
 * named by client_id (undefined for apes-cli and unknown ids).
 */
export function checkAuthorizeRequest(
  params: Iterable<[string, string]>,
  client: ClientInfo | undefined,
): AuthorizeCheck {
  const values = new Map<string, string>();
  const repeated = new Set<string>();
  for (const [k, v] of params) {
    if (!(AUTHORIZE_PARAMS as readonly string[]).includes(k)) continue;
    if (values.has(k)) repeated.add(k);
    values.set(k, v);
  }
  const clientId = values.get("client_id");
  if (!clientId || repeated.has("client_id"))
    return { kind: "page", message: "The request names no client." };
  if (clientId !== CLI_CLIENT_ID && !client)
    return { kind: "page", message: "The request names an unknown client." };
  const redirectUri = values.get("redirect_uri");
  if (!redirectUri || repeated.has("redirect_uri")) {
    return { kind: "page", message: "The request has no redirect URI." };
  }
  if (!redirectUriAllowed(clientId, client, redirectUri)) {
    return { kind: "page", message: "The redirect URI is not registered for this client." };
  }
  // From here on the redirect URI is the client's own: errors go back to it.
  const state = values.get("state");
  const stateOk = state !== undefined && state.length <= MAX_PARAM_LENGTH && PRINTABLE.test(state);
  const back = (error: string, description: string): AuthorizeCheck => {
    const p: Record<string, string> = { error, error_description: description };
    if (stateOk && !repeated.has("state")) p.state = state!;
    return { kind: "redirect", location: redirectWith(redirectUri, p) };
  };
  if (repeated.size > 0) return back("invalid_request", `repeated parameter ${[...repeated][0]}`);
  if (values.get("response_type") !== "code") {
    return back("unsupported_response_type", "only response_type=code is supported");
  }
  if (!stateOk)
    return back("invalid_request", `state is required (printable ASCII, at most ${MAX_PARAM_LENGTH})`);
  const nonce = values.get("nonce");
  if (nonce === undefined || nonce.length > MAX_PARAM_LENGTH || !PRINTABLE.test(nonce)) {
    return back("invalid_request", `nonce is required (printable ASCII, at most ${MAX_PARAM_LENGTH})`);
  }
  if (values.get("code_challenge_method") !== PKCE_METHOD) {
    return back("invalid_request", "code_challenge_method must be S256");
  }
  const codeChallenge = values.get("code_challenge");
  if (!isCodeChallenge(codeChallenge)) {
    return back("invalid_request", "code_challenge must be the base64url SHA-256 of the verifier");
  }
  const request: AuthorizeRequest = { clientId, redirectUri, state: state!, nonce, codeChallenge };
  const hint = values.get("login_hint");
  if (hint !== undefined && hint !== "" && hint.length <= 254 && PRINTABLE.test(hint))
    request.loginHint = hint;
  return { kind: "ok", request };
}

/** The parameters to carry a checked request through the consent form. */
export function authorizeParams(r: AuthorizeRequest): [string, string][] {
  const p: [string, string][] = [
    ["response_type", "code"],
    ["client_id", r.clientId],
    ["redirect_uri", r.redirectUri],
    ["state", r.state],
    ["nonce", r.nonce],
    ["code_challenge", r.codeChallenge],
    ["code_challenge_method", PKCE_METHOD],
  ];
  if (r.loginHint !== undefined) p.push(["login_hint", r.loginHint]);
  return p;
}
