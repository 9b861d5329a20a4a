import type { ChangeKind, Store, StoredGrant, SubscriptionRecord, UserRecord } from "./types.ts";

/**
 * A Store whose lookups on every request are served from memory: users, the delegation behind a
 * delegated token, grants (each step of a lifecycle reads the grant the previous step wrote: the
 * write's RETURNING row is kept) and the notification subscriptions read at every create and
 * decision. They change only through this process (every write goes through this wrapper and keeps
 * or drops what it touches) or through another process (the offline admin commands, key rotation;
 * detected by the store's change marker, checked on every cached lookup: a user disabled there is
 * refused on its next request, a grant decided there is read again; users and subscriptions are
 * dropped only when the store's marker for their kind moved, so other workers' grant writes leave
 * them alone). A store without a change
 * marker is returned as it is: nothing could tell this process that another one changed the data.
 *
 * Lookups and writes interleave (each awaits the store): a value read while a write to it was under
 * way may be the old one, so it is kept only when no such write completed meanwhile (a generation
 * counter per kind of value, bumped when a write completes; a grant also keeps its higher version).
 */
export function withReadCache(store: Store): Store {
  const lifecycle = store.lifecycle;
  if (!lifecycle?.changeMarker) return store;
  const changeMarker = (kind?: ChangeKind) => lifecycle.changeMarker!(kind);
  const users = new Map<string, UserRecord | undefined>();
  const subordinates = new Map<string, string[]>();
  const grants = new Map<string, StoredGrant>();
  const subscriptions = new Map<string, readonly SubscriptionRecord[]>();
  let usersGeneration = 0;
  let grantsGeneration = 0;
  let subscriptionsGeneration = 0;
  let marker = changeMarker();
  let usersMarker = changeMarker("users");
  let subscriptionsMarker = changeMarker("subscriptions");
  const dropUsers = () => {
    usersGeneration++;
    users.clear();
    subordinates.clear();
  };
  const dropGrant = (id: string) => {
    grantsGeneration++;
    grants.delete(id);
  };
  const dropSubscriptions = () => {
    subscriptionsGeneration++;
    subscriptions.clear();
  };
  const fresh = () => {
    const m = changeMarker();
    if (m === marker) return;
    marker = m;
    // Another process changed something: grants (written by every worker) are read again, users
    // and subscriptions only when their own counter moved.
    grantsGeneration++;
    grants.clear();
    const u = changeMarker("users");
    if (u !== usersMarker) {
      usersMarker = u;
      dropUsers();
    }
    const s = changeMarker("subscriptions");
    if (s !== subscriptionsMarker) {
      subscriptionsMarker = s;
      dropSubscriptions();
    }
  };
  /** Keeps `g` as read or written at `generation`, unless a newer version is kept or a drop came between. */
  const keepGrant = (g: StoredGrant, generation: number) => {
    if (generation !== grantsGeneration) return;
    const id = g.grant.id;
    const kept = grants.get(id);
    if (kept && kept.version >= g.version) return;
    if (kept) grants.delete(id);
    // Bounded: the oldest kept goes first (a finished lifecycle's grant is rarely read again).
    else if (grants.size >= 10_000) grants.delete(grants.keys().next().value!);
    grants.set(id, deepFreeze(g));
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
    async insertGrant(g) {
      const generation = grantsGeneration;
      const stored = await store.insertGrant(g);
      // Kept frozen: a store that answers with the caller's own objects has them copied first.
      keepGrant(stored.grant === g.grant ? structuredClone(stored) : stored, generation);
      return stored;
    },
    async getGrant(id) {
      fresh();
      const kept = grants.get(id);
      if (kept) return kept;
      const generation = grantsGeneration;
      const g = await store.getGrant(id);
      if (g) keepGrant(g, generation);
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
      fresh();
      const generation = grantsGeneration;
      // The kept grant is the row as it is (or the update finds another version and refuses): the
      // store builds its answer from it instead of reading the row back.
      const seen = t.seen ?? grants.get(id);
      let updated: StoredGrant | undefined;
      try {
        updated = await store.transition(id, seen ? { ...t, seen } : t);
        return updated;
      } finally {
        // The row the update returned is the grant as it now is; a refused (or failed) one tells
        // nothing, so nothing is kept of the grant.
        if (updated) keepGrant(updated, generation);
        else dropGrant(id);
      }
    },
    async expireDue(n) {
      const ids = await store.expireDue(n);
      for (const id of ids) dropGrant(id);
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
    // Subscriptions by owner (read at every create and decision); the outbox is never cached.
    async addSubscription(x) {
      try {
        await store.addSubscription(x);
      } finally {
        dropSubscriptions();
      }
    },
    getSubscription: (id) => store.getSubscription(id),
    async subscriptionsOf(owners) {
      fresh();
      const out: SubscriptionRecord[] = [];
      for (const owner of new Set(owners)) {
        let subs = subscriptions.get(owner);
        if (!subs) {
          const generation = subscriptionsGeneration;
          subs = await store.subscriptionsOf([owner]);
          if (generation === subscriptionsGeneration) {
            if (subscriptions.size >= 10_000) subscriptions.clear();
            subscriptions.set(owner, deepFreeze(subs));
          }
        }
        out.push(...subs);
      }
      return out;
    },
    async removeSubscription(id, o) {
      try {
        return await store.removeSubscription(id, o);
      } finally {
        dropSubscriptions();
      }
    },
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
