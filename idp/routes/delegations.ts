import { randomUUID } from "node:crypto";
import { canonicalIdentity } from "../../protocol/names.ts";
import { ProblemError } from "../../protocol/problem.ts";
import type { Grant, GrantRequest } from "../../protocol/types.ts";
import type { Idp, Principal } from "../context.ts";
import { effectiveStatus, identityField, parseDuration, parseGrantType, refuseUnsafe } from "../grants.ts";
import { jsonBody, onlyFields, type Router } from "../http.ts";
import type { StoredGrant } from "../store/types.ts";
import { etagOf, listParams, loadGrant, page } from "./common.ts";
import { PATHS } from "./discovery.ts";

/**
 * Delegations (docs/protocol.md, section 4): a human lets a delegate act for it at an audience. Created
 * already approved by the delegator; used through token exchange at the token endpoint.
 */

function isParty(p: Principal, g: Grant): boolean {
  return p.actor.admin || g.request.delegator === p.sub || g.request.delegate === p.sub;
}

async function visibleDelegation(idp: Idp, p: Principal, id: string): Promise<StoredGrant> {
  const stored = await loadGrant(idp, id);
  if (stored.grant.type !== "delegation" || !isParty(p, stored.grant)) {
    throw new ProblemError("not_found", "no such delegation");
  }
  return stored;
}

function scopesOf(value: unknown): string[] | undefined {
  if (value === undefined) return undefined;
  if (
    !Array.isArray(value) ||
    value.length > 100 ||
    !value.every((s) => typeof s === "string" && s.length > 0 && s.length <= 200)
  ) {
    throw new ProblemError("invalid_request", "scopes must be an array of at most 100 non-empty strings");
  }
  for (const [i, s] of (value as string[]).entries()) refuseUnsafe(`scopes[${i}]`, s);
  return value as string[];
}

/**
 * Creates a delegation by `p` from a request body (the API's JSON, or the delegations page's form):
 * only a human acting with its own token may hand out its authority.
 */
export async function createDelegation(
  idp: Idp,
  p: Principal,
  body: Record<string, unknown>,
  rid: string,
): Promise<Grant> {
  if (p.actor.delegated) throw new ProblemError("forbidden", "a delegated token cannot create delegations");
  if (p.actor.kind !== "human") throw new ProblemError("forbidden", "only humans create delegations");
  onlyFields(body, ["delegator", "delegate", "audience", "scopes", "grant_type", "duration"]);
  if (body.delegator !== undefined && canonicalIdentity(body.delegator) !== p.sub) {
    throw new ProblemError("forbidden", "delegator must be the authenticated identity");
  }
  const delegate = identityField("delegate", body.delegate);
  if (delegate === p.sub) throw new ProblemError("invalid_request", "cannot delegate to yourself");
  const delegateUser = await idp.store.getUser(delegate);
  if (!delegateUser || delegateUser.disabled) {
    throw new ProblemError("invalid_request", `${delegate} is not an active user of this IdP`);
  }
  if (typeof body.audience !== "string" || body.audience.length === 0 || body.audience.length > 256) {
    throw new ProblemError("invalid_request", 'audience is required (an SP identifier, or "*" for any)');
  }
  refuseUnsafe("audience", body.audience);
  const grantType = parseGrantType(body.grant_type ?? "always");
  const request: GrantRequest = {
    requester: p.sub,
    target_host: "*",
    audience: body.audience,
    grant_type: grantType,
    delegator: p.sub,
    delegate,
  };
  const scopes = scopesOf(body.scopes);
  if (scopes) request.scopes = scopes;
  const now = idp.now();
  const grant: Grant = {
    id: randomUUID(),
    type: "delegation",
    request,
    status: "approved",
    decided_by: p.sub,
    created_at: now,
    decided_at: now,
  };
  if (grantType === "timed") {
    if (body.duration === undefined)
      throw new ProblemError("invalid_request", "a timed delegation needs duration");
    request.duration = parseDuration(body.duration);
    grant.expires_at = now + request.duration;
  } else if (body.duration !== undefined) {
    throw new ProblemError("invalid_request", "duration is only valid for timed delegations");
  }
  const stored = await idp.store.insertGrant({ grant });
  idp.log.log("info", "delegation created", { rid, grant: grant.id, delegator: p.sub, delegate });
  return stored.grant;
}

