import { randomUUID } from "node:crypto";
import { isLoopbackHost } from "../../protocol/ddisa.ts";
import { ProblemError } from "../../protocol/problem.ts";
import { newWebhookSecret } from "../../protocol/webhook.ts";
import type { Idp, Principal } from "../context.ts";
import { jsonBody, onlyFields, type Router } from "../http.ts";
import { checkServiceUrl, isLocalAddress, mailAddress } from "../notify/config.ts";
import {
  MAX_SUBSCRIPTIONS,
  type NotificationRecord,
  type NotifyChannel,
  type NotifyEvent,
  type SubscriptionRecord,
} from "../store/types.ts";
import { PATHS } from "./discovery.ts";

/**
 * Each user's notification subscriptions (docs/notifications.md): list, add, remove, send a test,
 * and see deliveries that failed for good. Only a user's own token may change them (a delegated
 * token may not: it could redirect an approver's notifications). Secrets are never answered, except
 * a new webhook's secret, once, in the answer that created it.
 */

const CHANNELS: readonly NotifyChannel[] = ["webhook", "ntfy", "email", "webpush"];
const EVENTS: readonly NotifyEvent[] = ["pending", "decided"];
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TOPIC = /^[A-Za-z0-9_-]{1,64}$/;

function bad(detail: string): ProblemError {
  return new ProblemError("invalid_request", detail);
}

/** A subscription's target URL: https (plain http only to loopback), and local addresses only where the config allows them. */
function url(v: unknown, field: string, allowLocal: boolean): string {
  try {
    checkServiceUrl(v, field, isLoopbackHost);
  } catch (e) {
    throw bad((e as Error).message);
  }
  if (!allowLocal && isLocalAddress(new URL(v as string).hostname))
    throw bad(
      `${field} is on this machine or a local network address (the IdP's allow_local_targets is off)`,
    );
  return v as string;
}

/** A base64url value of exactly `bytes` bytes (a push subscription key). */
function b64key(v: unknown, field: string, bytes: number): string {
  if (
    typeof v !== "string" ||
    !/^[A-Za-z0-9_-]+={0,2}$/.test(v) ||
    Buffer.from(v, "base64url").length !== bytes
  )
    throw bad(`${field} must be ${bytes} bytes, base64url`);
  return v;
}

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
    const body = await jsonBody(call);
    onlyFields(body, ["channel", "target", "events", "keys"]);
    const channel = body.channel as NotifyChannel;
    if (!CHANNELS.includes(channel)) throw bad(`channel must be one of ${CHANNELS.join(", ")}`);
    if (!notify?.enabled.has(channel))
      throw new ProblemError("invalid_request", `this IdP does not offer the ${channel} channel`);
    let events: NotifyEvent[] = ["pending", "decided"];
    if (body.events !== undefined) {
      if (
        !Array.isArray(body.events) ||
        body.events.length === 0 ||
        !body.events.every((e) => EVENTS.includes(e))
      )
        throw bad(`events must be a non-empty array of ${EVENTS.join(", ")}`);
      events = [...new Set(body.events as NotifyEvent[])];
    }
    if (body.keys !== undefined && channel !== "webpush") throw bad("keys are only for webpush");
    let target: string;
    let secret: string | undefined;
    switch (channel) {
      case "webhook":
        target = url(body.target, "target", notify.allowLocalTargets);
        secret = newWebhookSecret();
        break;
      case "ntfy":
        if (typeof body.target !== "string" || !TOPIC.test(body.target))
          throw bad("target must be an ntfy topic: 1-64 of A-Z a-z 0-9 _ -");
        target = body.target;
        break;
      case "email": {
        // Only to the user's own address: the IdP is no mail relay for anyone else.
        const to = body.target ?? p.sub;
        try {
          mailAddress(to, "target");
        } catch (e) {
          throw bad((e as Error).message);
        }
        if (to !== p.sub) throw new ProblemError("forbidden", "mail goes only to your own address");
        target = to as string;
        break;
      }
      case "webpush": {
        target = url(body.target, "target", notify.allowLocalTargets);
        const k = body.keys as Record<string, unknown> | undefined;
        if (!k || typeof k !== "object" || Array.isArray(k))
          throw bad("keys {p256dh, auth} are required for webpush");
        onlyFields(k, ["p256dh", "auth"]);
        secret = JSON.stringify({
          p256dh: b64key(k.p256dh, "keys.p256dh", 65),
          auth: b64key(k.auth, "keys.auth", 16),
        });
        break;
      }
    }
    const existing = await idp.store.subscriptionsOf([p.sub]);
    if (existing.length >= MAX_SUBSCRIPTIONS)
      throw new ProblemError(
        "conflict",
        `at most ${MAX_SUBSCRIPTIONS} subscriptions per user; remove one first`,
      );
    if (existing.some((s) => s.channel === channel && s.target === target))
      throw new ProblemError("conflict", "you already have this subscription");
    const sub: SubscriptionRecord = {
      id: randomUUID(),
      owner: p.sub,
      channel,
      target,
      events,
      createdAt: idp.now(),
      ...(secret ? { secret } : {}),
    };
    await idp.store.addSubscription(sub);
    idp.log.log("info", "notification subscription added", {
      rid: call.rid,
      subscription: sub.id,
      owner: p.sub,
      channel,
    });
    return {
      status: 201,
      body: { ...subscriptionView(sub), ...(channel === "webhook" ? { secret } : {}) },
      headers: { location: `${idp.base}${N}/subscriptions/${sub.id}` },
    };
  });

  router.add("DELETE", `${N}/subscriptions/:id`, true, async (call, p) => {
    ownToken(p);
    const id = call.params.id!;
    if (!UUID.test(id) || !(await idp.store.removeSubscription(id, p.sub)))
      throw new ProblemError("not_found", "no such subscription");
    idp.log.log("info", "notification subscription removed", {
      rid: call.rid,
      subscription: id,
      owner: p.sub,
    });
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
