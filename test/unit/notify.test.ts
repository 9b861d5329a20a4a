import { createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import { eventLine, inboxChanges, inboxOnly } from "../../cli/grants/watch.ts";
import { backoffMs, httpResult, outcomeOf } from "../../idp/notify/backoff.ts";
import { DEFAULT_NOTIFY, isLocalAddress, parseNotifyConfig } from "../../idp/notify/config.ts";
import { grantContent, outboxRows, recipientsOf, textOf, titleOf } from "../../idp/notify/content.ts";
import type { SubscriptionRecord, UserRecord } from "../../idp/store/types.ts";
import { isLoopbackHost } from "../../protocol/ddisa.ts";
import type { Grant } from "../../protocol/types.ts";
import { newWebhookSecret, signWebhook, verifyWebhook, webhookHeaders } from "../../protocol/webhook.ts";

const policy = { maxAttempts: 4, retryBaseMs: 1000, retryMaxMs: 5000 };

describe("backoff", () => {
  it("doubles per attempt up to the cap, with half of each step random", () => {
    expect([1, 2, 3, 4, 10].map((a) => backoffMs(a, policy, () => 0))).toEqual([500, 1000, 2000, 2500, 2500]);
    expect([1, 2, 3, 4, 10].map((a) => backoffMs(a, policy, () => 1))).toEqual([
      1000, 2000, 4000, 5000, 5000,
    ]);
    expect(backoffMs(1000, policy, () => 1)).toBe(5000); // no overflow
  });

  it("retries a passing failure, gives up at max_attempts, never retries a permanent one", () => {
    const fail = { ok: false, error: "HTTP 503", retry: true } as const;
    expect(outcomeOf({ ok: true }, 0, policy, 10_500)).toEqual({ delivered: true, at: 10 });
    expect(outcomeOf(fail, 0, policy, 10_000, () => 0)).toEqual({
      delivered: false,
      error: "HTTP 503",
      retryAtMs: 10_500,
    });
    expect(outcomeOf(fail, 2, policy, 10_000, () => 0)).toEqual({
      delivered: false,
      error: "HTTP 503",
      retryAtMs: 12_000,
    });
    expect(outcomeOf(fail, 3, policy, 10_000)).toEqual({
      delivered: false,
      error: "HTTP 503 (gave up after 4 attempts)",
      dead: true,
    });
    expect(outcomeOf({ ok: false, error: "HTTP 400", retry: false }, 0, policy, 0)).toEqual({
      delivered: false,
      error: "HTTP 400",
      dead: true,
    });
  });

  it("maps HTTP statuses", () => {
    expect(httpResult(204)).toEqual({ ok: true });
    expect(httpResult(410)).toEqual({ ok: false, error: "HTTP 410", retry: false, gone: true });
    expect(httpResult(404)).toEqual({ ok: false, error: "HTTP 404", retry: false });
    expect(httpResult(404, [404, 410])).toMatchObject({ gone: true });
    for (const s of [408, 425, 429, 500, 503]) expect(httpResult(s)).toMatchObject({ retry: true });
    for (const s of [301, 400, 401, 403, 413]) expect(httpResult(s)).toMatchObject({ retry: false });
  });
});

describe("the [notify] config", () => {
  const parse = (doc: unknown) => parseNotifyConfig(doc, isLoopbackHost);

  it("defaults without a notify table; reads every key", () => {
    expect(parse({})).toEqual(DEFAULT_NOTIFY);
    expect(
      parse({
        notify: {
          link_base: "https://id.example.com/",
          allow_local_targets: true,
          concurrency: 2,
          timeout: "3s",
          max_attempts: 5,
          retry_base: "1s",
          retry_max: "1m",
          ntfy: { server: "https://ntfy.example.com" },
          smtp: { host: "smtp.example.com", port: 25, from: "apes@example.com", auth_file: "/etc/apes/a" },
          webpush: { subject: "mailto:ops@example.com" },
        },
      }),
    ).toEqual({
      linkBase: "https://id.example.com",
      concurrency: 2,
      timeoutMs: 3000,
      maxAttempts: 5,
      retryBaseMs: 1000,
      retryMaxMs: 60_000,
      ntfyServer: "https://ntfy.example.com",
      smtp: { host: "smtp.example.com", port: 25, from: "apes@example.com", authFile: "/etc/apes/a" },
      webpushSubject: "mailto:ops@example.com",
      allowLocalTargets: true,
    });
  });

  it.each([
    [{ notify: { retries: 3 } }, 'unknown key "notify.retries"'],
    [{ notify: { timeout: "forever" } }, '"notify.timeout" must be a duration'],
    [{ notify: { timeout: "2m" } }, '"notify.timeout" must be a duration'],
    [{ notify: { concurrency: 0 } }, '"notify.concurrency" must be a whole number'],
    [{ notify: { ntfy: { server: "http://ntfy.example.com" } } }, "https://"],
    [{ notify: { ntfy: {} } }, '"notify.ntfy.server" is required'],
    [{ notify: { link_base: "https://id.example.com/?x=1" } }, "query"],
    [{ notify: { smtp: { host: "smtp.example.com" } } }, "needs host and from"],
    [{ notify: { smtp: { host: "h", from: "not an address" } } }, "mail address"],
    [{ notify: { smtp: { host: "h\r\nRCPT TO:<x>", from: "a@b" } } }, "one-line"],
    [{ notify: { webpush: { subject: "admin" } } }, "mailto: or https:"],
    [{ notify: { retry_base: "1m", retry_max: "1s" } }, "retry_max"],
  ])("refuses %j", (doc, message) => {
    expect(() => parse(doc)).toThrow(message);
  });

  it("allows plain http only to loopback", () => {
    expect(parse({ notify: { ntfy: { server: "http://127.0.0.1:8080" } } }).ntfyServer).toBe(
      "http://127.0.0.1:8080",
    );
  });
});

describe("local addresses", () => {
  it.each([
    "localhost",
    "a.localhost",
    "127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "100.64.0.1",
    "[::1]",
    "::",
    "fd00::1",
    "fe80::1",
    "::ffff:127.0.0.1",
  ])("%s is local", (h) => expect(isLocalAddress(h)).toBe(true));
  it.each(["hooks.example.com", "8.8.8.8", "172.32.0.1", "192.169.0.1", "2001:db8::1", "1.127.0.0"])(
    "%s is not",
    (h) => expect(isLocalAddress(h)).toBe(false),
  );
});

const grant = (command: string[], extra: Partial<Grant["request"]> = {}): Grant => ({
  id: "11111111-2222-4333-8444-555555555555",
  type: "command",
  status: "pending",
  created_at: 1,
  request: {
    requester: "bot@x",
    target_host: "web1",
    audience: "escapes",
    grant_type: "once",
    command,
    ...extra,
  },
});

describe("what a notification says", () => {
  it("escapes what the requester wrote and cuts it short", () => {
    const c = grantContent(
      "pending",
      grant(["sh", "-c", "rm -rf /\x1b[2K\rls"], { reason: `x\u202e${"y".repeat(500)}` }),
      "https://id",
      5,
    );
    expect(c.command).toBe(String.raw`sh -c $'rm -rf /\x1b[2K\rls'`);
    expect(c.reason!.startsWith(String.raw`x\u202eyyy`)).toBe(true);
    expect(c.reason!.length).toBeLessThan(260);
    expect(c.link).toBe("https://id/grants/11111111-2222-4333-8444-555555555555");
    const long = grantContent("pending", grant(["echo", "a".repeat(1000)]), "https://id", 5);
    expect(long.command!.length).toBe(201);
    expect(titleOf(c)).toBe("apes: bot@x asks for approval on web1");
    expect(textOf(c)).toContain("review it: https://id/grants/");
    expect(JSON.stringify(c)).not.toMatch(/[\x00-\x1f\u202e]/);
  });

  it("goes to the owner and approvers, not the requester; decisions to the requester", () => {
    const bot: UserRecord = {
      email: "bot@x",
      kind: "agent",
      owner: "alice@x",
      approvers: ["bob@x", "bot@x"],
      admin: false,
      disabled: false,
      createdAt: 1,
    };
    expect(recipientsOf("pending", bot)).toEqual(["alice@x", "bob@x"]);
    expect(recipientsOf("decided", bot)).toEqual(["bot@x"]);
    expect(recipientsOf("pending", undefined)).toEqual([]);
  });

  it("one row per subscription that wants the event, keyed for dedupe", () => {
    const sub = (id: string, events: SubscriptionRecord["events"]): SubscriptionRecord => ({
      id,
      owner: "a",
      channel: "webhook",
      target: "t",
      events,
      createdAt: 1,
    });
    const c = grantContent("pending", grant(["ls"]), "https://id", 5);
    const rows = outboxRows(
      "pending",
      "g1",
      [sub("s1", ["pending"]), sub("s2", ["decided"]), sub("s3", ["pending", "decided"])],
      c,
      5,
      "g1",
    );
    expect(rows.map((r) => r.key)).toEqual(["g1.pending.s1", "g1.pending.s3"]);
    expect(rows[0]).toMatchObject({ subscriptionId: "s1", grantId: "g1", event: "pending", createdAt: 5 });
  });
});

describe("webhook signatures", () => {
  const secret = newWebhookSecret();
  const body = '{"type":"grant.pending"}';
  const headers = webhookHeaders(secret, "msg_1", 1000, body);

  it("verify accepts what was signed, headers in any case", () => {
    expect(verifyWebhook(secret, headers, body, 1000)).toEqual({ ok: true, id: "msg_1", timestamp: 1000 });
    const upper = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toUpperCase(), v]));
    expect(verifyWebhook(secret, upper, Buffer.from(body), 1200).ok).toBe(true);
    // Several signatures (key rotation): one matching is enough.
    expect(
      verifyWebhook(
        secret,
        { ...headers, "webhook-signature": `v1,AAAA ${headers["webhook-signature"]}` },
        body,
        1000,
      ).ok,
    ).toBe(true);
  });

  it.each([
    ["another secret", newWebhookSecret(), headers, body, 1000, "no valid signature"],
    ["a changed body", secret, headers, `${body} `, 1000, "no valid signature"],
    ["a changed id", secret, { ...headers, "webhook-id": "msg_2" }, body, 1000, "no valid signature"],
    [
      "a moved timestamp",
      secret,
      { ...headers, "webhook-timestamp": "1001" },
      body,
      1001,
      "no valid signature",
    ],
    ["too late (replay)", secret, headers, body, 1301, "timestamp outside the replay window"],
    ["too early", secret, headers, body, 699, "timestamp outside the replay window"],
    [
      "no signature",
      secret,
      { ...headers, "webhook-signature": undefined },
      body,
      1000,
      "missing webhook-id, webhook-timestamp or webhook-signature",
    ],
    [
      "a malformed timestamp",
      secret,
      { ...headers, "webhook-timestamp": "1e3" },
      body,
      1000,
      "malformed timestamp",
    ],
    [
      "v2 only",
      secret,
      { ...headers, "webhook-signature": headers["webhook-signature"]!.replace("v1,", "v2,") },
      body,
      1000,
      "no valid signature",
    ],
    ["a secret without prefix", "plain", headers, body, 1000, "not a webhook secret"],
  ])("refuses %s", (_what, s, h, b, now, reason) => {
    expect(verifyWebhook(s as string, h as Record<string, string>, b as string, now as number)).toEqual({
      ok: false,
      reason,
    });
  });

  it("signs id.timestamp.body with the decoded key", () => {
    const key = Buffer.from(secret.slice(6), "base64");
    expect(signWebhook(secret, "i", 7, "b")).toBe(
      `v1,${createHmac("sha256", key).update("i.7.b").digest("base64")}`,
    );
  });
});

