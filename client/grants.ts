import { isGrantId } from "../protocol/names.ts";
import type { Grant, GrantList, GrantRequest, GrantStatus, GrantType } from "../protocol/types.ts";
import type { ClientContext } from "./context.ts";
import { type IdpEndpoints, idpEndpoints, requireEndpoint } from "./discovery.ts";
import { ClientError, HttpProblem } from "./errors.ts";
import { type HttpRequest, type HttpResponse, request } from "./http.ts";
import { freshSession, type Session } from "./session.ts";

/**
 * The grants API of the session's IdP (docs/protocol.md, section 3), endpoint from discovery. Every call
 * takes a fresh session token (re-authenticating with the key when it is about to expire), and a
 * 401 on a token we believed valid (IdP restarted with new keys) is retried once after a forced
 * re-login.
 */

/**
 * What a grant creation sends: `requester` is set by the IdP from the token, and the audience
 * defaults to the target there.
 */
export type NewGrantRequest = Omit<GrantRequest, "requester" | "audience"> & {
  requester?: string;
  audience?: string;
};

export interface GrantQuery {
  status?: GrantStatus;
  requester?: string;
  type?: "command" | "delegation";
  limit?: number;
  cursor?: string;
}

export interface GrantFetch {
  /** Undefined when the server answered 304 Not Modified. */
  grant?: Grant;
  etag?: string;
  notModified: boolean;
  /** The server honoured `Prefer: wait=N` (Preference-Applied). */
  waitApplied: boolean;
  /** From Retry-After, when present. */
  retryAfterMs?: number;
}

export interface BatchResult {
  id: string;
  success: boolean;
  status?: GrantStatus;
  error?: string;
}

export interface GrantsClient {
  readonly session: Session;
  readonly endpoints: IdpEndpoints;
  /** `authzJwt`: ask the IdP to put the AuthZ-JWT into a reuse answer (`Prefer: authz-jwt`); it is
   * there when the IdP reused an approved grant and supports the preference. */
  create(
    req: NewGrantRequest,
    options?: { authzJwt?: boolean },
  ): Promise<{ grant: Grant; reused: boolean; authz_jwt?: string }>;
  get(id: string, etag?: string): Promise<Grant>;
  /** Low-level read for waiting: ETag, long-poll (`waitSeconds`), abort signal. */
  fetch(
    id: string,
    options?: { etag?: string; waitSeconds?: number; signal?: AbortSignal },
  ): Promise<GrantFetch>;
  list(query?: GrantQuery): Promise<GrantList>;
  /** `proof`: the approval's proof (cli/grants/approval-proof.ts); IdPs that verify proofs require one. */
  approve(
    id: string,
    options?: { grant_type?: GrantType; duration?: number; proof?: Record<string, unknown> },
  ): Promise<Grant>;
  deny(id: string): Promise<Grant>;
  revoke(id: string): Promise<Grant>;
  token(id: string): Promise<{ authz_jwt: string; grant: Grant }>;
  consume(id: string, authzJwt: string): Promise<{ status: string; error?: string }>;
  batch(
    ops: { id: string; action: "approve" | "deny" | "revoke"; proof?: Record<string, unknown> }[],
  ): Promise<{ results: BatchResult[] }>;
}

export function grantIdOk(id: string): boolean {
  return isGrantId(id);
}

export function checkGrantId(id: string): string {
  if (!grantIdOk(id)) throw new ClientError("not_a_grant_id", `"${id}" is not a grant id`, { id });
  return id;
}

/** A 2xx answer without the shape the call expects. */
export function unexpectedAnswer(message: string): ClientError<"unexpected_answer"> {
  return new ClientError("unexpected_answer", message, {});
}

/** A session-authenticated caller: fresh token per call, one forced re-login on an unexpected 401. */
export interface Authed {
  session(): Session;
  call<T>(req: Omit<HttpRequest, "token">): Promise<HttpResponse<T>>;
}

export async function authed(ctx: ClientContext): Promise<Authed> {
  let session = await freshSession(ctx);
  return {
    session: () => session,
    async call<T>(req: Omit<HttpRequest, "token">): Promise<HttpResponse<T>> {
      session = await freshSession(ctx);
      try {
        return await request<T>(ctx, { ...req, token: session.token });
      } catch (e) {
        if (!(e instanceof HttpProblem) || e.status !== 401 || !session.keyPath) throw e;
        ctx.debug("session: token refused; logging in again once");
        session = await freshSession(ctx, { force: true });
        return request<T>(ctx, { ...req, token: session.token });
      }
    },
  };
}

/**
 * `foldTokens` (the requester of an elevation): reads ask for the requester's AuthZ-JWT with the
 * grant (`Prefer: authz-jwt`), so the long poll that reports the approval brings the token too, and
 * `token(id)` then answers from it without a request.
 */
