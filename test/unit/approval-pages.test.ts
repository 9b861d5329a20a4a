import { describe, expect, it } from "vitest";
import type { UserRecord } from "../../idp/store/types.ts";
import { grantPage, inboxPage } from "../../idp/web/approval-pages.ts";
import { argumentParts, durationText, grantSummary, requesterRole } from "../../idp/web/grant-view.ts";
import { visible } from "../../protocol/display.ts";
import { durationSeconds } from "../../protocol/duration.ts";
import { sampleGrant } from "../helpers/grants.ts";

const agent: UserRecord = {
  email: "bot+agent@example.com",
  kind: "agent",
  owner: "alice@example.com",
  approvers: ["carol@example.com"],
  admin: false,
  disabled: false,
  createdAt: 1,
};

describe("what the approval pages show of a grant", () => {
  it("marks every escape of an argument and nothing else; the parts join to visible(arg)", () => {
    for (const arg of ["plain", "\x1b[31mred", "a\u202eb", "x\\y", "\r\n", "中文", "😀\u200b"]) {
      expect(
        argumentParts(arg)
          .map((p) => p.text)
          .join(""),
      ).toBe(visible(arg));
    }
    expect(argumentParts("\x1b[31mred\x1b[0m")).toEqual([
      { text: "\\x1b", escaped: true },
      { text: "[31mred", escaped: false },
      { text: "\\x1b", escaped: true },
      { text: "[0m", escaped: false },
    ]);
    expect(argumentParts("plain")).toEqual([{ text: "plain", escaped: false }]);
  });

  it("writes durations in the grammar the IdP parses back", () => {
    for (const s of [1, 59, 60, 90, 3600, 5400, 86_400, 90_061])
      expect(durationSeconds(durationText(s))).toBe(s);
    expect(durationText(5400)).toBe("1h30m");
    expect(durationText(86_400)).toBe("1d");
  });

  it("makes every requester-chosen string visible, the owner's name too", () => {
    const g = sampleGrant(
      { id: "6f1c0e0a-0000-4000-8000-000000000001" },
      {
        requester: "bot\u202e@example.com",
        command: ["rm", "-rf", "\x1b]0;title\x07"],
        target_host: "web\r1",
        run_as: "de\u200bploy",
        reason: "fix\x1b[2J",
      },
    );
    const s = grantSummary(g, { ...agent, owner: "al\u202eice@example.com" });
    const all = JSON.stringify(s);
    for (const raw of ["\u202e", "\x1b", "\r", "\u200b", "\x07"]) expect(all.includes(raw)).toBe(false);
    expect(s.warning).toContain("shown escaped");
    expect(s.requesterRole).toBe("an agent of al\\u202eice@example.com");
    expect(requesterRole(undefined)).toBe("");
  });

  it("renders pages whose markup holds no raw control character and escapes HTML", () => {
    const g = sampleGrant(
      { id: "6f1c0e0a-0000-4000-8000-000000000002" },
      { command: ["echo", "<script>alert(1)</script>", "\u202e"], reason: '"><img src=x>' },
    );
    const page = grantPage({ grant: g, requester: agent, csrf: "t", etag: '"1"' }).text;
    expect(page).not.toContain("<script>alert");
    expect(page).not.toContain("<img src=x>");
    expect(page).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
    expect(page).not.toContain("\u202e");
    const inbox = inboxPage({ email: "a", items: [grantSummary(g, agent)], etag: '"x"', csrf: "t" }).text;
    expect(inbox).not.toContain("<script>alert");
    expect(inbox).not.toContain("\u202e");
  });

  it("offers Web Push on the inbox only where the IdP has a VAPID key", () => {
    const bare = inboxPage({ email: "a", items: [], etag: '"x"', csrf: "t" }).text;
    expect(bare).not.toContain('id="push"');
    expect(bare).not.toContain("push.js");
    const key = "BExampleVapidKey_-";
    const push = inboxPage({ email: "a", items: [], etag: '"x"', csrf: "t", vapidKey: key }).text;
    expect(push).toContain(`data-key="${key}"`);
    expect(push).toContain('data-worker="/sw.js"');
    expect(push).toContain('<script src="/assets/push.js" defer>');
    // Hidden until the script finds that this browser can do push.
    expect(push).toMatch(/<div id="push" class="push" hidden /);
  });

  it("offers no decision on a grant the person may not decide, and shows the reason", () => {
    const page = grantPage({
      grant: sampleGrant({ id: "6f1c0e0a-0000-4000-8000-000000000003" }),
      requester: agent,
      cannotDecide: "only the agent's owner or one of its approvers may decide its grants",
      csrf: "t",
      etag: '"1"',
    }).text;
    expect(page).not.toContain('id="decide"');
    expect(page).toContain("You cannot decide this grant: only the agent&#39;s owner");
  });
});
