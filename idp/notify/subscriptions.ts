import { randomUUID } from "node:crypto";
import { isLoopbackHost } from "../../protocol/ddisa.ts";
import { ProblemError } from "../../protocol/problem.ts";
import { newWebhookSecret } from "../../protocol/webhook.ts";
import { onlyFields } from "../../server/http.ts";
import type { Idp } from "../context.ts";
import {
  MAX_SUBSCRIPTIONS,
  type NotifyChannel,
  type NotifyEvent,
  type SubscriptionRecord,
} from "../store/types.ts";
import { checkServiceUrl, isLocalAddress, mailAddress } from "./config.ts";

/**
 * Adding and removing a user's notification subscription: the one set of rules behind the API
 * (idp/routes/notify.ts, `apes notify`) and the account page (idp/routes/web-login.ts). The caller
 * has established who `owner` is (a user's own token, or the signed-in passkey session).
 */

export const CHANNELS: readonly NotifyChannel[] = ["webhook", "ntfy", "email", "webpush"];
export const EVENTS: readonly NotifyEvent[] = ["pending", "decided"];
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TOPIC = /^[A-Za-z0-9_-]{1,64}$/;

export function bad(detail: string): ProblemError {
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

/**
 * Validates a new subscription ({channel, target?, events?, keys?}, as the API's JSON body) and
 * stores it. `secret` is a new webhook's signing secret, for the creator's eyes once; a push
 * subscription's keys are never answered.
 */
export async function addSubscription(
  idp: Idp,
  owner: string,
  body: Record<string, unknown>,
  rid: string,
): Promise<{ sub: SubscriptionRecord; secret?: string }> {
  const notify = idp.notify;
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
      const to = body.target ?? owner;
      try {
        mailAddress(to, "target");
      } catch (e) {
        throw bad((e as Error).message);
      }
      if (to !== owner) throw new ProblemError("forbidden", "mail goes only to your own address");
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
  const existing = await idp.store.subscriptionsOf([owner]);
  if (existing.length >= MAX_SUBSCRIPTIONS)
    throw new ProblemError(
      "conflict",
      `at most ${MAX_SUBSCRIPTIONS} subscriptions per user; remove one first`,
    );
  if (existing.some((s) => s.channel === channel && s.target === target))
    throw new ProblemError("conflict", "you already have this subscription");
  const sub: SubscriptionRecord = {
    id: randomUUID(),
    owner: owner,
    channel,
    target,
    events,
    createdAt: idp.now(),
    ...(secret ? { secret } : {}),
  };
  await idp.store.addSubscription(sub);
  idp.log.log("info", "notification subscription added", {
    rid,
    subscription: sub.id,
    owner: owner,
    channel,
  });
  return { sub, ...(channel === "webhook" ? { secret } : {}) };
}

/** Removes one of `owner`'s subscriptions; anyone else's, or an unknown id, is not found. */
export async function removeSubscription(idp: Idp, owner: string, id: string, rid: string): Promise<void> {
  if (!UUID.test(id) || !(await idp.store.removeSubscription(id, owner)))
    throw new ProblemError("not_found", "no such subscription");
  idp.log.log("info", "notification subscription removed", { rid, subscription: id, owner });
}
