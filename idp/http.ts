import { ProblemError } from "../protocol/problem.ts";
import { type Call, isJsonType, mediaType, parseJsonObject, type Reply, readBody } from "../server/http.ts";

/**
 * The IdP's additions to the shared HTTP layer (server/http.ts, re-exported here for the routes):
 * the token endpoint speaks OAuth (RFC 6749) errors and takes form bodies.
 */

export {
  type Call,
  type Handler,
  jsonBody,
  onlyFields,
  type PublicHandler,
  type Reply,
  Router,
} from "../server/http.ts";

/** An OAuth error (RFC 6749 section 5.2) for the token endpoint: `{error, error_description}`. */
export class OAuthError extends Error {
  readonly error: string;
  readonly status: number;
  constructor(error: string, description: string, status = 400) {
    super(description);
    this.name = "OAuthError";
    this.error = error;
    this.status = status;
  }
}

/** The answer for an OAuthError; undefined for any other error (answered as a problem). */
export function oauthErrorReply(e: unknown): Reply | undefined {
  if (!(e instanceof OAuthError)) return undefined;
  return {
    status: e.status,
    body: { error: e.error, error_description: e.message },
    headers: e.status === 413 ? { connection: "close" } : {},
  };
}

/** The token endpoint takes JSON or application/x-www-form-urlencoded; errors are OAuth errors. */
export async function formOrJsonBody(call: Call): Promise<Record<string, unknown>> {
  let raw: Buffer;
  try {
    raw = await readBody(call.req);
  } catch (e) {
    if (e instanceof ProblemError) throw new OAuthError("invalid_request", e.message, e.status);
    throw e;
  }
  const type = mediaType(call.req);
  if (type === "application/x-www-form-urlencoded") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of new URLSearchParams(raw.toString("utf8"))) {
      if (k in out) throw new OAuthError("invalid_request", `parameter ${k} is repeated`);
      out[k] = v;
    }
    return out;
  }
  if (isJsonType(type)) {
    try {
      return parseJsonObject(raw);
    } catch (e) {
      throw new OAuthError("invalid_request", (e as Error).message);
    }
  }
  throw new OAuthError("invalid_request", "send application/x-www-form-urlencoded or application/json", 415);
}
