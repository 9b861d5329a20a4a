import { randomUUID } from "node:crypto";
import { ProblemError } from "../../protocol/problem.ts";
import type { Idp, Principal } from "../context.ts";
import { jsonBody, onlyFields, type Router } from "../http.ts";
import { addSubscription, bad, removeSubscription, UUID } from "../notify/subscriptions.ts";
import type { NotificationRecord, SubscriptionRecord } from "../store/types.ts";
import { PATHS } from "./discovery.ts";

/**
 * Each user's notification subscriptions (docs/notifications.md): list, add, remove, send a test,
 * and see deliveries that failed for good. Only a user's own token may change them (a delegated
 * token may not: it could redirect an approver's notifications). Secrets are never answered, except
 * a new webhook's secret, once, in the answer that created it.
 */

export function subscriptionView(s: SubscriptionRecord) {
  return { id: s.id, channel: s.channel, target: s.target, events: s.events, created_at: s.createdAt };
}

export function deliveryView(n: NotificationRecord) {
  return {
    id: n.id,
    key: n.key,
    subscription: n.subscriptionId,
    grant_id: n.grantId ?? null,
    event: n.event,
    status: n.status,
    attempts: n.attempts,
    last_error: n.lastError ?? null,
    created_at: n.createdAt,
    delivered_at: n.deliveredAt ?? null,
  };
}

function ownToken(p: Principal): void {
  if (p.actingParty)
    throw new ProblemError("forbidden", "a delegated token cannot change notification subscriptions");
}

export function registerNotifyRoutes(router: Router<Principal>, idp: Idp): void {
  const N = PATHS.notify;
  const notify = idp.notify;

  router.add("GET", `${N}/vapid`, false, () => {
    if (!notify?.vapidPublicKey)
      throw new ProblemError("not_found", "Web Push is not configured on this IdP");
    return { status: 200, body: { public_key: notify.vapidPublicKey } };
  });

  router.add("GET", `${N}/subscriptions`, true, async (_call, p) => ({
    status: 200,
    body: {
      channels: [...(notify?.enabled ?? [])],
      data: (await idp.store.subscriptionsOf([p.sub])).map(subscriptionView),
    },
  }));

  router.add("POST", `${N}/subscriptions`, true, async (call, p) => {
    ownToken(p);
    const { sub, secret } = await addSubscription(idp, p.sub, await jsonBody(call), call.rid);
    return {
      status: 201,
      body: { ...subscriptionView(sub), ...(secret ? { secret } : {}) },
      headers: { location: `${idp.base}${N}/subscriptions/${sub.id}` },
    };
  });

  router.add("DELETE", `${N}/subscriptions/:id`, true, async (call, p) => {
    ownToken(p);
    await removeSubscription(idp, p.sub, call.params.id!, call.rid);
    return { status: 204 };
  });

  router.add("POST", `${N}/subscriptions/:id/test`, true, async (call, p) => {
    const id = call.params.id!;
    onlyFields(await jsonBody(call), []);
    const sub = UUID.test(id) ? await idp.store.getSubscription(id) : undefined;
    if (!sub || sub.owner !== p.sub) throw new ProblemError("not_found", "no such subscription");
    if (!notify) throw new ProblemError("unavailable", "notifications are off");
    const key = `test.${randomUUID()}`;
    await idp.store.enqueueNotifications([notify.testRow(sub.id, key, idp.now())]);
    notify.kick();
    return { status: 202, body: { key, subscription: sub.id } };
  });

  // The user's side of the dead-letter queue: what failed for good (and why), newest first.
  router.add("GET", `${N}/deliveries`, true, async (call, p) => {
    const status = call.query.get("status");
    for (const k of call.query.keys()) if (k !== "status") throw bad(`unknown query parameter "${k}"`);
    if (status !== null && status !== "pending" && status !== "delivered" && status !== "dead")
      throw bad("status must be pending, delivered or dead");
    const rows = await idp.store.listNotifications({
      owner: p.sub,
      limit: 100,
      ...(status ? { status } : {}),
    });
    return { status: 200, body: { data: rows.map(deliveryView) } };
  });
}
