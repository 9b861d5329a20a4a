import { CLI_CLIENT_ID } from "../../protocol/types.ts";

/**
 * OAuth clients and their redirect URIs, as pure rules (no store, no clock). Two kinds of client:
 *
 * - the built-in native public client `apes-cli` (the `apes login` browser flow): only loopback
 *   redirects `http://127.0.0.1:<port>/<path>` and `http://[::1]:<port>/<path>` on any port
 *   (RFC 8252 sections 7.3 and 8.3). Fixed in code: no registration or stored row can widen it.
 * - registered clients (`apes idp clients add`): a redirect URI is accepted only when it equals one
 *   registered for that client character for character (RFC 6749 section 3.1.2.2; OAuth 2.1 drops any
 *   looser matching). No normalisation: `HTTPS://`, `%2e`, a trailing dot or an extra slash is
 *   another string, so it is refused.
 *
 * Nothing is redirected to a URI these rules have not accepted (idp/routes/oauth-web.ts shows errors
 * as a page instead).
 */

export { CLI_CLIENT_ID };

/** A client id: short, lower-case, no characters that need escaping anywhere. */
const CLIENT_ID = /^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$/;

export const MAX_REDIRECT_URI_LENGTH = 2000;
export const MAX_REDIRECT_URIS = 20;

/** Why `id` cannot be a registered client's id; undefined: it can. */
export function clientIdProblem(id: string): string | undefined {
  if (!CLIENT_ID.test(id)) {
    return "a client id is 1-64 characters of a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit";
  }
  if (id === CLI_CLIENT_ID)
    return `${CLI_CLIENT_ID} is the built-in client of the apes CLI and cannot be registered`;
  return undefined;
}

/**
 * The loopback redirect of a native client (RFC 8252): exactly `http://127.0.0.1:PORT` or
 * `http://[::1]:PORT`, then an optional path of unreserved characters and `/`. Refused: `localhost`
 * (a name that DNS or /etc/hosts may send elsewhere), a missing or out-of-range port, userinfo,
 * query, fragment, percent-encoding, backslashes and dot segments.
 */
const LOOPBACK = /^http:\/\/(?:127\.0\.0\.1|\[::1\]):([1-9][0-9]{0,4})((?:\/[A-Za-z0-9._~-]*)*)$/;

export function isLoopbackRedirect(uri: string): boolean {
  if (uri.length > MAX_REDIRECT_URI_LENGTH) return false;
  const m = LOOPBACK.exec(uri);
  if (!m) return false;
  if (Number(m[1]) > 65535) return false;
  const segments = m[2]!.split("/").slice(1);
  return !segments.some((s) => s === "." || s === "..");
}

/**
 * Why `uri` cannot be registered for a client; undefined: it can. https (plain http only to a
 * loopback address, for development), an absolute URL with a host, no userinfo, no fragment
 * (RFC 6749 section 3.1.2), printable ASCII only, and already in the form a URL parser gives it
 * back, so what is stored is what a browser is sent to.
 */
export function redirectUriRegistrationProblem(uri: string): string | undefined {
  if (uri.length === 0 || uri.length > MAX_REDIRECT_URI_LENGTH) {
    return `a redirect URI has 1-${MAX_REDIRECT_URI_LENGTH} characters`;
  }
  if (!/^[\x21-\x7e]+$/.test(uri)) return "a redirect URI is printable ASCII without spaces";
  if (uri.includes("#")) return "a redirect URI has no fragment";
  if (uri.includes("\\")) return "a redirect URI has no backslash";
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    return "a redirect URI is an absolute URL";
  }
  if (u.username !== "" || u.password !== "" || /^[a-z]+:\/\/[^/?#]*@/i.test(uri)) {
    return "a redirect URI has no userinfo";
  }
  const loopbackHost = u.hostname === "127.0.0.1" || u.hostname === "[::1]";
  if (u.protocol !== "https:" && !(u.protocol === "http:" && loopbackHost)) {
    return "a redirect URI is https (plain http only to 127.0.0.1 or [::1])";
  }
  if (u.hostname === "") return "a redirect URI names a host";
  if (u.href !== uri) return `a redirect URI is written in its normal form (${u.href})`;
  if (u.pathname.split("/").some((s) => s === "." || s === ".." || /%2e/i.test(s))) {
    return "a redirect URI has no dot segments";
  }
  return undefined;
}

/** What the store keeps of a registered client. */
export interface ClientInfo {
  id: string;
  redirectUris: readonly string[];
}

/**
 * Is `uri` a redirect URI of this client? The built-in CLI client: loopback only, whatever the
 * store says. A registered client: exact string equality with one of its registered URIs. No
 * client (unknown id): never.
 */
export function redirectUriAllowed(clientId: string, client: ClientInfo | undefined, uri: string): boolean {
  if (typeof uri !== "string" || uri.length === 0 || uri.length > MAX_REDIRECT_URI_LENGTH) return false;
  if (clientId === CLI_CLIENT_ID) return isLoopbackRedirect(uri);
  if (!client || client.id !== clientId) return false;
  return client.redirectUris.includes(uri);
}

/** The URI the browser is sent back to: `uri` with `params` added to its query. */
export function redirectWith(uri: string, params: Record<string, string>): string {
  const q = new URLSearchParams(params).toString();
  return uri + (uri.includes("?") ? "&" : "?") + q;
}
