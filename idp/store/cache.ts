import type { NewUser, Store, UserRecord } from "./types.ts";

/**
 * A Store whose user lookups are served from memory. Users change rarely and only through this
 * process (agent enrollment: cleared here) or the offline admin commands in another process
 * (detected by the store's change marker on every lookup, so a disabled user is refused at once).
 */
export function withUserCache(store: Store): Store {
  const users = new Map<string, UserRecord | undefined>();
  const subordinates = new Map<string, string[]>();
  let marker = store.externalChangeMarker();
  const fresh = () => {
    const m = store.externalChangeMarker();
    if (m !== marker) {
      marker = m;
      users.clear();
      subordinates.clear();
    }
  };
  const clear = () => {
    users.clear();
    subordinates.clear();
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
    getGrant: (id) => store.getGrant(id),
    findReusable: (r, k, n) => store.findReusable(r, k, n),
    queryGrants: (q) => store.queryGrants(q),
    transition: (id, t) => store.transition(id, t),
    expireDue: (n) => store.expireDue(n),
    flushed: () => store.flushed?.(),
    checkpoint: () => store.checkpoint(),
    close: () => store.close(),
  };
}
