import type { Grant } from "../../protocol/types.ts";
import type { StoredGrant, Transition } from "./types.ts";

/**
 * The grant `seen` becomes when a store applies `t` to its row (the row at seen's version): what
 * reading the row back would return, one version later, with its fields in the order a read gives
 * them. Objects `t` does not change (the request, mostly) are shared with `seen`, not copied. The
 * store contract checks this against the row as read back, for every kind of transition.
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
  const grant: Grant = { id: was.id, type: was.type, request, status: t.to, created_at: was.created_at };
  const decidedBy = t.decidedBy ?? was.decided_by;
  if (decidedBy !== undefined) grant.decided_by = decidedBy;
  const decidedAt = t.decidedAt ?? was.decided_at;
  if (decidedAt !== undefined) grant.decided_at = decidedAt;
  const expiresAt = t.expiresAt === undefined ? was.expires_at : (t.expiresAt ?? undefined);
  if (expiresAt !== undefined) grant.expires_at = expiresAt;
  const usedAt = t.usedAt ?? was.used_at;
  if (usedAt !== undefined) grant.used_at = usedAt;
  const proof = t.approvalProof ?? was.approval_proof;
  if (proof !== undefined) grant.approval_proof = proof;
  const stored: StoredGrant = { grant, version: seen.version + 1, seq: seen.seq };
  if (seen.createdAct !== undefined) stored.createdAct = seen.createdAct;
  const decidedAct = t.actingParty === undefined ? seen.decidedAct : (t.actingParty ?? undefined);
  if (decidedAct !== undefined) stored.decidedAct = decidedAct;
  return stored;
}
