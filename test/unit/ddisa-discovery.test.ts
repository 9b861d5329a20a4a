import { createSocket } from "node:dgram";
import { describe, expect, it } from "vitest";
import type { CliError } from "../../cli/errors.ts";
import { ExitCode } from "../../cli/exit-codes.ts";
import { discoverIdp } from "../../client/ddisa.ts";
import { asCli } from "../helpers/cli-error.ts";
import { type FakeContextOptions, fakeContext, runInProcess } from "../helpers/fake-context.ts";

// A loopback UDP port with nobody listening: queries fail at once (ICMP port unreachable), so the
// DoH fallback (served by the injected fetch) is what answers. The system resolver is never used.
async function closedUdpPort(): Promise<string> {
  const s = createSocket("udp4");
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return `127.0.0.1:${port}`;
}

function dohWith(txt: string[] | { status: number }): typeof fetch {
  return async () => {
    if (!Array.isArray(txt)) return Response.json({ Status: txt.status });
    return Response.json({
      Status: 0,
      Answer: txt.map((t) => ({ name: "_ddisa.example.com.", type: 16, TTL: 120, data: JSON.stringify(t) })),
    });
  };
}

async function ctxWith(txt: string[] | { status: number }, extra: FakeContextOptions = {}) {
  const servers = [await closedUdpPort()];
  return fakeContext({
    http: dohWith(txt),
    ...extra,
    config: {
      dns: { servers, dohUrl: "https://doh.test/resolve", allowLoopbackHttp: false, timeoutMs: 2000 },
      ...extra.config,
    },
  });
}

async function cliErrorOf(p: Promise<unknown>): Promise<CliError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  return asCli(e);
}

describe("discoverIdp", () => {
  it("uses the configured idp without asking DNS", async () => {
    const ctx = fakeContext({
      config: { idp: "https://id.example.com/" },
      http: async () => {
        throw new Error("no DNS/DoH expected");
      },
    });
    const d = await discoverIdp(ctx, "alice@example.com");
    expect(d).toMatchObject({ idp: "https://id.example.com", via: "config" });
    expect(d.record).toBeUndefined();
  });

  it("accepts a configured loopback http idp, refuses plain http elsewhere (exit 78)", async () => {
    const local = await discoverIdp(
      fakeContext({ config: { idp: "http://127.0.0.1:3000" } }),
      "a@example.com",
    );
    expect(local.idp).toBe("http://127.0.0.1:3000");
    const e = await cliErrorOf(
      discoverIdp(fakeContext({ config: { idp: "http://id.example.com" } }), "a@example.com"),
    );
    expect(e.exitCode).toBe(ExitCode.CONFIG);
  });

  it("finds the IdP through DNS (here: the DoH fallback) and explains", async () => {
    const ctx = await ctxWith([
      "v=spf1 -all",
      "v=ddisa1 idp=https://b.example; priority=9",
      "v=ddisa1 idp=https://a.example; priority=3; mode=allowlist-user",
    ]);
    const d = await discoverIdp(ctx, "alice@Example.com");
    expect(d.idp).toBe("https://a.example");
    expect(d.via).toBe("doh");
    expect(d.record).toMatchObject({ priority: 3, mode: "allowlist-user" });
    expect(d.explanation.join("\n")).toContain("_ddisa.example.com TXT via doh");
  });

  it("no valid record: exit 1 with a hint naming apes dns check", async () => {
    const e = await cliErrorOf(discoverIdp(await ctxWith(["v=ddisa1 mode=open"]), "alice@example.com"));
    expect(e.exitCode).toBe(ExitCode.ERROR);
    expect(e.message).toContain("no valid DDISA record at _ddisa.example.com");
    expect(e.hint).toContain("apes dns check alice@example.com");
    const nx = await cliErrorOf(discoverIdp(await ctxWith({ status: 3 }), "alice@example.com"));
    expect(nx.exitCode).toBe(ExitCode.ERROR);
  });

  it("mode=deny: exit 77", async () => {
    const e = await cliErrorOf(
      discoverIdp(await ctxWith(["v=ddisa1 idp=https://a.example; mode=deny"]), "a@example.com"),
    );
    expect(e.exitCode).toBe(ExitCode.NOPERM);
    expect(e.message).toContain("mode=deny");
  });

  it("DNS and DoH unreachable: exit 69", async () => {
    const e = await cliErrorOf(discoverIdp(await ctxWith({ status: 2 }), "a@example.com"));
    expect(e.exitCode).toBe(ExitCode.UNAVAILABLE);
    expect(e.message).toContain("Status 2");
  });

  it("not an email address: exit 2", async () => {
    const e = await cliErrorOf(discoverIdp(await ctxWith([]), "alice@"));
    expect(e.exitCode).toBe(ExitCode.USAGE);
  });

  it("loopback http IdPs in DNS only with allow_loopback_http", async () => {
    const txt = ["v=ddisa1 idp=http://127.0.0.1:4000"];
    const e = await cliErrorOf(discoverIdp(await ctxWith(txt), "a@example.com"));
    expect(e.message).toContain("plain http");
    const servers = [await closedUdpPort()];
    const ctx = fakeContext({
      http: dohWith(txt),
      config: { dns: { servers, dohUrl: "https://doh.test/r", allowLoopbackHttp: true, timeoutMs: 2000 } },
    });
    expect((await discoverIdp(ctx, "a@example.com")).idp).toBe("http://127.0.0.1:4000");
  });
});

