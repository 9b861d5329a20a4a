import { type ChildProcess, spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DdisaCache, DnsUnavailableError, queryTxtUdp, resolveDdisa } from "../../protocol/resolver.ts";
import { collect } from "../helpers/process.ts";

// A real DNS server (dnsmasq, Debian package dnsmasq-base) on a loopback port, serving _ddisa TXT
// records; the real dist/apes pointed at it. Every query names its servers explicitly, so the
// system resolver is never asked about these test domains.

const root = join(import.meta.dirname, "..", "..");
const bin = join(root, "dist", "apes");
const dnsmasqBin = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/bin/dnsmasq"].find((p) => existsSync(p));
const TTL = 123;
const BIG = Array.from(
  { length: 8 },
  (_, i) => `v=ddisa1 idp=https://big${i}.example; priority=${i + 1}; pad=${"x".repeat(200)}`,
);

const RECORDS: [string, string[]][] = [
  ["_ddisa.test.example", ["v=ddisa1 idp=https://b.test.example; priority=20"]],
  ["_ddisa.test.example", ["v=ddisa1 idp=https://a.test.example; mode=allowlist-admin; priority=5"]],
  ["_ddisa.test.example", ["v=ddisa1 mode=open; priority=1"]], // invalid: no idp
  ["_ddisa.test.example", ["v=ddisa1 idp=http://evil.example; priority=0"]], // invalid: not https
  ["_ddisa.test.example", ["v=spf1 -all"]], // not DDISA: ignored
  ["_ddisa.multi.example", ["v=ddisa1 idp=https://", "multi.example; priority=2"]], // two character-strings
  ["_ddisa.deny.example", ["v=ddisa1 idp=https://id.deny.example; mode=deny"]],
  ["_ddisa.loop.example", ["v=ddisa1 idp=http://127.0.0.1:4000"]],
  ["_ddisa.none.example", ["v=ddisa1 priority=1"]],
  ...BIG.map((t): [string, string[]] => ["_ddisa.big.example", [t]]),
];

let dir: string;
let dnsmasq: ChildProcess | undefined;
let dnsmasqLog = "";
let server: string; // 127.0.0.1:port of dnsmasq
let closed: string; // a loopback port where nobody answers DNS
let doh: Server;
let dohUrl: string;
let dohRequests: string[] = [];

