import { storedGrantOf } from "./rows.ts";
import type { StoredGrant, Transition } from "./types.ts";

/**
 * The grant `seen` becomes when a store applies `t` to its row (the row at seen's version): the
 * columns the UPDATE sets, changed as it changes them, mapped as a read maps them (rows.ts),
 * one version later. Objects `t` does not change (the request, mostly) are shared with `seen`, not
 * copied. The store contract checks this against the row as read back, for every kind of transition.
 */
export function transitioned(seen: StoredGrant, t: Transition): StoredGrant {
  const was = seen.grant;
  let request = was.request;
  if (t.grantType !== undefined || t.duration !== undefined) {
    request = { ...request };
    if (t.grantType !== undefined) request.grant_type = t.grantType;
    if (t.duration === null) delete request.duration;
    else if (t.duration !== undefined) request.duration = t.duration;
  }
  const columns = {
    seq: seen.seq,
    id: was.id,
    type: was.type,
    status: t.to,
    decided_by: t.decidedBy ?? was.decided_by ?? null,
    created_at: was.created_at,
    decided_at: t.decidedAt ?? was.decided_at ?? null,
    expires_at: t.expiresAt === undefined ? (was.expires_at ?? null) : t.expiresAt,
    used_at: t.usedAt ?? was.used_at ?? null,
    version: seen.version + 1,
    created_act: seen.createdAct ?? null,
    decided_act: t.actingParty === undefined ? (seen.decidedAct ?? null) : t.actingParty,
    approval_proof: t.approvalProof ?? was.approval_proof ?? null,
  };
  return storedGrantOf(columns, request);
}
