import { EventEmitter } from "node:events";
import { ProblemError } from "../protocol/problem.ts";
import { CLI_TOKEN_AUDIENCE, type Grant } from "../protocol/types.ts";
import type { Call } from "../server/http.ts";
import type { Logger } from "../server/log.ts";
import { type Actor, effectiveStatus } from "./grants.ts";
import type { Keyring } from "./keys.ts";
import type { LimitClass } from "./limits.ts";
import type { Notifier } from "./notify/notifier.ts";
import type { Store, UserRecord } from "./store/types.ts";

/** Everything a route needs, built once by the server. */
export interface Idp {
  store: Store;
  keys: Keyring;
  issuer: string;
  /** Issuer without a trailing slash: the base of every advertised endpoint. */
  base: string;
  tokenTtl: number;
  log: Logger;
  events: GrantEvents;
  /** Notifications of pending and decided grants (absent: none are written). */
  notify?: Notifier;
  /** Unix seconds. */
  now(): number;
  /** Resolves when the server shuts down (long polls answer at once). */
  shutdown: AbortSignal;
  /** Verifies a session token this IdP issued (`aud: apes-cli`); throws TokenError. */
  sessionClaims(token: string): Promise<Record<string, unknown>>;
  authenticate(call: Call): Promise<Principal>;
  /** Takes one request from `key`'s bucket of the class; throws 429 (with retry_after) when empty. */
  rateLimit(limitClass: LimitClass, key: string): void;
  /** The opaque handle of an identity or delegation in the revocation feed and `rev` claims. */
  revocationHandle(kind: "user" | "delegation", subject: string): string;
}

export interface Principal {
  sub: string;
  user: UserRecord;
  actor: Actor;
  /** For a delegated (token-exchange) token: who is acting for `sub`. */
  actingParty?: string;
  tokenExp: number;
}

/** In-process change notification, keyed by grant id: long polls wait on it (no db polling). */
export class GrantEvents {
  private readonly emitter = new EventEmitter();
  private publish: ((name: string) => void) | undefined;
  constructor() {
    this.emitter.setMaxListeners(0);
  }
  /** Every event of this process also goes to `publish` (the other workers: idp/server.ts). */
  relayTo(publish: (name: string) => void): void {
    this.publish = publish;
  }
  /** An event relayed from another worker: wakes this process's waiters, and is not relayed again. */
  received(name: string): void {
    this.emitter.emit(name);
  }
  private emit(name: string): void {
    this.emitter.emit(name);
    this.publish?.(name);
  }
  changed(id: string): void {
    this.emit(id);
  }
  /** Wakes every waiter (changes may have been missed): each re-reads its grant. */
  changedAll(): void {
    for (const id of this.emitter.eventNames()) this.emitter.emit(id);
  }
  /** Resolves on the next change of `id`, or when `signal` aborts. */
  wait(id: string, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.emitter.off(id, done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      if (signal.aborted) return resolve();
      this.emitter.on(id, done);
      signal.addEventListener("abort", done, { once: true });
    });
  }
  listeners(id: string): number {
    return this.emitter.listenerCount(id);
  }
  /**
   * The pending list of everyone who sees this requester's grants changed (a grant was created or
   * decided): wakes `GET /api/grants` long polls (`apes grants watch`) of the requester, its owner,
   * its approvers and admins.
   */
  inboxChanged(requester: UserRecord | undefined, email: string): void {
    const who = new Set([
      email,
      ...(requester?.owner ? [requester.owner] : []),
      ...(requester?.approvers ?? []),
    ]);
    for (const w of who) this.emit(inboxKey(w));
    this.emit(inboxKey("*"));
  }
}

/** The event name of one user's inbox ("*": every admin's). */
export function inboxKey(email: string): string {
  return `inbox:${email}`;
}

/** The bearer token of a request (server/bearer.ts), under the name the routes use. */
export { bearerToken as bearer } from "../server/bearer.ts";

/** What principal resolution reads on every request (the server's cached, change-aware store). */
export type PrincipalLookups = Pick<Store, "getUser" | "getGrant">;

/**
 * The principal of a verified session token, re-checked against current state on every request: the
 * subject exists and is enabled; for a delegated token also its delegation (still approved or used,
 * not revoked or expired, naming exactly these two parties and the IdP's own audience) and the acting party
 * (exists, enabled). A revocation or a disabled account therefore stops a live token at once.
 */
export async function principalFrom(
  claims: Record<string, unknown>,
  lookups: PrincipalLookups,
  now: number,
): Promise<Principal> {
  const user = await lookups.getUser(claims.sub as string);
  if (!user) throw new ProblemError("invalid_token", "the token's subject is not a user of this IdP");
  if (user.disabled) throw new ProblemError("invalid_token", "the account is disabled");
  const act = claims.act;
  const actingParty =
    act && typeof act === "object" && typeof (act as { sub?: unknown }).sub === "string"
      ? (act as { sub: string }).sub
      : undefined;
  if (actingParty === undefined && act !== "human" && act !== "agent") {
    throw new ProblemError("invalid_token", "the token's act claim is invalid");
  }
  if (actingParty !== undefined) {
    const id = claims.delegation_grant;
    const delegation = typeof id === "string" ? (await lookups.getGrant(id))?.grant : undefined;
    const problem = delegatedTokenProblem(
      user.email,
      actingParty,
      delegation,
      await lookups.getUser(actingParty),
      now,
    );
    if (problem) throw new ProblemError("invalid_token", problem);
  }
  const p: Principal = {
    sub: user.email,
    user,
    actor: { sub: user.email, kind: user.kind, admin: user.admin, delegated: actingParty !== undefined },
    tokenExp: claims.exp as number,
  };
  if (actingParty !== undefined) p.actingParty = actingParty;
  return p;
}

/** Why a delegated token (sub = delegator, act.sub = delegate) may no longer be used; undefined: it may. */
export function delegatedTokenProblem(
  delegator: string,
  delegate: string,
  delegation: Grant | undefined,
  delegateUser: UserRecord | undefined,
  now: number,
): string | undefined {
  if (delegation?.type !== "delegation") return "the token's delegation does not exist";
  const r = delegation.request;
  if (r.delegator !== delegator || r.delegate !== delegate || r.audience !== CLI_TOKEN_AUDIENCE) {
    return "the token does not match its delegation";
  }
  const status = effectiveStatus(delegation, now);
  // "used": a `once` delegation after its one exchange, which issued this very token.
  if (status !== "approved" && status !== "used") return `the token's delegation is ${status}`;
  if (!delegateUser || delegateUser.disabled) return "the acting party's account is disabled";
  return undefined;
}
