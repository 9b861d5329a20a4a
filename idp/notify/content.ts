import { visible, visibleArgv } from "../../protocol/display.ts";
import type { Grant } from "../../protocol/types.ts";
import type { NewNotification, NotifyEvent, SubscriptionRecord, UserRecord } from "../store/types.ts";

/**
 * What a notification says, and to whom: pure functions over the grant, so the outbox row holds the
 * finished content. Enough to decide where to look (who asks, for which host, what command, a link
 * to the grant) and never a token, a secret or a one-click approval: deciding needs the approver's
 * own session (and on the page, the passkey step-up). Every string from the request is made safe
 * with protocol/display.ts and cut short, since it ends up in mail headers, push banners and chats.
 */

export const PREVIEW_MAX = 200;

export interface NotificationContent {
  event: "grant.pending" | "grant.decided" | "test";
  grant_id?: string;
  type?: Grant["type"];
  requester?: string;
  target_host?: string;
  /** The command as a shell line (visibleArgv), cut at PREVIEW_MAX. */
  command?: string;
  permissions?: string[];
  reason?: string;
  status?: Grant["status"];
  decided_by?: string;
  link?: string;
  /** Unix seconds. */
  time: number;
}

const cut = (s: string) => visible(s, { max: PREVIEW_MAX });

export function grantContent(
  event: "pending" | "decided",
  grant: Grant,
  linkBase: string,
  now: number,
): NotificationContent {
  const r = grant.request;
  const c: NotificationContent = {
    event: event === "pending" ? "grant.pending" : "grant.decided",
    grant_id: grant.id,
    type: grant.type,
    requester: cut(r.requester),
    target_host: cut(r.target_host),
    status: grant.status,
    link: `${linkBase}/grants/${encodeURIComponent(grant.id)}`,
    time: now,
  };
  if (r.command) {
    const line = visibleArgv(r.command);
    c.command = line.length > PREVIEW_MAX ? `${line.slice(0, PREVIEW_MAX)}…` : line;
  }
  if (r.permissions?.length) c.permissions = r.permissions.slice(0, 10).map(cut);
  if (grant.type === "delegation" && r.delegate)
    c.permissions = [`act for ${cut(r.requester)} as ${cut(r.delegate)}`];
  if (r.reason) c.reason = cut(r.reason);
  if (grant.decided_by) c.decided_by = cut(grant.decided_by);
  return c;
}

export function testContent(now: number): NotificationContent {
  return { event: "test", time: now };
}

/** One line for a push banner, an ntfy title or a mail subject (already safe: made of safe parts). */
export function titleOf(c: NotificationContent): string {
  if (c.event === "test") return "apes: test notification";
  const what = c.type === "delegation" ? "a delegation" : "approval";
  if (c.event === "grant.pending") return `apes: ${c.requester} asks for ${what} on ${c.target_host}`;
  return `apes: your grant on ${c.target_host} was ${c.status}${c.decided_by ? ` by ${c.decided_by}` : ""}`;
}

/** A few lines of text: what is asked, why, and where to decide. */
export function textOf(c: NotificationContent): string {
  if (c.event === "test") return "This is a test notification from your apes IdP. Nothing to decide.";
  const lines = [titleOf(c)];
  if (c.command) lines.push(`command: ${c.command}`);
  if (c.permissions?.length) lines.push(`permissions: ${c.permissions.join(", ")}`);
  if (c.reason) lines.push(`reason: ${c.reason}`);
  if (c.link) lines.push(c.event === "grant.pending" ? `review it: ${c.link}` : `details: ${c.link}`);
  return lines.join("\n");
}

/**
 * Who hears of a pending grant: the requester's owner and approvers (never the requester itself);
 * of a decision: the requester.
 */
export function recipientsOf(event: "pending" | "decided", requester: UserRecord | undefined): string[] {
  if (!requester) return [];
  if (event === "decided") return [requester.email];
  const who = new Set([...(requester.owner ? [requester.owner] : []), ...requester.approvers]);
  who.delete(requester.email);
  return [...who];
}

/** One outbox row per subscription that wants this event; the key makes a second write a no-op. */
export function outboxRows(
  event: NotifyEvent,
  grantId: string | undefined,
  subscriptions: readonly SubscriptionRecord[],
  content: NotificationContent,
  now: number,
  keyPrefix: string,
): NewNotification[] {
  const payload = JSON.stringify(content);
  return subscriptions
    .filter((s) => event === "test" || s.events.includes(event))
    .map((s) => ({
      key: `${keyPrefix}.${event}.${s.id}`,
      subscriptionId: s.id,
      ...(grantId ? { grantId } : {}),
      event,
      payload,
      createdAt: now,
    }));
}
