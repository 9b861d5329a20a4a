import { ProblemError } from "../../protocol/problem.ts";

/**
 * Cookies (RFC 6265bis) for our own pages. Names carry the `__Host-` prefix where they can: the
 * browser then keeps them only when Secure, Path=/ and without Domain, so no subdomain or plain-HTTP
 * page can plant or overwrite them. Both directions are strict: a cookie we would not set is refused.
 */

/** Browsers keep at least 4096 bytes per cookie (name, value and attributes). */
export const MAX_COOKIE_BYTES = 4096;
/** The whole Cookie header a server reads; beyond, the request is refused. */
export const MAX_COOKIE_HEADER_BYTES = 8192;
export const MAX_COOKIES = 50;

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** cookie-octet: visible ASCII except `"`, `,`, `;` and `\`. */
const VALUE = /^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$/;

export interface CookieOptions {
  /** Seconds; 0 deletes the cookie. Without it, the cookie ends with the browser session. */
  maxAge?: number;
  path?: string;
  secure?: boolean;
  httpOnly?: boolean;
  sameSite: "Strict" | "Lax" | "None";
}

/** Why these name, value and options make a cookie we must not set; undefined: they are fine. */
export function cookieProblem(name: string, value: string, o: CookieOptions): string | undefined {
  if (!TOKEN.test(name)) return "the cookie name is not a token";
  if (!VALUE.test(value)) return "the cookie value has characters outside cookie-octet";
  const secure = o.secure !== false;
  const path = o.path ?? "/";
  if (!path.startsWith("/") || /[;\x00-\x1f\x7f]/.test(path)) return "the cookie path is invalid";
  if (name.startsWith("__Host-") && (!secure || path !== "/"))
    return "a __Host- cookie needs Secure and Path=/";
  if (name.startsWith("__Secure-") && !secure) return "a __Secure- cookie needs Secure";
  if (o.sameSite === "None" && !secure) return "SameSite=None needs Secure";
  if (o.maxAge !== undefined && !(Number.isSafeInteger(o.maxAge) && o.maxAge >= 0)) {
    return "the cookie max-age must be a non-negative integer";
  }
  return undefined;
}

/** The Set-Cookie value; Secure and HttpOnly unless turned off. Throws for a cookie we must not set. */
export function serializeCookie(name: string, value: string, o: CookieOptions): string {
  const problem = cookieProblem(name, value, o);
  if (problem) throw new Error(problem);
  const parts = [`${name}=${value}`, `Path=${o.path ?? "/"}`];
  if (o.maxAge !== undefined) parts.push(`Max-Age=${o.maxAge}`);
  if (o.secure !== false) parts.push("Secure");
  if (o.httpOnly !== false) parts.push("HttpOnly");
  parts.push(`SameSite=${o.sameSite}`);
  const text = parts.join("; ");
  if (Buffer.byteLength(text) > MAX_COOKIE_BYTES)
    throw new Error(`the cookie exceeds ${MAX_COOKIE_BYTES} bytes`);
  return text;
}

/**
 * The cookies of a request's Cookie header. Refused (400): a header over MAX_COOKIE_HEADER_BYTES or
 * with more than MAX_COOKIES cookies, a malformed pair, or a name given twice (which one the
 * browser meant cannot be told, and a planted duplicate is how a cookie is tossed).
 */
export function parseCookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (header === undefined || header === "") return out;
  const refuse = (why: string) => new ProblemError("invalid_request", `refused Cookie header: ${why}`);
  if (Buffer.byteLength(header) > MAX_COOKIE_HEADER_BYTES) {
    throw refuse(`over ${MAX_COOKIE_HEADER_BYTES} bytes`);
  }
  const pairs = header.split(";");
  if (pairs.length > MAX_COOKIES) throw refuse(`more than ${MAX_COOKIES} cookies`);
  for (const pair of pairs) {
    if (pair.trim() === "") continue;
    const eq = pair.indexOf("=");
    const name = (eq === -1 ? "" : pair.slice(0, eq)).trim();
    let value = eq === -1 ? "" : pair.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    if (!TOKEN.test(name) || !VALUE.test(value)) throw refuse("a malformed cookie");
    if (out.has(name)) throw refuse(`cookie ${name} is given twice`);
    out.set(name, value);
  }
  return out;
}