describe("grants watch", () => {
  it("sees arrivals and departures", () => {
    const a = grant(["ls"]);
    const b = { ...grant(["id"]), id: "22222222-2222-4333-8444-555555555555" };
    expect(inboxChanges(new Map(), [a])).toEqual({ arrived: [a], left: [] });
    expect(inboxChanges(new Map([[a.id, a]]), [b])).toEqual({ arrived: [b], left: [a.id] });
    expect(
      inboxOnly(
        [a, { ...b, request: { ...b.request, requester: "me@x" } }, { ...a, status: "approved" }],
        "me@x",
      ),
    ).toEqual([a]);
  });

  it("prints one escaped line per event", () => {
    const g = grant(["sh", "-c", "x\x1b[2Ky"], { requester: "b\u202eot@x", reason: "r\rs" });
    const t = Date.UTC(2026, 0, 1, 12, 34, 56);
    expect(eventLine({ event: "pending", grant: g }, t)).toBe(
      String.raw`12:34:56 pending  11111111-2222-4333-8444-555555555555 b\u202eot@x on web1: [!] sh -c $'x\x1b[2Ky' (reason: r\rs)`,
    );
    expect(
      eventLine({ event: "decided", grant: { ...g, status: "approved", decided_by: "alice@x" } }, t),
    ).toBe(String.raw`12:34:56 approved 11111111-2222-4333-8444-555555555555 b\u202eot@x on web1 by alice@x`);
  });
});
