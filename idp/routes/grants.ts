import { createHash, randomUUID } from "node:crypto";
import { checkAuthzShape } from "../../protocol/authz.ts";
import { commandWarning } from "../../protocol/display.ts";
import { ProblemError } from "../../protocol/problem.ts";
import type { Grant, GrantCategory } from "../../protocol/types.ts";
import { CLI_TOKEN_AUDIENCE } from "../../protocol/types.ts";
import { type ApprovalSettings, checkApprovalProof } from "../approval.ts";
import { bearer, type Idp, inboxKey, type Principal } from "../context.ts";
import {
  type Action,
  allowedFrom,
  authzClaims,
  authzExp,
  canDecide,
  canRevoke,
  canView,
  consumeResultFor,
  identityField,
  matchKey,
  parseApproveOverrides,
  parseGrantRequest,
  targetStatus,
} from "../grants.ts";
import { type Call, jsonBody, onlyFields, type Reply, type Router } from "../http.ts";
import type { StoredGrant, Transition } from "../store/types.ts";
import { checkClaims, signToken, TokenError } from "../tokens.ts";
import {
  etagMatches,
  etagOf,
  listParams,
  loadGrant,
  MAX_WAIT,
  page,
  preferences,
  preferWait,
} from "./common.ts";
import { PATHS } from "./discovery.ts";

/**
 * The grants API (docs/protocol.md, section 3). Each handler is an ordered list of checks: parse,
 * load, visibility (404), permission (403), state (409), then one conditional store update.
 */

const MAX_BATCH = 100;

/** A list's ETag: changes when a grant joins, leaves or changes status (a digest of ids and states). */
function listEtag(grants: readonly Grant[]): string {
  const h = createHash("sha256");
  for (const g of grants) h.update(`${g.id}:${g.status}:${g.decided_at ?? ""}\n`);
  return `"l-${h.digest("base64url").slice(0, 22)}"`;
}

/** Loads a grant the principal may see; others' grants are indistinguishable from missing ones. */
async function visibleGrant(idp: Idp, p: Principal, id: string): Promise<StoredGrant> {
  const stored = await loadGrant(idp, id);
  if (!canView(p.actor, stored.grant, await idp.store.getUser(stored.grant.request.requester))) {
    throw new ProblemError("not_found", "no such grant");
  }
  return stored;
}

/** Log fields naming the acting party of a delegated token (it acts for `p.sub`). */
function actingFields(p: Principal): { act_sub?: string } {
  return p.actingParty ? { act_sub: p.actingParty } : {};
}

function invalidState(grant: Grant, wanted: string): ProblemError {
  return new ProblemError("invalid_state", `the grant is ${grant.status}, not ${wanted}`, {
    grant_status: grant.status,
  });
}

/**
 * approve / deny / revoke, shared by the single calls and batch (so both authorize identically). An
 * approval also needs its proof (idp/approval.ts), checked last, against the grant as stored.
 */
