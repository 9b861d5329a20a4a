import { describe, expect, it } from "vitest";
import { webUnavailable } from "../../idp/web/context.ts";
import { inviteId, inviteUrl, newInvite } from "../../idp/web/invites.ts";
import { counterProblem } from "../../idp/web/passkeys.ts";
import { safeReturnTo } from "../../idp/web/session.ts";

describe("safeReturnTo: only paths of the IdP itself", () => {
  it("keeps relative paths with query and fragment", () => {
    expect(safeReturnTo("/account")).toBe("/account");
    expect(safeReturnTo("/authorize?client_id=x&state=a%20b")).toBe("/authorize?client_id=x&state=a%20b");
    expect(safeReturnTo("/a/../b")).toBe("/b");
  });
  it.each([
    ["//evil.example/x"],
    ["/\\evil.example"],
    ["https://evil.example/"],
    ["http:evil.example"],
    ["javascript:alert(1)"],
    ["evil.example"],
    ["/\tevil"],
    ["/ x"],
    ["/x\u0000"],
    [""],
    [`/${"a".repeat(2048)}`],
  ])("refuses %j (falls back to the default)", (value) => {
    expect(safeReturnTo(value)).toBe("/account");
    expect(safeReturnTo(value, "/login")).toBe("/login");
  });
  it("undefined is the default", () => expect(safeReturnTo(undefined)).toBe("/account"));
});

describe("counterProblem: a cloned authenticator", () => {
  it("accepts an increasing counter and authenticators that keep none", () => {
    expect(counterProblem(0, 0)).toBeUndefined();
    expect(counterProblem(0, 1)).toBeUndefined();
    expect(counterProblem(5, 6)).toBeUndefined();
  });
  it("refuses a counter that does not increase", () => {
    expect(counterProblem(5, 5)).toMatch(/from 5 to 5/);
    expect(counterProblem(5, 4)).toBeDefined();
    expect(counterProblem(5, 0)).toBeDefined();
  });
});

describe("webUnavailable: passkeys need a host name and a secure context", () => {
  it("allows https and http on localhost", () => {
    expect(webUnavailable("https://id.example.com")).toBeUndefined();
    expect(webUnavailable("http://localhost:8080")).toBeUndefined();
  });
  it("refuses IP addresses and plain http elsewhere", () => {
    expect(webUnavailable("http://127.0.0.1:8080")).toMatch(/IP address/);
    expect(webUnavailable("https://[::1]:8443")).toMatch(/IP address/);
    expect(webUnavailable("https://10.0.0.1")).toMatch(/IP address/);
    expect(webUnavailable("http://id.example.com")).toMatch(/plain http/);
  });
});

describe("invites", () => {
  it("stores only a hash of the secret, which goes in the fragment", () => {
    const { secret, record } = newInvite("alice@x", 100, 3600);
    expect(record).toEqual({ id: inviteId(secret), email: "alice@x", createdAt: 100, expiresAt: 3700 });
    expect(record.id).not.toContain(secret);
    expect(inviteUrl("https://id.example.com/", secret)).toBe(`https://id.example.com/invite#${secret}`);
  });
  it("anything but a 43-character base64url secret has no id", () => {
    expect(inviteId("")).toBeUndefined();
    expect(inviteId("a".repeat(42))).toBeUndefined();
    expect(inviteId(`${"a".repeat(42)}=`)).toBeUndefined();
    expect(inviteId("a".repeat(43))).toBeDefined();
  });
});