/** Revokes delegation `id` for `p`: only its delegator (or an admin), never through a delegated token. */
export async function revokeDelegation(idp: Idp, p: Principal, id: string): Promise<Grant> {
  const stored = await visibleDelegation(idp, p, id);
  if (stored.grant.request.delegator !== p.sub && !p.actor.admin) {
    throw new ProblemError("forbidden", "only the delegator revokes a delegation");
  }
  if (p.actor.delegated) throw new ProblemError("forbidden", "a delegated token cannot revoke delegations");
  // A used `once` delegation is revoked too: that stops the token its one exchange issued.
  const updated = await idp.store.transition(stored.grant.id, {
    from: ["approved", "used"],
    to: "revoked",
    at: idp.now(),
  });
  if (!updated) {
    throw new ProblemError(
      "invalid_state",
      `the delegation is ${stored.grant.status}, not approved or used`,
      {
        grant_status: stored.grant.status,
      },
    );
  }
  idp.events.changed(stored.grant.id);
  return updated.grant;
}

export function registerDelegationRoutes(router: Router<Principal>, idp: Idp): void {
  const D = PATHS.delegations;

  router.add("POST", D, true, async (call, p) => {
    const grant = await createDelegation(idp, p, await jsonBody(call), call.rid);
    return { status: 201, body: grant, headers: { location: `${idp.base}${D}/${grant.id}` } };
  });

  router.add("GET", D, true, async (call, p) => {
    const q = listParams(call, ["role"]);
    const role = q.get("role");
    if (role !== undefined && role !== "delegator" && role !== "delegate") {
      throw new ProblemError("invalid_request", "role must be delegator or delegate");
    }
    const result = await idp.store.queryGrants({
      ...(role === "delegator"
        ? { delegator: p.sub }
        : role === "delegate"
          ? { delegate: p.sub }
          : { party: p.sub }),
      ...(q.status ? { status: q.status } : {}),
      limit: q.limit,
      ...(q.before ? { before: q.before } : {}),
    });
    return { status: 200, body: await page(idp, result.items, result.hasMore) };
  });

  router.add("GET", `${D}/:id`, true, async (call, p) => {
    const stored = await visibleDelegation(idp, p, call.params.id!);
    return { status: 200, body: stored.grant, headers: { etag: etagOf(stored) } };
  });

  router.add("DELETE", `${D}/:id`, true, async (call, p) => ({
    status: 200,
    body: await revokeDelegation(idp, p, call.params.id!),
  }));

  router.add("POST", `${D}/:id/validate`, true, async (call, p) => {
    const body = await jsonBody(call);
    onlyFields(body, ["delegate", "audience"]);
    if (typeof body.delegate !== "string" || typeof body.audience !== "string") {
      throw new ProblemError("invalid_request", "delegate and audience are required");
    }
    const stored = await visibleDelegation(idp, p, call.params.id!);
    const g = stored.grant;
    const status = effectiveStatus(g, idp.now());
    let reason: string | undefined;
    if (status !== "approved") reason = `the delegation is ${status}`;
    else if (g.request.delegate !== canonicalIdentity(body.delegate)) reason = "delegate does not match";
    else if (g.request.audience !== "*" && g.request.audience !== body.audience)
      reason = "audience does not match";
    return {
      status: 200,
      body: {
        valid: reason === undefined,
        delegation: g,
        scopes: g.request.scopes ?? [],
        ...(reason ? { reason } : {}),
      },
    };
  });
}
