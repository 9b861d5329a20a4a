import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { ProblemError } from "../../protocol/problem.ts";
import type { Call } from "../../server/http.ts";
import { parseCookies, serializeCookie } from "../../server/web/cookies.ts";
import { CSRF_FIELD, checkCsrf, csrfToken } from "../../server/web/csrf.ts";
import type { WebContext } from "./context.ts";

/**
 * Browser sessions of humans. The session cookie holds 32 random bytes; the store keeps only their
 * SHA-256 (the record's id, also the `sessionId` handed to pages), so a copy of the database logs
 * no one in. Two cookies, both `__Host-` (Secure, Path=/, no Domain), HttpOnly:
 *
 * - `__Host-apes-session` (SameSite=Lax): who you are. Lax so that a top-level navigation from
 *   another site (an SP sending you to /authorize) arrives signed in.
 * - `__Host-apes-same-site` (SameSite=Strict): an HMAC of the session id. Never sent on a request
 *   another site started, so every state-changing request requires it (with the CSRF token).
 *
 * A session ends at logout, at its expiry (WEB_SESSION_TTL, not extended), when its user is disabled
 * (`apes idp users disable` deletes the user's sessions; a disabled user's session is refused
 * anyway).
 */

export const SESSION_COOKIE = "__Host-apes-session";
export const SAME_SITE_COOKIE = "__Host-apes-same-site";

const SECRET = /^[A-Za-z0-9_-]{43}$/;

export interface Human {
  sessionId: string;
  email: string;
}

const sha256 = (text: string) => createHash("sha256").update(text).digest("base64url");
const sameSiteValue = (ctx: WebContext, sessionId: string) =>
  createHmac("sha256", ctx.csrfSecret).update(`apes-same-site\0${sessionId}`).digest("base64url");

/** The signed-in human of this request, or undefined (no, unknown, expired or ended session; disabled user). */
export async function currentHuman(ctx: WebContext, call: Call): Promise<Human | undefined> {
  const value = parseCookies(call.req.headers.cookie).get(SESSION_COOKIE);
  if (value === undefined || !SECRET.test(value)) return undefined;
  const id = sha256(value);
  const session = await ctx.idp.store.getWebSession(id, ctx.idp.now());
  if (!session) return undefined;
  const user = await ctx.idp.store.getUser(session.email);
  if (!user || user.disabled || user.kind !== "human") return undefined;
  return { sessionId: id, email: user.email };
}

/** Starts a session for `email`: stores it and returns the Set-Cookie values to send. */
export async function startSession(ctx: WebContext, email: string): Promise<string[]> {
  const value = randomBytes(32).toString("base64url");
  const id = sha256(value);
  const now = ctx.idp.now();
  await ctx.idp.store.addWebSession({ id, email, createdAt: now, expiresAt: now + ctx.sessionTtl });
  return [
    serializeCookie(SESSION_COOKIE, value, { sameSite: "Lax", maxAge: ctx.sessionTtl }),
    serializeCookie(SAME_SITE_COOKIE, sameSiteValue(ctx, id), { sameSite: "Strict", maxAge: ctx.sessionTtl }),
  ];
}

/** Ends the session; returns the Set-Cookie values that delete both cookies. */
export async function endSession(ctx: WebContext, sessionId: string): Promise<string[]> {
  await ctx.idp.store.endWebSession(sessionId);
  return clearedCookies();
}

export function clearedCookies(): string[] {
  return [
    serializeCookie(SESSION_COOKIE, "", { sameSite: "Lax", maxAge: 0 }),
    serializeCookie(SAME_SITE_COOKIE, "", { sameSite: "Strict", maxAge: 0 }),
  ];
}

/** The CSRF token forms of this session carry in CSRF_FIELD. */
export function formToken(ctx: WebContext, human: Human): string {
  return csrfToken(ctx.csrfSecret, human.sessionId);
}

export { CSRF_FIELD };

/**
 * Refuses (403) a state-changing request that may have been started by another site: it must come
 * from our origin (Sec-Fetch-Site / Origin), carry this session's CSRF token in `token`, and carry
 * the SameSite=Strict cookie of this session.
 */
export function checkStateChange(ctx: WebContext, call: Call, human: Human, token: string | undefined): void {
  checkCsrf({
    method: call.method,
    headers: call.req.headers,
    origin: ctx.origin,
    secret: ctx.csrfSecret,
    sessionId: human.sessionId,
    token,
  });
  const got = Buffer.from(parseCookies(call.req.headers.cookie).get(SAME_SITE_COOKIE) ?? "");
  const want = Buffer.from(sameSiteValue(ctx, human.sessionId));
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw new ProblemError(
      "forbidden",
      "refused as a possible cross-site request: the same-site cookie is missing",
    );
  }
}

/**
 * For JSON calls of our own page scripts that need no session (login, invite): the browser must say
 * the request comes from our origin. A form another site posts cannot send JSON without a CORS
 * preflight we never answer, and this refuses the rest (login CSRF: signing a victim into an
 * attacker's account).
 */
export function checkSameOrigin(ctx: WebContext, call: Call): void {
  const site = call.req.headers["sec-fetch-site"];
  const origin = call.req.headers.origin;
  if (site !== undefined && site !== "same-origin") {
    throw new ProblemError("forbidden", `refused as a possible cross-site request: a ${site} request`);
  }
  if (origin !== ctx.origin) {
    throw new ProblemError(
      "forbidden",
      "refused as a possible cross-site request: the request comes from another origin",
    );
  }
}

/**
 * A `return_to` we may send the browser to after login: a path on this origin (starting with one
 * `/`, not `//` or `/\`, no control characters, at most 2048 characters); anything else is the
 * default. Open redirects are therefore impossible.
 */
export function safeReturnTo(value: string | undefined, fallback = "/account"): string {
  if (value === undefined || value.length === 0 || value.length > 2048) return fallback;
  if (!value.startsWith("/") || value.startsWith("//") || value.startsWith("/\\")) return fallback;
  if (/[\x00-\x20\x7f\\]/.test(value)) return fallback;
  try {
    const base = "http://apes.invalid";
    const u = new URL(value, base);
    if (u.origin !== base) return fallback;
    return u.pathname + u.search + u.hash;
  } catch {
    return fallback;
  }
}
