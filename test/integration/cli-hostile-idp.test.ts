import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import type { ServerResponse } from "node:http";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type HostileServer, startHostileServer } from "../helpers/hostile-http.ts";
import { apesBin } from "../helpers/idp.ts";
import { type CliUser, cliUser } from "./cli-helpers.ts";

// The real dist/apes against a hostile IdP (a loopback server that misbehaves on purpose) and a
// doctored auth.json: it must fail fast, with bounded memory, a clear error and nothing sent astray.

const servers: HostileServer[] = [];
const users: CliUser[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
  for (const u of users.splice(0)) rmSync(u.home, { recursive: true, force: true });
});

async function hostile(mode: Parameters<typeof startHostileServer>[0]): Promise<HostileServer> {
  const s = await startHostileServer(mode);
  servers.push(s);
  return s;
}

function user(idp: string): CliUser {
  const u = cliUser("bot@example.com", idp);
  users.push(u);
  return u;
}

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
};

/** Runs dist/apes, sampling its peak RSS (VmHWM) from /proc while it runs. */
function runMeasured(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stderr: string; peakRssKiB: number }> {
  return new Promise((resolve) => {
    const child = spawn(apesBin(), args, { env, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    let peak = 0;
    child.stderr.on("data", (c: Buffer) => {
      stderr += c.toString();
    });
    const sample = setInterval(() => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"));
        if (m) peak = Math.max(peak, Number(m[1]));
      } catch {
        // exited between samples
      }
    }, 10);
    const kill = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("close", (code) => {
      clearInterval(sample);
      clearTimeout(kill);
      resolve({ code, stderr, peakRssKiB: peak });
    });
  });
}

describe("a hostile IdP", () => {
  it("an endless discovery body: exit 69 at the 16 MiB cap, memory stays modest", async () => {
    const s = await hostile("endless");
    const u = user(s.url);
    const r = await runMeasured(["login", u.email], { ...u.env, APES_HTTP_TIMEOUT_MS: "40000" });
    expect(r.stderr).toContain(`apes: IdP at ${s.url} sent an answer larger than 16 MiB: refused`);
    expect(r.code).toBe(69);
    expect(r.peakRssKiB).toBeGreaterThan(0);
    expect(r.peakRssKiB).toBeLessThan(300 * 1024);
  });

  it("a challenge endpoint on another origin: refused, that origin gets no request", async () => {
    const elsewhere = await hostile((_req, res) => json(res, 200, { challenge: "x".repeat(32) }));
    let self = "";
    const idp = await hostile((req, res) => {
      if (req.url !== "/.well-known/openid-configuration") return json(res, 404, {});
      json(res, 200, {
        issuer: self,
        ddisa_auth_challenge_endpoint: `${elsewhere.url}/api/auth/challenge`,
        ddisa_auth_authenticate_endpoint: `${elsewhere.url}/api/auth/authenticate`,
      });
    });
    self = idp.url;
    const u = user(idp.url);
    const r = await u.run(["login", u.email]);
    expect(r.code, r.stderr).toBe(69);
    expect(r.stderr).toContain(`which is not on the IdP's origin ${idp.url}: refused`);
    expect(r.stderr).toContain("idp_endpoint_origins");
    expect(elsewhere.requests).toEqual([]);
  });

  it("an error detail with terminal escapes and 5 MB of text is shown escaped and cut", async () => {
    const detail = `\x1b[2J\x1b[31mall good${"A".repeat(5 * 1024 * 1024)}`;
    const s = await hostile((_req, res) =>
      json(res, 500, { type: "https://openape.org/errors/internal", title: "t", status: 500, detail }),
    );
    const u = user(s.url);
    const r = await u.run(["login", u.email]);
    expect(r.code).toBe(69);
    expect(r.stderr).not.toContain("\x1b");
    expect(r.stderr).toContain("\\x1b[2J\\x1b[31mall good");
    expect(r.stderr).toMatch(/… \(\d+ more characters\)/);
    expect(r.stderr.length).toBeLessThan(2000);
  });
});

describe("a doctored auth.json", () => {
  const authJson = (u: CliUser) => join(u.home, ".config/apes/auth.json");
  const session = JSON.stringify({
    version: 1,
    idp: "https://id.example.test",
    email: "bot@example.com",
    act: "agent",
    token: "x.y.z",
    expires_at: 4_000_000_000,
  });
  const prepared = () => {
    const u = user("https://id.example.test");
    mkdirSync(join(u.home, ".config/apes"), { recursive: true, mode: 0o700 });
    return u;
  };

  it("a FIFO makes `apes whoami` exit 78 at once instead of hanging", async () => {
    const u = prepared();
    execFileSync("mkfifo", ["-m", "600", authJson(u)]);
    const r = await u.run(["whoami"]);
    expect(r.stderr).toContain(`${authJson(u)} is not a regular file`);
    expect(r.code).toBe(78);
  });

  it("mode 0644: exit 78 with `chmod 600`", async () => {
    const u = prepared();
    writeFileSync(authJson(u), session, { mode: 0o644 });
    const r = await u.run(["whoami"]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("accessible by others (mode 0644)");
    expect(r.stderr).toContain(`\`chmod 600 ${authJson(u)}\``);
  });

  it("a symlink and a directory: exit 78", async () => {
    const u = prepared();
    writeFileSync(join(u.home, "real.json"), session, { mode: 0o600 });
    symlinkSync(join(u.home, "real.json"), authJson(u));
    const link = await u.run(["whoami"]);
    expect(link.code).toBe(78);
    expect(link.stderr).toContain("is a symbolic link");
    rmSync(authJson(u));
    mkdirSync(authJson(u));
    const dir = await u.run(["whoami"]);
    expect(dir.code).toBe(78);
    expect(dir.stderr).toContain("is a directory");
  });
});
