import { readFileSync } from "node:fs";
import { fetchBytes, HttpFailure } from "../../protocol/http.ts";
import { webhookHeaders } from "../../protocol/webhook.ts";
import type { NotificationRecord, NotifyChannel, SubscriptionRecord } from "../store/types.ts";
import { type DeliveryResult, httpResult } from "./backoff.ts";
import type { NotifyConfig } from "./config.ts";
import { type NotificationContent, textOf, titleOf } from "./content.ts";

/**
 * The four ways a notification leaves the IdP. Each takes one outbox row and its subscription and
 * answers a DeliveryResult; none throws. Every request is bounded in time (config timeout) and in
 * what is read back (ANSWER_MAX), plain http only to loopback (protocol/http.ts). Errors are
 * reported as a status or a failure kind, never with the target URL (webhook URLs often hold a
 * token of the receiver's).
 */

export const ANSWER_MAX = 64 * 1024;

export interface VapidKeys {
  publicKey: string;
  privateKey: string;
}

export interface Channels {
  enabled: ReadonlySet<NotifyChannel>;
  deliver(row: NotificationRecord, sub: SubscriptionRecord, signal: AbortSignal): Promise<DeliveryResult>;
  close(): void;
}

function failure(e: unknown): DeliveryResult {
  if (e instanceof HttpFailure) return { ok: false, error: e.code ?? e.kind, retry: e.kind !== "scheme" };
  return { ok: false, error: (e as Error)?.name ?? "error", retry: true };
}

async function post(
  url: string,
  body: string | Uint8Array,
  headers: Record<string, string>,
  timeoutMs: number,
  signal: AbortSignal,
  gone?: readonly number[],
): Promise<DeliveryResult> {
  try {
    const answer = await fetchBytes(url, {
      method: "POST",
      headers,
      body,
      timeoutMs,
      signal,
      maxBytes: ANSWER_MAX,
      plainHttp: "loopback",
    });
    return httpResult(answer.status, gone);
  } catch (e) {
    return failure(e);
  }
}

export function webhookBody(row: NotificationRecord): string {
  const content = JSON.parse(row.payload) as NotificationContent;
  return JSON.stringify({ type: content.event, id: row.key, timestamp: content.time, data: content });
}

/** `user:password` from the first line of the auth file (the file is the secret: 0600, never logged). */
function readAuthFile(file: string): { user: string; pass: string } {
  const line = readFileSync(file, "utf8").split("\n")[0]!.replace(/\r$/, "");
  const i = line.indexOf(":");
  if (i <= 0) throw new Error(`${file}: expected one line "user:password"`);
  return { user: line.slice(0, i), pass: line.slice(i + 1) };
}

export async function openChannels(
  config: NotifyConfig,
  vapid: VapidKeys | undefined,
  now: () => number,
): Promise<Channels> {
  const enabled = new Set<NotifyChannel>(["webhook"]);
  if (config.ntfyServer) enabled.add("ntfy");
  if (config.webpushSubject && vapid) enabled.add("webpush");
  let mail: import("nodemailer").Transporter | undefined;
  if (config.smtp) {
    const smtp = config.smtp;
    // Loaded only when mail is configured: the CLI's other commands never pay for it.
    const nodemailer = (await import("nodemailer")).default;
    mail = nodemailer.createTransport({
      host: smtp.host,
      port: smtp.port,
      // 465 is TLS from the first byte; every other port must upgrade with STARTTLS or fail.
      secure: smtp.port === 465,
      requireTLS: smtp.port !== 465,
      ...(smtp.authFile ? { auth: readAuthFile(smtp.authFile) } : {}),
      tls: { minVersion: "TLSv1.2", ...(smtp.caFile ? { ca: readFileSync(smtp.caFile, "utf8") } : {}) },
      connectionTimeout: config.timeoutMs,
      greetingTimeout: config.timeoutMs,
      socketTimeout: config.timeoutMs,
      disableFileAccess: true,
      disableUrlAccess: true,
      logger: false,
    });
    enabled.add("email");
  }
  const webpush = enabled.has("webpush") ? (await import("web-push")).default : undefined;

  return {
    enabled,
    async deliver(row, sub, signal) {
      if (!enabled.has(sub.channel))
        return { ok: false, error: `channel ${sub.channel} is not configured`, retry: false };
      const content = JSON.parse(row.payload) as NotificationContent;
      switch (sub.channel) {
        case "webhook": {
          const body = webhookBody(row);
          if (!sub.secret) return { ok: false, error: "subscription has no secret", retry: false };
          const headers = {
            "content-type": "application/json",
            "user-agent": "apes-idp",
            ...webhookHeaders(sub.secret, row.key, now(), body),
          };
          return post(sub.target, body, headers, config.timeoutMs, signal);
        }
        case "ntfy": {
          const headers: Record<string, string> = {
            "content-type": "text/plain; charset=utf-8",
            // ntfy's headers are Latin-1: the title is cut to ASCII; the body (UTF-8) has everything.
            title: titleOf(content)
              .replace(/[^\x20-\x7e]/g, "?")
              .slice(0, 250),
            tags: content.event === "grant.pending" ? "lock" : "white_check_mark",
            "x-apes-delivery": row.key,
          };
          if (content.link) headers.click = content.link;
          if (content.event === "grant.pending") headers.priority = "high";
          return post(
            `${config.ntfyServer}/${encodeURIComponent(sub.target)}`,
            textOf(content),
            headers,
            config.timeoutMs,
            signal,
          );
        }
        case "email": {
          if (!mail || !config.smtp) return { ok: false, error: "mail is not configured", retry: false };
          try {
            await mail.sendMail({
              from: config.smtp.from,
              to: sub.target,
              subject: titleOf(content),
              text: `${textOf(content)}\n\nDecide on the page (it asks for your passkey); this mail approves nothing.\n`,
              // The idempotency key as Message-ID: a mail system drops a repeat of the same delivery.
              messageId: `<${row.key}@apes.invalid>`,
              headers: { "x-apes-delivery": row.key },
            });
            return { ok: true };
          } catch (e) {
            const code = (e as { responseCode?: number }).responseCode;
            if (typeof code === "number") return { ok: false, error: `SMTP ${code}`, retry: code < 500 };
            return { ok: false, error: (e as { code?: string }).code ?? "SMTP failure", retry: true };
          }
        }
        case "webpush": {
          if (!webpush || !vapid || !config.webpushSubject)
            return { ok: false, error: "push is not configured", retry: false };
          let details: { headers: Record<string, string | number>; body: Buffer | null; endpoint: string };
          try {
            const keys = JSON.parse(sub.secret ?? "{}") as { p256dh: string; auth: string };
            const push = {
              title: titleOf(content),
              body: textOf(content),
              url: content.link,
              grant_id: content.grant_id,
              id: row.key,
            };
            details = webpush.generateRequestDetails({ endpoint: sub.target, keys }, JSON.stringify(push), {
              vapidDetails: { subject: config.webpushSubject, ...vapid },
              TTL: 3600,
              contentEncoding: "aes128gcm",
              urgency: content.event === "grant.pending" ? "high" : "normal",
            }) as typeof details;
          } catch {
            return { ok: false, error: "cannot encrypt for this subscription", retry: false };
          }
          const headers: Record<string, string> = {};
          for (const [k, v] of Object.entries(details.headers)) headers[k.toLowerCase()] = String(v);
          return post(
            sub.target,
            details.body ?? new Uint8Array(),
            headers,
            config.timeoutMs,
            signal,
            [404, 410],
          );
        }
      }
    },
    close() {
      mail?.close();
    },
  };
}
