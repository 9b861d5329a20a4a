import { describe, expect, it } from "vitest";
import { admit } from "../../sp/admission.ts";

const lists = { admins: new Set(["root@example.com"]), users: new Set(["alice@example.com"]) };

describe("the record's mode and the SP's lists (sp/admission.ts)", () => {
  it.each([
    // mode, identity, verdict
    ["open", "stranger@example.com", "user"],
    [undefined, "stranger@example.com", "user"],
    ["open", "root@example.com", "admin"],
    ["allowlist-user", "alice@example.com", "user"],
    ["allowlist-user", "root@example.com", "admin"],
    ["allowlist-user", "stranger@example.com", "not_allowlisted"],
    ["allowlist-admin", "root@example.com", "admin"],
    ["allowlist-admin", "alice@example.com", "not_allowlisted"],
    ["allowlist-admin", "stranger@example.com", "not_allowlisted"],
    ["deny", "root@example.com", "mode_deny"],
    ["deny", "alice@example.com", "mode_deny"],
  ] as const)("mode %s, %s -> %s", (mode, identity, verdict) => {
    const r = admit(mode, identity, lists);
    expect(r.ok ? r.role : r.reason).toBe(verdict);
  });

  it("a mode this code does not know fails closed", () => {
    expect(admit("sometimes" as never, "root@example.com", lists)).toEqual({
      ok: false,
      reason: "mode_deny",
    });
  });
});