export async function applyAction(
  idp: Idp,
  approvals: ApprovalSettings,
  p: Principal,
  id: string,
  action: Action,
  body: Record<string, unknown>,
): Promise<Grant> {
  const stored = await visibleGrant(idp, p, id);
  const grant = stored.grant;
  const requester = await idp.store.getUser(grant.request.requester);
  const now = idp.now();
  let t: Transition;
  if (action === "revoke") {
    onlyFields(body, ["reason"]);
    const decision = canRevoke(p.actor, grant, requester);
    if (!decision.ok) throw new ProblemError("forbidden", decision.reason);
    t = { from: allowedFrom("revoke", grant.request.requester === p.sub), to: "revoked", at: idp.now() };
  } else {
    const decision = canDecide(p.actor, requester);
    if (!decision.ok) throw new ProblemError("forbidden", decision.reason);
    if (grant.status !== "pending") throw invalidState(grant, "pending");
    t = { from: ["pending"], to: targetStatus(action), decidedBy: p.sub, decidedAt: now };
    // The requester hears of the decision: rows written with the transition, only if it applies.
    const decided: Grant = { ...grant, status: t.to, decided_by: p.sub, decided_at: now };
    const outbox = (await idp.notify?.rowsFor("decided", decided, requester, now)) ?? [];
    if (outbox.length) t.outbox = outbox;
    if (action === "approve") {
      const { proof, ...choice } = body;
      const o = parseApproveOverrides(choice, grant.request);
      t.approvalProof = await checkApprovalProof(idp, approvals, p, grant, o, proof);
      if (o.grantType !== grant.request.grant_type) t.grantType = o.grantType;
      if (o.duration !== grant.request.duration) t.duration = o.duration ?? null;
      if (o.grantType === "timed") t.expiresAt = now + o.duration!;
    } else onlyFields(body, ["reason"]);
  }
  t.actingParty = p.actingParty ?? null;
  if (!t.from.includes(grant.status)) throw invalidState(grant, t.from.join(" or "));
  const updated = await idp.store.transition(id, t);
  if (!updated) {
    // Lost a race with another decision: report the state that won.
    throw invalidState((await idp.store.getGrant(id))?.grant ?? grant, t.from.join(" or "));
  }
  idp.events.changed(id);
  idp.events.inboxChanged(requester, grant.request.requester);
  if (t.outbox) idp.notify?.kick();
  idp.log.log("info", `grant ${updated.grant.status}`, {
    grant: id,
    by: p.sub,
    ...actingFields(p),
    requester: grant.request.requester,
    ...(t.approvalProof ? { proof: t.approvalProof } : {}),
  });
  return updated.grant;
}

/**
 * `Prefer: authz-jwt` (RFC 7240 syntax) on a create or a read: fold the requester's AuthZ-JWT into a
 * reuse answer, or into the answer of a read (a long poll's included) that finds its grant approved.
 */
function preferAuthzJwt(call: Call): boolean {
  return preferences(call).includes("authz-jwt");
}

/**
 * The requester's AuthZ-JWT for an approved command grant: `{authz_jwt, grant}`, what `POST
 * /{id}/token` answers; undefined when the token endpoint would refuse (not the requester, not a
 * command grant, not approved). The one place such a token is minted.
 */
async function issueAuthz(
  idp: Idp,
  p: Principal,
  grant: Grant,
  issued: IssuedTokens,
): Promise<{ authz_jwt: string; grant: Grant } | undefined> {
  if (grant.request.requester !== p.sub || grant.type !== "command" || grant.status !== "approved")
    return undefined;
  const iat = idp.now();
  const claims = authzClaims({ issuer: idp.issuer, grant, act: p.actor.kind, iat, jti: randomUUID() });
  const authzJwt = await signToken(claims, await idp.keys.signingKey(iat, authzExp(grant, iat)));
  issued.add(authzJwt, claims);
  return { authz_jwt: authzJwt, grant };
}

/**
 * GET with ETag, If-None-Match and `Prefer: wait=N` (answered as soon as the grant changes); with
 * `Prefer: authz-jwt` an approved grant comes as `{authz_jwt, grant}` for its requester, so a waiting
 * elevation has its token in the answer that tells it of the approval.
 */
async function getGrant(idp: Idp, call: Call, p: Principal, issued: IssuedTokens): Promise<Reply> {
  const id = call.params.id!;
  let stored = await visibleGrant(idp, p, id);
  const ifNoneMatch = call.req.headers["if-none-match"];
  const wait = preferWait(call);
  const headers: Record<string, string> = {};
  if (wait !== undefined) {
    headers["preference-applied"] = `wait=${wait}`;
    // Wait only while the client's view (its ETag, or the state it just saw) is current.
    const seen = ifNoneMatch ?? etagOf(stored);
    if (etagMatches(seen, etagOf(stored))) {
      const deadline = Date.now() + Math.min(wait, MAX_WAIT) * 1000;
      const stop = AbortSignal.any([
        call.closed,
        idp.shutdown,
        AbortSignal.timeout(Math.max(0, deadline - Date.now())),
      ]);
      for (;;) {
        // Subscribed before reading: a change between the read and the wait still wakes us.
        const round = new AbortController();
        const changed = idp.events.wait(id, AbortSignal.any([stop, round.signal]));
        stored = await loadGrant(idp, id);
        if (stop.aborted || !etagMatches(seen, etagOf(stored))) {
          round.abort();
          break;
        }
        await changed;
      }
      // The wait may have outlasted a revoked delegation or a disabled account: check again.
      await idp.authenticate(call);
    }
  }
  const etag = etagOf(stored);
  headers.etag = etag;
  if (etagMatches(ifNoneMatch, etag)) return { status: 304, headers };
  const folded = preferAuthzJwt(call) ? await issueAuthz(idp, p, stored.grant, issued) : undefined;
  if (folded) {
    const applied = headers["preference-applied"];
    headers["preference-applied"] = applied ? `${applied}, authz-jwt` : "authz-jwt";
    return { status: 200, body: folded, headers };
  }
  return { status: 200, body: stored.grant, headers };
}