describe("apes dns check (in process)", () => {
  it("prints each record's verdict and the winner; --json is structured", async () => {
    const servers = [await closedUdpPort()];
    const opts: FakeContextOptions = {
      http: dohWith(["hello", "v=ddisa1 idp=https://a.example; priority=1", "v=ddisa1 idp=nope"]),
      config: { dns: { servers, dohUrl: "https://doh.test/r", allowLoopbackHttp: false, timeoutMs: 2000 } },
    };
    const r = await runInProcess(["dns", "check", "bob@example.com"], opts);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("name:     _ddisa.example.com TXT");
    expect(r.stdout).toMatch(/ignored +"hello"/);
    expect(r.stdout).toMatch(/\* valid +"v=ddisa1 idp=https:\/\/a.example; priority=1"/);
    expect(r.stdout).toMatch(/invalid +"v=ddisa1 idp=nope"/);
    expect(r.stdout).toContain("idp:      https://a.example");
    expect(r.stdout).toContain("DNS-over-HTTPS https://doh.test/r (NOERROR, ttl 120 s)");
    expect(r.stdout).toContain(`failed:   ${servers[0]}`);

    const j = await runInProcess(["--json", "dns", "check", "example.com"], opts);
    expect(j.code).toBe(0);
    const out = JSON.parse(j.stdout);
    expect(out).toMatchObject({
      name: "_ddisa.example.com",
      via: "doh",
      ttl: 120,
      selected: { idp: "https://a.example", priority: 1, mode: "open" },
    });
    expect(out.records.map((x: { verdict: string }) => x.verdict)).toEqual(["ignored", "valid", "invalid"]);
  });

  it("exits 1 without a valid record (after printing what it saw), 69 when unreachable", async () => {
    const servers = [await closedUdpPort()];
    const cfg = { dns: { servers, dohUrl: "https://doh.test/r", allowLoopbackHttp: false, timeoutMs: 2000 } };
    const none = await runInProcess(["dns", "check", "a@example.com"], {
      http: dohWith(["v=ddisa1"]),
      config: cfg,
    });
    expect(none.code).toBe(1);
    expect(none.stdout).toContain("no idp field");
    expect(none.stderr).toContain("no valid DDISA record at _ddisa.example.com");
    const down = await runInProcess(["dns", "check", "a@example.com"], {
      http: dohWith({ status: 2 }),
      config: cfg,
    });
    expect(down.code).toBe(69);
    expect(down.stdout).toBe("");
  });
});
