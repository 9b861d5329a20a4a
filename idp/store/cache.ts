import type { NewUser, Store, StoredGrant, UserRecord } from "./types.ts";

/**
 * A Store whose lookups on every authenticated request (users, and the delegation behind a delegated
 * token) are served from memory. They change rarely, and only through this process (every write
 * goes through this wrapper and drops what it touches) or through the offline admin commands in
 * another process (detected by the store's change marker, one pragma, checked on every cached
 * lookup: a user disabled there is refused on its next request).
 */
export function withReadCache(store: Store): Store {
  const users = new Map<string, UserRecord | undefined>();
  const subordinates = new Map<string, string[]>();
  // Delegations only: command grants are read once or twice each and change on every step.
  const delegations = new Map<string, StoredGrant>();
  let marker = store.externalChangeMarker();
  const clear = () => {
    users.clear();
    subordinates.clear();
    delegations.clear();
  };
  const fresh = () => {
    const m = store.externalChangeMarker();
    if (m !== marker) {
      marker = m;
      clear();
    }
  };
  return {
    addUser(u: NewUser) {
      store.addUser(u);
      clear();
    },
    getUser(email) {
      fresh();
      if (users.has(email)) return users.get(email);
      const u = store.getUser(email);
      if (users.size > 10_000) users.clear();
      users.set(email, u);
      return u;
    },
    listUsers: () => store.listUsers(),
    setDisabled(email, disabled) {
      const r = store.setDisabled(email, disabled);
      clear();
      return r;
    },
    subordinatesOf(email) {
      fresh();
      let s = subordinates.get(email);
      if (!s) {
        s = store.subordinatesOf(email);
        if (subordinates.size > 10_000) subordinates.clear();
        subordinates.set(email, s);
      }
      return s;
    },
    listSigningKeys: () => store.listSigningKeys(),
    addSigningKey: (k) => store.addSigningKey(k),
    retireSigningKeys: (kid, now) => store.retireSigningKeys(kid, now),
    raiseKeyMaxExp: (kid, exp) => store.raiseKeyMaxExp(kid, exp),
    externalChangeMarker: () => store.externalChangeMarker(),
    spendChallenge: (c, s, e) => store.spendChallenge(c, s, e),
    useJti: (j, e) => store.useJti(j, e),
    purgeExpired: (n) => store.purgeExpired(n),
    insertGrant: (g) => store.insertGrant(g),
    getGrant(id) {
      // The change marker only where memory answers: command grants are read from the store anyway.
      if (delegations.has(id)) fresh();
      const cached = delegations.get(id);
      if (cached) return cached;
      const g = store.getGrant(id);
      if (g?.grant.type === "delegation") {
        if (delegations.size > 10_000) delegations.clear();
        delegations.set(id, deepFreeze(g));
      }
      return g;
    },
    findReusable: (r, k, n) => store.findReusable(r, k, n),
    queryGrants: (q) => store.queryGrants(q),
    transition(id, t) {
      delegations.delete(id);
      return store.transition(id, t);
    },
    expireDue(n) {
      const ids = store.expireDue(n);
      for (const id of ids) delegations.delete(id);
      return ids;
    },
    flushed: () => store.flushed?.(),
    checkpoint: () => store.checkpoint(),
    close: () => store.close(),
  };
}

/** Cached values are shared by every reader: frozen, so no caller can change what the next one sees. */
function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
