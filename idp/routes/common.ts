import { ProblemError } from "../../protocol/problem.ts";
import type { GrantStatus } from "../../protocol/types.ts";
import { GRANT_STATUSES } from "../../protocol/types.ts";
import type { Idp } from "../context.ts";
import { effectiveStatus } from "../grants.ts";
import type { Call } from "../http.ts";
import type { PageCursor, StoredGrant } from "../store/types.ts";

/** Helpers shared by the grant and delegation routes. */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Loads a grant by id (404 for malformed or unknown ids) and applies timed expiry first. */
export async function loadGrant(idp: Idp, id: string): Promise<StoredGrant> {
  if (!UUID.test(id)) throw new ProblemError("not_found", "no such grant");
  const stored = await idp.store.getGrant(id);
  if (!stored) throw new ProblemError("not_found", "no such grant");
  return expireIfDue(idp, stored);
}

/** A timed grant past expires_at becomes `expired` before anyone sees or uses it. */
export async function expireIfDue(idp: Idp, stored: StoredGrant): Promise<StoredGrant> {
  const now = idp.now();
  if (stored.grant.status === "approved" && effectiveStatus(stored.grant, now) === "expired") {
    const updated = await idp.store.transition(stored.grant.id, { from: ["approved"], to: "expired" });
    if (updated) {
      idp.events.changed(stored.grant.id);
      return updated;
    }
    return (await idp.store.getGrant(stored.grant.id)) ?? stored;
  }
  return stored;
}

export function etagOf(stored: StoredGrant): string {
  return `"${stored.version}"`;
}

export function etagMatches(header: string | string[] | undefined, etag: string): boolean {
  if (!header) return false;
  if (Array.isArray(header)) return header.some((h) => etagMatches(h, etag));
  if (header.trim() === "*") return true;
  return header.split(",").some((t) => t.trim().replace(/^W\//, "") === etag);
}

export const MAX_WAIT = 60;

/**
 * The words of the `Prefer` headers (RFC 7240), every line joined and split at commas, semicolons and
 * whitespace: `wait=5`, `authz-jwt`, ... The one parser of the header for every route.
 */
export function preferences(call: Call): string[] {
  const raw = call.req.headers.prefer;
  if (!raw) return [];
  return (Array.isArray(raw) ? raw.join(",") : raw).split(/[,;\s]+/).filter(Boolean);
}

/** `Prefer: wait=N`, capped at 60 s. */
export function preferWait(call: Call): number | undefined {
  for (const p of preferences(call)) {
    const m = /^wait=(\d{1,6})$/.exec(p);
    if (m) return Math.min(Number(m[1]), MAX_WAIT);
  }
  return undefined;
}

export function encodeCursor(c: PageCursor): string {
  return Buffer.from(JSON.stringify([c.createdAt, c.seq])).toString("base64url");
}

export function decodeCursor(value: string): PageCursor {
  try {
    const v = JSON.parse(Buffer.from(value, "base64url").toString("utf8")) as unknown;
    if (Array.isArray(v) && v.length === 2 && v.every((n) => Number.isSafeInteger(n) && n >= 0)) {
      return { createdAt: v[0] as number, seq: v[1] as number };
    }
  } catch {
    // fall through
  }
  throw new ProblemError("invalid_request", "invalid pagination cursor");
}

export interface ListParams {
  limit: number;
  before?: PageCursor;
  status?: GrantStatus;
  get(name: string): string | undefined;
}

/** Parses list query parameters; unknown parameters are refused (a typo must not widen a query). */
export function listParams(call: Call, extra: readonly string[]): ListParams {
  const allowed = ["limit", "cursor", "status", ...extra];
  const values = new Map<string, string>();
  for (const [k, v] of call.query) {
    if (!allowed.includes(k)) throw new ProblemError("invalid_request", `unknown query parameter "${k}"`);
    if (values.has(k)) throw new ProblemError("invalid_request", `query parameter "${k}" is repeated`);
    values.set(k, v);
  }
  const limitText = values.get("limit");
  const limit = limitText === undefined ? 20 : Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
    throw new ProblemError("invalid_request", "limit must be an integer in 1..100");
  }
  const p: ListParams = { limit, get: (n) => values.get(n) };
  const cursor = values.get("cursor");
  if (cursor) p.before = decodeCursor(cursor);
  const status = values.get("status");
  if (status !== undefined) {
    if (!(GRANT_STATUSES as readonly string[]).includes(status)) {
      throw new ProblemError("invalid_request", `status must be one of ${GRANT_STATUSES.join(", ")}`);
    }
    p.status = status as GrantStatus;
  }
  return p;
}

export async function page(idp: Idp, items: StoredGrant[], hasMore: boolean) {
  const last = items[items.length - 1];
  const data: StoredGrant["grant"][] = [];
  for (const s of items) data.push((await expireIfDue(idp, s)).grant);
  return {
    data,
    pagination: {
      cursor: hasMore && last ? encodeCursor({ createdAt: last.grant.created_at, seq: last.seq }) : null,
      has_more: hasMore,
    },
  };
}
