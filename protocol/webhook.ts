import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * Webhook signatures (docs/notifications.md), in the form of the Standard Webhooks specification so a
 * receiver may use any library for it: three headers,
 *
 *   webhook-id:        the delivery's idempotency key (the same on every retry: drop repeats)
 *   webhook-timestamp: Unix seconds when this attempt was signed
 *   webhook-signature: "v1,<base64 HMAC-SHA256(key, `${id}.${timestamp}.${body}`)>"
 *
 * The key is the subscription's secret, `whsec_<base64 of 32 random bytes>`, shown once when the
 * subscription is added. A receiver checks the signature over the raw body bytes (before parsing)
 * and refuses a timestamp outside its replay window (default 5 minutes either side).
 */

export const WEBHOOK_SECRET_PREFIX = "whsec_";
export const DEFAULT_REPLAY_WINDOW_S = 300;

export function newWebhookSecret(): string {
  return WEBHOOK_SECRET_PREFIX + randomBytes(32).toString("base64");
}

function keyOf(secret: string): Buffer | undefined {
  if (!secret.startsWith(WEBHOOK_SECRET_PREFIX)) return undefined;
  const key = Buffer.from(secret.slice(WEBHOOK_SECRET_PREFIX.length), "base64");
  return key.length >= 16 ? key : undefined;
}

/** The signature header's value for one attempt. */
export function signWebhook(
  secret: string,
  id: string,
  timestamp: number,
  body: string | Uint8Array,
): string {
  const key = keyOf(secret);
  if (!key) throw new Error("not a webhook secret");
  const mac = createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest("base64");
  return `v1,${mac}`;
}

/** The three headers of one signed attempt. */
export function webhookHeaders(
  secret: string,
  id: string,
  timestamp: number,
  body: string | Uint8Array,
): Record<string, string> {
  return {
    "webhook-id": id,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": signWebhook(secret, id, timestamp, body),
  };
}

export type WebhookCheck = { ok: true; id: string; timestamp: number } | { ok: false; reason: string };

/**
 * A receiver's check of one delivery: the headers (any case), the raw body, the receiver's clock.
 * Fails closed on a missing or malformed header, a timestamp outside the window, or no matching
 * signature (several space-separated signatures are allowed, for key rotation).
 */
export function verifyWebhook(
  secret: string,
  headers: Record<string, string | string[] | undefined>,
  body: string | Uint8Array,
  nowSeconds: number,
  windowSeconds = DEFAULT_REPLAY_WINDOW_S,
): WebhookCheck {
  const header = (name: string): string | undefined => {
    for (const [k, v] of Object.entries(headers))
      if (k.toLowerCase() === name) return Array.isArray(v) ? undefined : v;
    return undefined;
  };
  const id = header("webhook-id");
  const ts = header("webhook-timestamp");
  const sig = header("webhook-signature");
  if (!id || !ts || !sig)
    return { ok: false, reason: "missing webhook-id, webhook-timestamp or webhook-signature" };
  if (id.length > 256 || sig.length > 4096) return { ok: false, reason: "header too long" };
  if (!/^\d{1,12}$/.test(ts)) return { ok: false, reason: "malformed timestamp" };
  const timestamp = Number(ts);
  if (Math.abs(nowSeconds - timestamp) > windowSeconds)
    return { ok: false, reason: "timestamp outside the replay window" };
  const key = keyOf(secret);
  if (!key) return { ok: false, reason: "not a webhook secret" };
  const expected = Buffer.from(signWebhook(secret, id, timestamp, body).slice(3), "base64");
  for (const part of sig.split(" ")) {
    if (!part.startsWith("v1,")) continue;
    const given = Buffer.from(part.slice(3), "base64");
    if (given.length === expected.length && timingSafeEqual(given, expected))
      return { ok: true, id, timestamp };
  }
  return { ok: false, reason: "no valid signature" };
}
