import { canonicalIdentity } from "../protocol/names.ts";

/**
 * Who a verified token names, as the troop records it (docs/control-plane.md, "Actors"): pure.
 * `act: "human"` and `act: "agent"` are equal: the identity acts for itself. `act: {sub}` (a token
 * from a delegation exchange) is "act.sub acting for sub". Anything else is refused.
 */
export interface Actor {
  /** The identity holding the token and acting: sub, or act.sub for a delegated token. */
  holder: string;
  kind: "human" | "agent" | "delegated";
  /** For a delegated token: whom the holder acts for (sub). */
  actingFor?: string;
  /** The identity whose authority is used: sub (the delegator for a delegated token). */
  principal: string;
  /** Who may command the holder as a nest: its owner (itself when it has none) and approvers. */
  commanders: string[];
  /** Revocation-feed handles whose events end this token. */
  rev: string[];
  iat: number;
  exp: number;
}

export type ActorResult = { ok: true; actor: Actor } | { ok: false; reason: string };

const HANDLE = /^[A-Za-z0-9_-]{22}$/;

export function actorOf(claims: Record<string, unknown>): ActorResult {
  const sub = canonicalIdentity(claims.sub);
  if (!sub) return { ok: false, reason: "the token's sub is not an identity" };
  const act = claims.act;
  let holder: string;
  let kind: Actor["kind"];
  let actingFor: string | undefined;
  if (act === "human" || act === "agent") {
    holder = sub;
    kind = act;
  } else if (
    typeof act === "object" &&
    act !== null &&
    !Array.isArray(act) &&
    Object.keys(act).length === 1 &&
    typeof (act as { sub?: unknown }).sub === "string"
  ) {
    const delegate = canonicalIdentity((act as { sub: string }).sub);
    if (!delegate || delegate === sub)
      return { ok: false, reason: "the token's act.sub is not another identity" };
    holder = delegate;
    kind = "delegated";
    actingFor = sub;
  } else {
    return { ok: false, reason: 'unknown actor: act must be "human", "agent" or {sub}' };
  }
  const rev = claims.rev;
  // Without revocation handles a token could not be ended early: refused (fail closed).
  if (
    !Array.isArray(rev) ||
    rev.length === 0 ||
    rev.length > 8 ||
    !rev.every((h) => typeof h === "string" && HANDLE.test(h))
  ) {
    return { ok: false, reason: "the token has no revocation handles (rev): not an SP token of the IdP" };
  }
  const approvers = claims.approvers ?? [];
  if (!Array.isArray(approvers) || approvers.length > 100) return { ok: false, reason: "approvers invalid" };
  const commanders: string[] = [];
  const owner = claims.owner === undefined ? holder : canonicalIdentity(claims.owner);
  if (!owner) return { ok: false, reason: "owner invalid" };
  commanders.push(owner);
  for (const a of approvers) {
    const id = canonicalIdentity(a);
    if (!id) return { ok: false, reason: "approvers invalid" };
    if (!commanders.includes(id)) commanders.push(id);
  }
  const iat = typeof claims.iat === "number" ? claims.iat : 0;
  const actor: Actor = {
    holder,
    kind,
    principal: sub,
    commanders,
    rev: rev as string[],
    iat,
    exp: claims.exp as number,
  };
  if (actingFor !== undefined) actor.actingFor = actingFor;
  return { ok: true, actor };
}

/** Whether `actor` (its principal: sub) may command the nest whose commanders are given. */
export function mayCommand(actor: Actor, nest: { id: string; commanders: readonly string[] }): boolean {
  return nest.commanders.includes(actor.principal);
}

/** The actor chain as audit lines carry it: who, and for whom when delegated. */
export function chainOf(actor: Actor): { by: string; via?: string } {
  return actor.actingFor !== undefined ? { by: actor.actingFor, via: actor.holder } : { by: actor.holder };
}

/**
 * Whether a token listing the revocation handles `rev`, issued at `iat`, is revoked by the events
 * seen (handle -> time of its newest event): an event at or after the token's issue ends it; a
 * token issued after the event (a re-enabled identity's) is not touched.
 */
export function revokedBy(events: ReadonlyMap<string, number>, rev: readonly string[], iat: number): boolean {
  return rev.some((h) => (events.get(h) ?? -1) >= iat);
}

/**
 * A person signed in to the status page in the browser (sp/login.ts): an identity acting for itself,
 * like a human or agent token. It has no revocation handles: the SP session ends at its own TTL.
 */
export function sessionActor(s: {
  email: string;
  act: "human" | "agent";
  createdAt: number;
  expiresAt: number;
}): Actor {
  return {
    holder: s.email,
    kind: s.act,
    principal: s.email,
    commanders: [s.email],
    rev: [],
    iat: s.createdAt,
    exp: s.expiresAt,
  };
}
