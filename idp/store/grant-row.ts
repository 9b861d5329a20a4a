import type { Grant, GrantRequest } from "../../protocol/types.ts";
import type { StoredGrant } from "./types.ts";

/** The grants table's columns a grant is read from, in both stores' schemas. */
export const GRANT_COLS =
  "seq, id, type, status, request, decided_by, created_at, decided_at, expires_at, used_at, version, created_act, decided_act, approval_proof";

/** Those columns of one row (`request` as the driver gives it: text on SQLite, parsed on PostgreSQL). */
export interface GrantColumns<R = GrantRequest> {
  seq: number;
  id: string;
  type: Grant["type"];
  status: Grant["status"];
  request: R;
  decided_by: string | null;
  created_at: number;
  decided_at: number | null;
  expires_at: number | null;
  used_at: number | null;
  version: number;
  created_act: string | null;
  decided_act: string | null;
  approval_proof: string | null;
}

/**
 * The grant a row holds, with `request` parsed: the one mapping of both stores (and of
 * idp/store/transitioned.ts), so every copy of a grant has the same fields in the same order.
 */
export function storedGrantOf(r: Omit<GrantColumns<unknown>, "request">, request: GrantRequest): StoredGrant {
  const grant: Grant = { id: r.id, type: r.type, request, status: r.status, created_at: r.created_at };
  if (r.decided_by !== null) grant.decided_by = r.decided_by;
  if (r.decided_at !== null) grant.decided_at = r.decided_at;
  if (r.expires_at !== null) grant.expires_at = r.expires_at;
  if (r.used_at !== null) grant.used_at = r.used_at;
  if (r.approval_proof !== null)
    grant.approval_proof = r.approval_proof as NonNullable<Grant["approval_proof"]>;
  const stored: StoredGrant = { grant, version: r.version, seq: r.seq };
  if (r.created_act !== null) stored.createdAct = r.created_act;
  if (r.decided_act !== null) stored.decidedAct = r.decided_act;
  return stored;
}
