import type { DdisaMode } from "../protocol/ddisa.ts";

/**
 * Who may sign in to an SP, from the domain's DDISA `mode` and the SP's own lists (pure). The record
 * says how the domain's people may use services; the lists are this SP's configuration:
 *
 * - `open` (also when the record has no mode): anyone the domain's IdP authenticates.
 * - `allowlist-user`: only identities on this SP's `users` or `admins` list.
 * - `allowlist-admin`: only identities on this SP's `admins` list.
 * - `deny`: nobody of that domain (refused before the IdP is even asked).
 *
 * The role is `admin` for an identity on `admins`, else `user`, whatever the mode. Identities are
 * compared in canonical form (protocol/names.ts); the caller canonicalizes the lists once.
 */

export type Role = "admin" | "user";

export interface Allowlists {
  admins: ReadonlySet<string>;
  users: ReadonlySet<string>;
}

export type Admission = { ok: true; role: Role } | { ok: false; reason: "mode_deny" | "not_allowlisted" };

export function admit(mode: DdisaMode | undefined, identity: string, lists: Allowlists): Admission {
  const role: Role = lists.admins.has(identity) ? "admin" : "user";
  switch (mode ?? "open") {
    case "open":
      return { ok: true, role };
    case "allowlist-user":
      return role === "admin" || lists.users.has(identity)
        ? { ok: true, role }
        : { ok: false, reason: "not_allowlisted" };
    case "allowlist-admin":
      return role === "admin" ? { ok: true, role } : { ok: false, reason: "not_allowlisted" };
    default:
      // deny, and any mode this code does not know: fail closed.
      return { ok: false, reason: "mode_deny" };
  }
}