export async function grantsClient(
  ctx: ClientContext,
  options: { foldTokens?: boolean } = {},
): Promise<GrantsClient> {
  const auth = await authed(ctx);
  const folded = new Map<string, { authz_jwt: string; grant: Grant }>();
  const endpoints = await idpEndpoints(ctx, auth.session().idp);
  const base = requireEndpoint(endpoints, endpoints.grantsEndpoint, "openape_grants_endpoint").replace(
    /\/+$/,
    "",
  );
  const url = (...parts: string[]) => [base, ...parts.map(encodeURIComponent)].join("/");
  const grantOf = (body: unknown): Grant => {
    if (body && typeof body === "object") {
      const b = body as Record<string, unknown>;
      if (typeof b.id === "string" && typeof b.status === "string") return b as unknown as Grant;
      if (b.grant && typeof b.grant === "object") return b.grant as Grant;
    }
    throw unexpectedAnswer("the IdP answered with something that is not a grant");
  };
  const authzJwtOf = (body: unknown): string => {
    const jwt = body && typeof body === "object" ? (body as { authz_jwt?: unknown }).authz_jwt : undefined;
    if (typeof jwt !== "string" || jwt.split(".").length !== 3) {
      throw unexpectedAnswer("the IdP answered the token request without an authz_jwt");
    }
    return jwt;
  };
  const action = async (id: string, verb: string, json: unknown = {}) =>
    grantOf((await auth.call({ url: url(checkGrantId(id), verb), method: "POST", json })).body);

  return {
    get session() {
      return auth.session();
    },
    endpoints,
    async create(req, options = {}) {
      const res = await auth.call<unknown>({
        url: base,
        method: "POST",
        json: req,
        ...(options.authzJwt ? { headers: { prefer: "authz-jwt" } } : {}),
      });
      const grant = grantOf(res.body);
      const reused = res.status === 200;
      const applied = /\bauthz-jwt\b/i.test(res.headers.get("preference-applied") ?? "");
      if (!options.authzJwt || !reused || !applied) return { grant, reused };
      return { grant, reused, authz_jwt: authzJwtOf(res.body) };
    },
    async get(id) {
      return grantOf((await auth.call({ url: url(checkGrantId(id)) })).body);
    },
    async fetch(id, fetchOptions = {}) {
      const prefer: string[] = [];
      if (fetchOptions.waitSeconds && fetchOptions.waitSeconds > 0)
        prefer.push(`wait=${Math.ceil(fetchOptions.waitSeconds)}`);
      if (options.foldTokens) prefer.push("authz-jwt");
      const headers: Record<string, string> = prefer.length ? { prefer: prefer.join(", ") } : {};
      const res = await auth.call<unknown>({
        url: url(checkGrantId(id)),
        headers,
        etag: fetchOptions.etag,
        signal: fetchOptions.signal,
        timeoutMs: fetchOptions.waitSeconds ? fetchOptions.waitSeconds * 1000 + 10_000 : undefined,
      });
      const applied = res.headers.get("preference-applied") ?? "";
      const retryAfter = Number(res.headers.get("retry-after"));
      const grant = res.notModified ? undefined : grantOf(res.body);
      if (grant && options.foldTokens && /\bauthz-jwt\b/i.test(applied))
        folded.set(grant.id, { authz_jwt: authzJwtOf(res.body), grant });
      return {
        grant,
        etag: res.etag,
        notModified: res.notModified,
        waitApplied: /\bwait\b/i.test(applied),
        retryAfterMs: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined,
      };
    },
    async list(query = {}) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== "") params.set(k, String(v));
      const qs = params.toString();
      const res = await auth.call<GrantList>({ url: qs ? `${base}?${qs}` : base });
      const body = res.body;
      if (!body || !Array.isArray(body.data)) {
        // Older IdPs answer a bare array.
        if (Array.isArray(body))
          return { data: body as Grant[], pagination: { cursor: null, has_more: false } };
        throw unexpectedAnswer("the IdP answered the grant list with an unexpected shape");
      }
      return { data: body.data, pagination: body.pagination ?? { cursor: null, has_more: false } };
    },
    approve: (id, options = {}) => action(id, "approve", options),
    deny: (id) => action(id, "deny"),
    revoke: (id) => action(id, "revoke"),
    async token(id) {
      // From the answer that reported the approval, once; else the token endpoint.
      const kept = folded.get(id);
      folded.delete(id);
      if (kept && kept.grant.status === "approved") return kept;
      const res = await auth.call<{ authz_jwt?: unknown; grant?: Grant }>({
        url: url(checkGrantId(id), "token"),
        method: "POST",
        json: {},
      });
      return { authz_jwt: authzJwtOf(res.body), grant: res.body?.grant as Grant };
    },
    async consume(id, authzJwt) {
      // Authorized by the AuthZ-JWT itself, not the session.
      const res = await request<{ status: string; error?: string }>(ctx, {
        url: url(checkGrantId(id), "consume"),
        method: "POST",
        token: authzJwt,
        json: {},
        accept: [400, 409, 410],
      });
      return res.body;
    },
    async batch(ops) {
      for (const op of ops) checkGrantId(op.id);
      const res = await auth.call<{ results: BatchResult[] }>({
        url: `${base}/batch`,
        method: "POST",
        json: { operations: ops },
      });
      return res.body;
    },
  };
}