/**
 * AuthZ-JWTs this process issued, by exact string: presenting one of them proves it was signed
 * here, so consume skips the Ed25519 verification (the expensive step). Bounded; after a restart
 * every token is verified again.
 */
class IssuedTokens {
  private readonly map = new Map<string, Record<string, unknown>>();
  add(token: string, claims: Record<string, unknown>): void {
    if (this.map.size >= 20_000) this.map.clear();
    this.map.set(token, claims);
  }
  get(token: string): Record<string, unknown> | undefined {
    return this.map.get(token);
  }
  delete(token: string): void {
    this.map.delete(token);
  }
}

export function registerGrantRoutes(
  router: Router<Principal>,
  idp: Idp,
  approvals: ApprovalSettings = { allowBearer: false },
): void {
  const G = PATHS.grants;
  const issued = new IssuedTokens();

  router.add("POST", G, true, async (call, p): Promise<Reply> => {
    const body = await jsonBody(call);
    const request = parseGrantRequest(body, p.sub);
    if (request.audience === CLI_TOKEN_AUDIENCE) {
      throw new ProblemError(
        "invalid_request",
        `audience "${CLI_TOKEN_AUDIENCE}" is reserved for session tokens`,
      );
    }
    const now = idp.now();
    const key = matchKey(request);
    // An approved timed/always grant for exactly this command is reused (200) instead of asking again.
    const reusable = await idp.store.findReusable(request.requester, key, now);
    if (reusable) {
      // `Prefer: authz-jwt`: the requester's token in the same answer, saving it a round trip (the
      // token endpoint's own checks and token: docs/protocol.md section 3).
      const folded = preferAuthzJwt(call) ? await issueAuthz(idp, p, reusable.grant, issued) : undefined;
      if (folded)
        return {
          status: 200,
          body: folded,
          headers: { etag: etagOf(reusable), "preference-applied": "authz-jwt" },
        };
      return { status: 200, body: reusable.grant, headers: { etag: etagOf(reusable) } };
    }
    const grant: Grant = { id: randomUUID(), type: "command", request, status: "pending", created_at: now };
    // The requester's owner and approvers hear of it: the rows are written with the grant.
    const outbox = (await idp.notify?.rowsFor("pending", grant, p.user, now)) ?? [];
    const stored = await idp.store.insertGrant({
      grant,
      matchKey: key,
      ...(p.actingParty ? { actingParty: p.actingParty } : {}),
      ...(outbox.length ? { outbox } : {}),
    });
    idp.events.inboxChanged(p.user, p.sub);
    if (outbox.length) idp.notify?.kick();
    idp.log.log("info", "grant created", {
      rid: call.rid,
      grant: grant.id,
      requester: p.sub,
      ...actingFields(p),
    });
    // Every display marks such a command; the log says so too, for whoever reads it later.
    const warning = request.command && commandWarning(request.command);
    if (warning)
      idp.log.log("warn", "grant command shown escaped", { rid: call.rid, grant: grant.id, warning });
    return {
      status: 201,
      body: stored.grant,
      headers: { location: `${idp.base}${G}/${grant.id}`, etag: etagOf(stored) },
    };
  });

  router.add("GET", G, true, async (call, p) => {
    const q = listParams(call, ["requester", "type"]);
    const asked = q.get("requester");
    const requester = asked === undefined ? undefined : identityField("requester", asked);
    const type = q.get("type");
    if (type !== undefined && type !== "command" && type !== "delegation") {
      throw new ProblemError("invalid_request", "type must be command or delegation");
    }
    let requesters: string[] | undefined;
    if (p.actor.admin) requesters = requester ? [requester] : undefined;
    else {
      const visible = [p.sub, ...(await idp.store.subordinatesOf(p.sub))];
      requesters = requester ? visible.filter((r) => r === requester) : visible;
    }
    const load = async () => {
      const result = await idp.store.queryGrants({
        ...(requesters ? { requesters } : {}),
        ...(q.status ? { status: q.status } : {}),
        ...(type ? { type: type as GrantCategory } : {}),
        limit: q.limit,
        ...(q.before ? { before: q.before } : {}),
      });
      const body = await page(idp, result.items, result.hasMore);
      return { body, etag: listEtag(body.data) };
    };
    let current = await load();
    const ifNoneMatch = call.req.headers["if-none-match"];
    const wait = preferWait(call);
    const headers: Record<string, string> = {};
    // A long poll on the list (`apes grants watch`): answered when the list differs from the
    // client's ETag. Woken by inbox events (GrantEvents.inboxChanged), bounded by MAX_WAIT.
    if (wait !== undefined) {
      headers["preference-applied"] = `wait=${wait}`;
      if (etagMatches(ifNoneMatch, current.etag)) {
        const stop = AbortSignal.any([
          call.closed,
          idp.shutdown,
          AbortSignal.timeout(Math.min(wait, MAX_WAIT) * 1000),
        ]);
        const key = inboxKey(p.actor.admin ? "*" : p.sub);
        for (;;) {
          const round = new AbortController();
          const changed = idp.events.wait(key, AbortSignal.any([stop, round.signal]));
          current = await load();
          if (stop.aborted || !etagMatches(ifNoneMatch, current.etag)) {
            round.abort();
            break;
          }
          await changed;
        }
        await idp.authenticate(call);
      }
    }
    headers.etag = current.etag;
    if (etagMatches(ifNoneMatch, current.etag)) return { status: 304, headers };
    return { status: 200, body: current.body, headers };
  });

  // Verify an AuthZ-JWT without consuming it. The token in the body is the credential.
  router.add("POST", `${G}/verify`, false, async (call) => {
    const body = await jsonBody(call);
    onlyFields(body, ["token"]);
    if (typeof body.token !== "string") throw new ProblemError("invalid_request", "token is required");
    const now = idp.now();
    let claims: Record<string, unknown>;
    try {
      claims = await idp.keys.verify(body.token, { now, issuer: idp.issuer, leeway: 0 });
    } catch (e) {
      if (e instanceof TokenError)
        return { status: 200, body: { valid: false, error: e.reason, detail: e.message } };
      throw e;
    }
    if (typeof claims.grant_id !== "string") {
      return {
        status: 200,
        body: { valid: false, error: "not_authz_jwt", detail: "the token names no grant" },
      };
    }
    const stored = await idp.store.getGrant(claims.grant_id);
    const outcome = stored ? consumeResultFor(stored.grant, now) : undefined;
    if (!outcome?.ok) {
      return { status: 200, body: { valid: false, error: outcome?.error ?? "not_found", claims } };
    }
    return { status: 200, body: { valid: true, claims } };
  });

  router.add("POST", `${G}/batch`, true, async (call, p) => {
    const body = await jsonBody(call);
    onlyFields(body, ["operations"]);
    const ops = body.operations;
    if (!Array.isArray(ops) || ops.length === 0 || ops.length > MAX_BATCH) {
      throw new ProblemError(
        "invalid_request",
        `operations must be an array of 1..${MAX_BATCH} {id, action}`,
      );
    }
    const parsed = ops.map((op, i) => {
      if (!op || typeof op !== "object" || Array.isArray(op)) {
        throw new ProblemError("invalid_request", `operations[${i}] must be an object`);
      }
      const o = op as Record<string, unknown>;
      for (const k of Object.keys(o)) {
        if (!["id", "action", "grant_type", "duration", "reason", "proof"].includes(k)) {
          throw new ProblemError("invalid_request", `operations[${i}]: unknown field "${k}"`);
        }
      }
      if (typeof o.id !== "string")
        throw new ProblemError("invalid_request", `operations[${i}].id is required`);
      if (o.action !== "approve" && o.action !== "deny" && o.action !== "revoke") {
        throw new ProblemError("invalid_request", `operations[${i}].action must be approve, deny or revoke`);
      }
      const { id, action, ...rest } = o;
      return { id, action: o.action as Action, rest };
    });
    // One after the other, in the order given (each may see the previous one's effect).
    const results = [];
    for (const { id, action, rest } of parsed) {
      try {
        const g = await applyAction(idp, approvals, p, id, action, rest);
        results.push({ id, success: true, status: g.status });
      } catch (e) {
        if (!(e instanceof ProblemError)) throw e;
        const status = e.extensions.grant_status;
        results.push({ id, success: false, error: e.code, detail: e.message, ...(status ? { status } : {}) });
      }
    }
    return { status: 200, body: { results } };
  });

  router.add("GET", `${G}/:id`, true, (call, p) => getGrant(idp, call, p, issued));

  for (const action of ["approve", "deny", "revoke"] as const) {
    router.add("POST", `${G}/:id/${action}`, true, async (call, p) => {
      const body = await jsonBody(call);
      return { status: 200, body: await applyAction(idp, approvals, p, call.params.id!, action, body) };
    });
  }

  router.add("POST", `${G}/:id/token`, true, async (call, p) => {
    const body = await jsonBody(call);
    onlyFields(body, []);
    const stored = await visibleGrant(idp, p, call.params.id!);
    const grant = stored.grant;
    if (grant.request.requester !== p.sub) {
      throw new ProblemError("forbidden", "only the requester may fetch the grant's token");
    }
    if (grant.type !== "command") {
      throw new ProblemError(
        "invalid_request",
        "delegations are used through token exchange at the token endpoint",
      );
    }
    if (grant.status !== "approved") throw invalidState(grant, "approved");
    return { status: 200, body: (await issueAuthz(idp, p, grant, issued))! };
  });

  // Consume with the AuthZ-JWT as bearer: `once` grants are used exactly once (conditional update).
  router.add("POST", `${G}/:id/consume`, false, async (call) => {
    const token = bearer(call);
    const now = idp.now();
    let claims = issued.get(token);
    try {
      if (claims) checkClaims(claims, { now, leeway: 0 });
      else claims = await idp.keys.verify(token, { now, issuer: idp.issuer, leeway: 0 });
    } catch (e) {
      if (e instanceof TokenError) throw new ProblemError("invalid_token", e.message, { reason: e.reason });
      throw e;
    }
    // Session and delegated tokens have no grant_id (or an actor object): they spend nothing.
    if (claims.grant_id !== call.params.id || checkAuthzShape(claims)) {
      throw new ProblemError("invalid_token", "the token is not an AuthZ-JWT for this grant");
    }
    const body = await jsonBody(call);
    onlyFields(body, []);
    let stored = await loadGrant(idp, call.params.id!);
    if (claims.sub !== stored.grant.request.requester || claims.aud !== stored.grant.request.audience) {
      throw new ProblemError("invalid_token", "the token does not match the grant");
    }
    let outcome = consumeResultFor(stored.grant, now);
    if (outcome.ok && outcome.markUsed) {
      const used = await idp.store.transition(stored.grant.id, {
        from: ["approved"],
        to: "used",
        usedAt: now,
      });
      if (used) {
        issued.delete(token);
        idp.events.changed(stored.grant.id);
        idp.log.log("info", "grant consumed", { rid: call.rid, grant: stored.grant.id });
        return { status: 200, body: { status: "consumed", grant_id: stored.grant.id } };
      }
      // Someone else consumed (or revoked) it between our read and write.
      stored = await loadGrant(idp, call.params.id!);
      outcome = consumeResultFor(stored.grant, now);
    }
    if (outcome.ok) return { status: 200, body: { status: outcome.status, grant_id: stored.grant.id } };
    return { status: 409, body: { error: outcome.error, status: outcome.status, grant_id: stored.grant.id } };
  });
}
