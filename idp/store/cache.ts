import type { Store, StoredGrant, UserRecord } from "./types.ts";

/**
 * A Store whose lookups on every authenticated request (users, and the delegation behind a delegated
 * token) are served from memory. They change rarely, and only through this process (every write
 * goes through this wrapper and drops what it touches) or through the offline admin commands in
 * another process (detected by the store's change marker, checked on every cached lookup: a user
 * disabled there is refused on its next request). A store without a change marker is returned
 * as it is: nothing could tell this process that another one changed the data.
 *
 * Lookups and writes interleave (each awaits the store): a value read while a write to it was under
 * way may be the old one, so it is kept only when no such write completed meanwhile (a generation
 * counter per kind of value, bumped when a write completes).
 */
export function withReadCache(store: Store): Store {
  const lifecycle = store.lifecycle;
  if (!lifecycle?.changeMarker) return store;
  const changeMarker = () => lifecycle.changeMarker!();
  const users = new Map<string, UserRecord | undefined>();
  const subordinates = new Map<string, string[]>();
  // Delegations only: command grants are read once or twice each and change on every step.
  const delegations = new Map<string, StoredGrant>();
  let usersGeneration = 0;
  let delegationsGeneration = 0;
  let marker = changeMarker();
  const dropUsers = () => {
    usersGeneration++;
    users.clear();
    subordinates.clear();
  };
  const dropDelegation = (id: string) => {
    delegationsGeneration++;
    delegations.delete(id);
  };
  const fresh = () => {
    const m = changeMarker();
    if (m !== marker) {
      marker = m;
      dropUsers();
      delegationsGeneration++;
      delegations.clear();
    }
  };
  return {
    async addUser(u) {
      try {
        await store.addUser(u);
      } finally {
        dropUsers();
      }
    },
    async getUser(email) {
      fresh();
      if (users.has(email)) return users.get(email);
      const generation = usersGeneration;
      const u = await store.getUser(email);
      if (generation === usersGeneration) {
        if (users.size > 10_000) users.clear();
        users.set(email, u);
      }
      return u;
    },
    listUsers: () => store.listUsers(),
    async setDisabled(email, disabled, at) {
      try {
        return await store.setDisabled(email, disabled, at);
      } finally {
        dropUsers();
      }
    },
    async subordinatesOf(email) {
      fresh();
      const cached = subordinates.get(email);
      if (cached) return cached;
      const generation = usersGeneration;
      const s = await store.subordinatesOf(email);
      if (generation === usersGeneration) {
        if (subordinates.size > 10_000) subordinates.clear();
        subordinates.set(email, s);
      }
      return s;
    },
    listSigningKeys: () => store.listSigningKeys(),
    addSigningKey: (k) => store.addSigningKey(k),
    retireSigningKeys: (kid, now) => store.retireSigningKeys(kid, now),
    raiseKeyMaxExp: (kid, exp) => store.raiseKeyMaxExp(kid, exp),
    spendChallenge: (c, s, e) => store.spendChallenge(c, s, e),
    useJti: (j, e) => store.useJti(j, e),
    purgeExpired: (n) => store.purgeExpired(n),
    revocationsAfter: (after, limit) => store.revocationsAfter(after, limit),
    lastRevocation: () => store.lastRevocation(),
    insertGrant: (g) => store.insertGrant(g),
    async getGrant(id) {
      // The change marker only where memory answers: command grants are read from the store anyway.
      if (delegations.has(id)) fresh();
      const cached = delegations.get(id);
      if (cached) return cached;
      const generation = delegationsGeneration;
      const g = await store.getGrant(id);
      if (g?.grant.type === "delegation" && generation === delegationsGeneration) {
        if (delegations.size > 10_000) delegations.clear();
        delegations.set(id, deepFreeze(g));
      }
      return g;
    },
    findReusable: (r, k, n) => store.findReusable(r, k, n),
    addClient: (c) => store.addClient(c),
    getClient: (id) => store.getClient(id),
    listClients: () => store.listClients(),
    removeClient: (id) => store.removeClient(id),
    insertAuthCode: (c) => store.insertAuthCode(c),
    spendAuthCode: (h, n) => store.spendAuthCode(h, n),
    getAuthCode: (h) => store.getAuthCode(h),
    insertRefreshToken: (t) => store.insertRefreshToken(t),
    spendRefreshToken: (h, n) => store.spendRefreshToken(h, n),
    getRefreshToken: (h) => store.getRefreshToken(h),
    revokeRefreshFamily: (f, n) => store.revokeRefreshFamily(f, n),
    insertDeviceCode: (d) => store.insertDeviceCode(d),
    getDeviceCode: (h) => store.getDeviceCode(h),
    getDeviceCodeByUserCode: (c, n) => store.getDeviceCodeByUserCode(c, n),
    decideDeviceCode: (c, to, sub, n) => store.decideDeviceCode(c, to, sub, n),
    recordDevicePoll: (h, n, i) => store.recordDevicePoll(h, n, i),
    spendDeviceCode: (h, n) => store.spendDeviceCode(h, n),
    queryGrants: (q) => store.queryGrants(q),
    async transition(id, t) {
      delegations.delete(id);
      let updated: StoredGrant | undefined;
      try {
        updated = await store.transition(id, t);
        return updated;
      } finally {
        // A command grant's step leaves the delegations' generation alone (it changes nothing cached).
        if (updated?.grant.type !== "command") dropDelegation(id);
      }
    },
    async expireDue(n) {
      const ids = await store.expireDue(n);
      for (const id of ids) dropDelegation(id);
      return ids;
    },
    // Browser records are read from the store every time (a logout or disable elsewhere bites at once).
    addPasskey: (p) => store.addPasskey(p),
    getPasskey: (id) => store.getPasskey(id),
    listPasskeys: (e) => store.listPasskeys(e),
    recordPasskeyUse: (id, u) => store.recordPasskeyUse(id, u),
    removePasskey: (e, id) => store.removePasskey(e, id),
    addInvite: (i) => store.addInvite(i),
    getInvite: (id, n) => store.getInvite(id, n),
    redeemInvite: (id, n) => store.redeemInvite(id, n),
    addWebSession: (w) => store.addWebSession(w),
    getWebSession: (id, n) => store.getWebSession(id, n),
    endWebSession: (id) => store.endWebSession(id),
    endWebSessionsOf: (e) => store.endWebSessionsOf(e),
    purgeExpiredWeb: (n) => store.purgeExpiredWeb(n),
    // Notifications: read by the delivery worker and the subscription routes, never cached.
    addSubscription: (x) => store.addSubscription(x),
    getSubscription: (id) => store.getSubscription(id),
    subscriptionsOf: (o) => store.subscriptionsOf(o),
    removeSubscription: (id, o) => store.removeSubscription(id, o),
    enqueueNotifications: (r) => store.enqueueNotifications(r),
    dueNotifications: (n, l, skip) => store.dueNotifications(n, l, skip),
    nextNotificationDue: () => store.nextNotificationDue(),
    recordAttempt: (id, o) => store.recordAttempt(id, o),
    listNotifications: (q) => store.listNotifications(q),
    retryNotification: (id, n) => store.retryNotification(id, n),
    purgeNotifications: (b) => store.purgeNotifications(b),
    lifecycle,
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
