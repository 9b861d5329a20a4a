import { createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { ProblemError } from "../../protocol/problem.ts";

/**
 * CSRF protection for state-changing form posts, two independent checks that must both pass:
 * the browser says the request comes from our own origin (Sec-Fetch-Site, else Origin; a request
 * with neither is refused), and the form carries a synchronizer token bound to the session (an
 * HMAC of the session id under a server secret, so it needs no storage and is worthless for any
 * other session).
 */

export const CSRF_FIELD = "csrf_token";

/** The token a form of this session carries (base64url, 43 characters). */
export function csrfToken(secret: Buffer, sessionId: string): string {
  return createHmac("sha256", secret).update(`apes-csrf\0${sessionId}`).digest("base64url");
}

export interface CsrfInput {
  method: string;
  headers: IncomingHttpHeaders;
  /** Our origin as a browser writes it, e.g. "https://id.example.com". */
  origin: string;
  secret: Buffer;
  /** The session the form was posted in; undefined when there is none. */
  sessionId: string | undefined;
  /** The form's CSRF_FIELD; undefined when missing. */
  token: string | undefined;
}

const SAFE_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "OPTIONS"]);

/** Why this request must be refused as a possible cross-site forgery; undefined: it may proceed. */
export function csrfProblem(r: CsrfInput): string | undefined {
  if (SAFE_METHODS.has(r.method)) return undefined;
  const site = r.headers["sec-fetch-site"];
  const origin = r.headers.origin;
  if (site !== undefined) {
    if (site !== "same-origin") return `a ${site} request may not change state`;
  } else if (origin === undefined) {
    return "the request names no origin";
  }
  if (origin !== undefined && origin !== r.origin) return "the request comes from another origin";
  if (r.sessionId === undefined) return "there is no session";
  if (r.token === undefined) return "the form has no CSRF token";
  const want = Buffer.from(csrfToken(r.secret, r.sessionId));
  const got = Buffer.from(r.token);
  if (got.length !== want.length || !timingSafeEqual(got, want))
    return "the form's CSRF token is not this session's";
  return undefined;
}

/** Throws 403 when csrfProblem finds one. */
export function checkCsrf(r: CsrfInput): void {
  const problem = csrfProblem(r);
  if (problem) throw new ProblemError("forbidden", `refused as a possible cross-site request: ${problem}`);
}