async function freePort(): Promise<number> {
  const s = createTcpServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function closedUdpPort(): Promise<string> {
  const s = createSocket("udp4");
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return `127.0.0.1:${port}`;
}

async function startDnsmasq(port: number): Promise<boolean> {
  const conf = join(dir, `dnsmasq-${port}.conf`);
  const lines = [
    "no-resolv",
    "no-hosts",
    "no-poll",
    `port=${port}`,
    "listen-address=127.0.0.1",
    "bind-interfaces",
    "pid-file=",
    `local-ttl=${TTL}`,
    // Authoritative-style answers for the test zones: NXDOMAIN, never a forward.
    "local=/example/",
    ...RECORDS.map(([name, strings]) => `txt-record=${name},${strings.map((s) => `"${s}"`).join(",")}`),
  ];
  await writeFile(conf, `${lines.join("\n")}\n`);
  dnsmasqLog = "";
  const child = spawn(dnsmasqBin!, ["--no-daemon", `--conf-file=${conf}`], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (d) => {
    dnsmasqLog += d;
  });
  child.stderr?.on("data", (d) => {
    dnsmasqLog += d;
  });
  dnsmasq = child;
  // Ready when it answers; bounded.
  for (let i = 0; i < 50; i++) {
    if (child.exitCode !== null) return false;
    try {
      await queryTxtUdp("_ddisa.test.example", { host: "127.0.0.1", port, family: 4 }, 200);
      return true;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return false;
}

beforeAll(async () => {
  if (!dnsmasqBin) throw new Error("dnsmasq is not installed: apt-get install -y dnsmasq-base (see .ci/run)");
  dir = await mkdtemp(join(tmpdir(), "apes-dns-"));
  // A free TCP port is almost always a free UDP port too; retry a few times if not.
  let started = false;
  for (let attempt = 0; attempt < 5 && !started; attempt++) {
    const port = await freePort();
    started = await startDnsmasq(port);
    if (started) server = `127.0.0.1:${port}`;
    else dnsmasq?.kill("SIGKILL");
  }
  if (!started) throw new Error(`dnsmasq did not start:\n${dnsmasqLog}`);
  closed = await closedUdpPort();

  // A DNS-over-HTTPS JSON endpoint on loopback (stand-in for a public DoH service).
  doh = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    dohRequests.push(`${req.headers.accept} ${url.pathname}?${url.searchParams}`);
    const name = url.searchParams.get("name");
    const body =
      name === "_ddisa.doh.example"
        ? {
            Status: 0,
            Answer: [
              {
                name: "_ddisa.doh.example.",
                type: 16,
                TTL: 42,
                data: '"v=ddisa1 idp=https://" "id.doh.example"',
              },
              { name: "_ddisa.doh.example.", type: 1, TTL: 42, data: "192.0.2.1" },
            ],
          }
        : name === "_ddisa.evil.example"
          ? {
              Status: 0,
              Answer: [
                // Escape sequences and a bidi override in records: `dns check` must show them, not obey them.
                {
                  name: "_ddisa.evil.example.",
                  type: 16,
                  TTL: 42,
                  data: '"v=ddisa1 idp=https://id.evil.example; x=\x1b[2J"',
                },
                {
                  name: "_ddisa.evil.example.",
                  type: 16,
                  TTL: 42,
                  data: '"\x1b[2J\x1b[Hv=ddisa1 \u202eidp=x"',
                },
              ],
            }
          : { Status: 3 };
    res.writeHead(200, { "content-type": "application/dns-json" });
    res.end(JSON.stringify(body));
  });
  await new Promise<void>((r) => doh.listen(0, "127.0.0.1", r));
  dohUrl = `http://127.0.0.1:${(doh.address() as { port: number }).port}/resolve`;
});

afterAll(async () => {
  dnsmasq?.kill("SIGTERM");
  await new Promise<void>((r) => (doh ? doh.close(() => r()) : r()));
  if (dir) await rm(dir, { recursive: true, force: true });
});

function apes(args: string[], env: Record<string, string>) {
  return collect(
    spawn(bin, args, {
      cwd: "/",
      env: { PATH: "/usr/bin:/bin", HOME: dir, XDG_CONFIG_HOME: join(dir, "config"), ...env },
      stdio: ["pipe", "pipe", "pipe"],
    }),
  );
}

describe("resolveDdisa against dnsmasq", () => {
  it("returns every TXT record with the TTL and selects the lowest valid priority", async () => {
    const r = await resolveDdisa("test.example", { servers: [server], timeoutMs: 2000 });
    expect(r).toMatchObject({ via: "dns", rcode: "NOERROR", ttl: TTL, server, name: "_ddisa.test.example" });
    expect([...r.txt].sort()).toEqual(
      RECORDS.filter(([n]) => n === "_ddisa.test.example")
        .map(([, s]) => s.join(""))
        .sort(),
    );
    expect(r.selection.selected).toEqual({
      version: "ddisa1",
      idp: "https://a.test.example",
      mode: "allowlist-admin",
      priority: 5,
    });
    const why = r.selection.explanation.join("\n");
    expect(why).toContain("no idp field");
    expect(why).toContain("must use https");
    expect(why).toContain('ignored "v=spf1 -all"');
  });

  it("joins a record's character-strings", async () => {
    const r = await resolveDdisa("multi.example", { servers: [server], timeoutMs: 2000 });
    expect(r.txt).toEqual(["v=ddisa1 idp=https://multi.example; priority=2"]);
    expect(r.selection.selected?.idp).toBe("https://multi.example");
  });

  it("gets a large answer completely (truncated over UDP, retried over TCP)", async () => {
    const r = await resolveDdisa("big.example", { servers: [server], timeoutMs: 2000 });
    expect([...r.txt].sort()).toEqual([...BIG].sort());
    expect(r.selection.selected?.idp).toBe("https://big0.example");
  });

  it("NXDOMAIN is an answer: no DoH fallback, cached for at most 60 s", async () => {
    dohRequests = [];
    const cache = new DdisaCache({ now: () => 0 });
    const r = await resolveDdisa("nothing-here.example", {
      servers: [server],
      dohUrl,
      timeoutMs: 2000,
      cache,
    });
    expect(r.rcode).toBe("NXDOMAIN");
    expect(r.ttl).toBeLessThanOrEqual(60);
    expect(r.selection.selected).toBeUndefined();
    expect(dohRequests).toEqual([]);
    expect((await resolveDdisa("nothing-here.example", { servers: [server], cache })).via).toBe("cache");
  });

  it("skips a dead server and uses the next", async () => {
    const r = await resolveDdisa("test.example", { servers: [closed, server], timeoutMs: 2000 });
    expect(r.server).toBe(server);
    expect(r.failures.map((f) => f.server)).toEqual([closed]);
  });

  it("falls back to DoH when the DNS server is unreachable", async () => {
    dohRequests = [];
    const r = await resolveDdisa("doh.example", { servers: [closed], dohUrl, timeoutMs: 2000 });
    expect(r).toMatchObject({ via: "doh", ttl: 42, txt: ["v=ddisa1 idp=https://id.doh.example"] });
    expect(dohRequests).toEqual(["application/dns-json /resolve?name=_ddisa.doh.example&type=TXT"]);
  });

  it("fails with every reason when nothing answers", async () => {
    await expect(resolveDdisa("test.example", { servers: [closed], timeoutMs: 2000 })).rejects.toBeInstanceOf(
      DnsUnavailableError,
    );
  });
});

describe("dist/apes dns check against dnsmasq", () => {
  it("shows every record with its verdict, the winner, source and TTL", async () => {
    const r = await apes(["dns", "check", "a@test.example"], { APES_DNS_SERVERS: server });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("name:     _ddisa.test.example TXT");
    expect(r.stdout).toContain(`source:   DNS ${server} (NOERROR, ttl ${TTL} s)`);
    expect(r.stdout).toMatch(
      /\* valid +"v=ddisa1 idp=https:\/\/a.test.example; mode=allowlist-admin; priority=5"/,
    );
    expect(r.stdout).toMatch(/^ {2}valid +"v=ddisa1 idp=https:\/\/b.test.example; priority=20"/m);
    expect(r.stdout).toMatch(/invalid +"v=ddisa1 mode=open; priority=1"\n +no idp field/);
    expect(r.stdout).toMatch(/ignored +"v=spf1 -all"/);
    expect(r.stdout).toContain("idp:      https://a.test.example");
    expect(r.stdout).toContain("mode:     allowlist-admin");
  });

  it("--json prints the structured result", async () => {
    const r = await apes(["--json", "dns", "check", "a@test.example"], { APES_DNS_SERVERS: server });
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({
      domain: "test.example",
      name: "_ddisa.test.example",
      via: "dns",
      server,
      ttl: TTL,
      selected: { idp: "https://a.test.example", mode: "allowlist-admin", priority: 5 },
    });
    expect(j.records).toHaveLength(5);
    expect(j.records.filter((x: { selected: boolean }) => x.selected)).toHaveLength(1);
  });

  it("reports mode=deny and loopback http depending on the setting", async () => {
    const deny = await apes(["dns", "check", "a@deny.example"], { APES_DNS_SERVERS: server });
    expect(deny.code).toBe(0);
    expect(deny.stdout).toContain("mode:     deny (logins refused)");
    const loop = await apes(["dns", "check", "a@loop.example"], { APES_DNS_SERVERS: server });
    expect(loop.code).toBe(1);
    expect(loop.stdout).toContain("plain http");
    const allowed = await apes(["dns", "check", "a@loop.example"], {
      APES_DNS_SERVERS: server,
      APES_ALLOW_LOOPBACK_HTTP: "1",
    });
    expect(allowed.code).toBe(0);
    expect(allowed.stdout).toContain("idp:      http://127.0.0.1:4000");
  });

  it("exits 1 when there is no valid record, or no record at all", async () => {
    for (const email of ["a@none.example", "a@nothing-here.example"]) {
      const r = await apes(["dns", "check", email], { APES_DNS_SERVERS: server });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("no valid DDISA record");
    }
  });

  it("falls back to DoH, and exits 69 when nothing answers", async () => {
    const r = await apes(["dns", "check", "a@doh.example"], {
      APES_DNS_SERVERS: closed,
      APES_DOH_URL: dohUrl,
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`source:   DNS-over-HTTPS ${dohUrl} (NOERROR, ttl 42 s)`);
    expect(r.stdout).toContain(`failed:   ${closed}`);
    expect(r.stdout).toContain("idp:      https://id.doh.example");
    const down = await apes(["dns", "check", "a@doh.example"], { APES_DNS_SERVERS: closed });
    expect(down.code).toBe(69);
    expect(down.stderr).toContain(`cannot resolve _ddisa.doh.example: ${closed}`);
  });

  it("shows control characters and bidi overrides in records escaped, never raw", async () => {
    const r = await apes(["dns", "check", "a@evil.example"], {
      APES_DNS_SERVERS: closed,
      APES_DOH_URL: dohUrl,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f\u202e]/);
    expect(r.stdout).toContain('"v=ddisa1 idp=https://id.evil.example; x=\\x1b[2J"');
    expect(r.stdout).toContain('"\\x1b[2J\\x1b[Hv=ddisa1 \\u202eidp=x"');
    expect(r.stdout).toContain("unknown fields ignored: x");
  });

  it("reads the DNS servers from config.toml too", async () => {
    const { mkdir } = await import("node:fs/promises");
    const xdg = join(dir, "config-file-test");
    await mkdir(join(xdg, "apes"), { recursive: true });
    await writeFile(join(xdg, "apes", "config.toml"), `[dns]\nservers = ["${server}"]\ntimeout = "2s"\n`);
    const r = await apes(["dns", "check", "a@multi.example"], { XDG_CONFIG_HOME: xdg });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("idp:      https://multi.example");
  });
});
