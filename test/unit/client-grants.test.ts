import { generateKeyPairSync } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ExitCode } from "../../cli/exit-codes.ts";
import { formatElapsed, startProgress } from "../../cli/grants/progress.ts";
import {
  type ClientContext,
  type ClientWarning,
  type Clock,
  clientContext,
  systemClock,
} from "../../client/context.ts";
import { clearDiscoveryMemory } from "../../client/discovery.ts";
import { ClientError } from "../../client/errors.ts";
import { grantsClient } from "../../client/grants.ts";
import { errorFor, nodeFetch, request } from "../../client/http.ts";
import { keyLogin } from "../../client/key-login.ts";
import { loadPrivateKey } from "../../client/keys.ts";
import { freshSession, logInWithKey } from "../../client/session.ts";
import { writeSession } from "../../client/session-store.ts";
import { waitForDecision } from "../../client/wait.ts";
import { fingerprint, formatOpenSshPrivateKey } from "../../protocol/keys.ts";
import { asCli } from "../helpers/cli-error.ts";
import { fakeContext } from "../helpers/fake-context.ts";
import { type FakeIdp, fakeIdp } from "./cli-fake-idp.ts";

class StepClock implements Clock {
  t = Date.UTC(2026, 10, 22);
  sleeps: number[] = [];
  now() {
    return this.t;
  }
  async sleep(ms: number) {
    this.sleeps.push(ms);
    this.t += ms;
  }
}

let home: string;
beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "apes-grants-"));
  clearDiscoveryMemory();
});
afterEach(() => rmSync(home, { recursive: true, force: true }));

async function loggedIn(idp: FakeIdp, clock: StepClock, env: Record<string, string> = {}) {
  const { privateKey } = generateKeyPairSync("ed25519");
  idp.users.set("bot@example.test", { key: privateKey, act: "agent", owner: "alice@example.test" });
  const keyPath = join(home, "id_ed25519");
  writeFileSync(keyPath, formatOpenSshPrivateKey(privateKey), { mode: 0o600 });
  const ctx = fakeContext({ home, http: idp.http, clock, env });
  const r = await keyLogin(ctx, idp.base, "bot@example.test", privateKey);
  await writeSession(ctx, {
    version: 1,
    idp: idp.base,
    email: r.email,
    act: r.act,
    token: r.token,
    expires_at: r.expiresAt,
    key_path: keyPath,
    key_fingerprint: fingerprint(privateKey),
  });
  return ctx;
}

function setup(options: { push?: boolean } = {}) {
  const clock = new StepClock();
  const idp = fakeIdp({ now: () => Math.floor(clock.now() / 1000), push: options.push });
  return { clock, idp };
}

/** Decides a grant through the fake's API as the bot's owner, so the ETag changes as on a real IdP. */
async function decide(idp: FakeIdp, clock: Clock, id: string, verb: "approve" | "deny") {
  const owner = generateKeyPairSync("ed25519").privateKey;
  idp.users.set("alice@example.test", { key: owner, act: "human" });
  const octx = fakeContext({ home: join(home, "owner"), http: idp.http, clock });
  const r = await keyLogin(octx, idp.base, "alice@example.test", owner);
  await idp.http(`${idp.base}/api/grants/${id}/${verb}`, {
    method: "POST",
    headers: { authorization: `Bearer ${r.token}`, "content-type": "application/json" },
    body: "{}",
  });
}

const request0 = { target_host: "h", audience: "escapes", grant_type: "once" as const, command: ["ls"] };

describe("grants client", () => {
  it("creates, reads, lists and authenticates with the session token", async () => {
    const { clock, idp } = setup();
    const ctx = await loggedIn(idp, clock);
    const c = await grantsClient(ctx);
    const { grant, reused } = await c.create(request0);
    expect(reused).toBe(false);
    expect(grant.request.requester).toBe("bot@example.test");
    expect((await c.get(grant.id)).status).toBe("pending");
    expect((await c.list({ status: "pending" })).data.map((g) => g.id)).toEqual([grant.id]);
    const last = idp.requests.at(-1)!;
    expect(last.path).toBe("/api/grants");
    expect(last.headers.authorization).toMatch(/^Bearer /);
  });

  it("refuses ids that would change the URL path", async () => {
    const { clock, idp } = setup();
    const c = await grantsClient(await loggedIn(idp, clock));
    const e = await c.get("../admin").catch((x) => x);
    expect(e.failure).toBe("not_a_grant_id");
    expect(asCli(e).exitCode).toBe(ExitCode.USAGE);
  });

  it("re-authenticates transparently when the token is about to expire", async () => {
    const { clock, idp } = setup();
    const ctx = await loggedIn(idp, clock);
    const c = await grantsClient(ctx);
    const before = idp.authentications;
    clock.t += 3590 * 1000;
    await c.list();
    expect(idp.authentications).toBe(before + 1);
  });
});

describe("a neutral ClientContext (what the Nest passes: no terminal, no CLI)", () => {
  it("logs in with a key, renews, creates a grant and waits for it; failures are typed", async () => {
    const { clock, idp } = setup();
    const { privateKey } = generateKeyPairSync("ed25519");
    idp.users.set("nest@example.test", { key: privateKey, act: "agent", owner: "alice@example.test" });
    const keyPath = join(home, "nest-key");
    writeFileSync(keyPath, formatOpenSshPrivateKey(privateKey), { mode: 0o600 });
    const debug: string[] = [];
    const warnings: ClientWarning[] = [];
    const ctx: ClientContext = {
      http: idp.http,
      clock,
      paths: { configDir: join(home, "nest", "config"), cacheDir: join(home, "nest", "cache") },
      env: {},
      config: async () => ({ allowRawLoginSignature: false, idpEndpointOrigins: [] }),
      debug: (m) => debug.push(m),
      warn: (w) => warnings.push(w),
    };
    const none = await freshSession(ctx).catch((x: unknown) => x);
    expect(none).toBeInstanceOf(ClientError);
    expect((none as ClientError).failure).toBe("no_session");
    const { session } = await logInWithKey(
      ctx,
      idp.base,
      "nest@example.test",
      await loadPrivateKey(ctx, keyPath),
    );
    expect(session.key_path).toBe(keyPath);
    expect(statSync(join(home, "nest", "config", "auth.json")).mode & 0o777).toBe(0o600);
    const before = idp.authentications;
    clock.t += 3590 * 1000;
    const renewed = await freshSession(ctx);
    expect(idp.authentications).toBe(before + 1);
    expect(renewed.token).not.toBe(session.token);
    const c = await grantsClient(ctx);
    const { grant } = await c.create(request0);
    expect(grant.request.requester).toBe("nest@example.test");
    let polls = 0;
    const decided = await waitForDecision(ctx, c, grant.id, {
      timeoutMs: 60_000,
      onProgress: () => {
        if (++polls === 2) void decide(idp, clock, grant.id, "approve");
      },
    });
    expect(decided.status).toBe("approved");
    expect(debug.some((m) => m.startsWith("session: renewing the token of nest@example.test"))).toBe(true);
    expect(warnings).toEqual([]);
    // A key others can read is a warning for the caller to show, not a line on a terminal.
    chmodSync(keyPath, 0o644);
    await loadPrivateKey(ctx, keyPath);
    expect(warnings).toEqual([{ kind: "key_mode", path: keyPath, mode: 0o644 }]);
  });
});

describe("clientContext (a ready ClientContext for a process of its own)", () => {
  it("defaults to the system clock and client/http.ts's transport, and keeps its files in its own dirs", async () => {
    const { createServer } = await import("node:http");
    const server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"ok":true}');
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const port = (server.address() as { port: number }).port;
      const ctx = clientContext({
        configDir: join(home, "own", "config"),
        cacheDir: join(home, "own", "cache"),
      });
      expect(ctx.clock).toBe(systemClock);
      expect((await request(ctx, { url: `http://127.0.0.1:${port}/x` })).body).toEqual({ ok: true });
      const none = await freshSession(ctx).catch((x: unknown) => x);
      expect((none as ClientError).failure).toBe("no_session");
      expect(await ctx.config()).toEqual({ allowRawLoginSignature: false, idpEndpointOrigins: [] });
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe("waitForDecision", () => {
  it("polls with If-None-Match every 3 s until decided", async () => {
    const { clock, idp } = setup();
    const ctx = await loggedIn(idp, clock);
    const c = await grantsClient(ctx);
    const { grant } = await c.create(request0);
    let polls = 0;
    const progress: number[] = [];
    const result = await waitForDecision(ctx, c, grant.id, {
      onProgress: (ms) => {
        progress.push(ms);
        if (++polls === 3) void decide(idp, clock, grant.id, "deny");
      },
      timeoutMs: 60_000,
    });
    expect(result.status).toBe("denied");
    expect(polls).toBeGreaterThanOrEqual(3);
    expect(clock.sleeps.every((ms) => ms === 3000)).toBe(true);
    const gets = idp.requests.filter((r) => r.path === `/api/grants/${grant.id}`);
    expect(gets.slice(1).every((r) => r.headers["if-none-match"])).toBe(true);
    expect(progress[0]).toBe(0);
  });

  it("long-polls with Prefer: wait when the IdP applies it, without sleeping", async () => {
    const { clock, idp } = setup({ push: true });
    const ctx = await loggedIn(idp, clock);
    const c = await grantsClient(ctx);
    const { grant } = await c.create(request0);
    idp.onWait = () => decide(idp, clock, grant.id, "approve");
    const result = await waitForDecision(ctx, c, grant.id, { timeoutMs: 60_000 });
    expect(result.status).toBe("approved");
    expect(clock.sleeps).toEqual([]);
    expect(idp.requests.some((r) => r.headers.prefer === "wait=25")).toBe(true);
  });

  it("falls back to polling when APES_NO_PUSH=1", async () => {
    const { clock, idp } = setup({ push: true });
    const ctx = await loggedIn(idp, clock, { APES_NO_PUSH: "1" });
    const c = await grantsClient(ctx);
    const { grant } = await c.create(request0);
    const e = await waitForDecision(ctx, c, grant.id, { timeoutMs: 10_000 }).catch((x) => x);
    expect(asCli(e).exitCode).toBe(ExitCode.TEMPFAIL);
    expect(e.message).toContain("still pending after 10s");
    expect(idp.requests.some((r) => r.headers.prefer)).toBe(false);
  });

  it("ends with exit 75 on timeout and says how to continue", async () => {
    const { clock, idp } = setup();
    const ctx = await loggedIn(idp, clock);
    const c = await grantsClient(ctx);
    const { grant } = await c.create(request0);
    const e = await waitForDecision(ctx, c, grant.id, { timeoutMs: 7000 }).catch((x) => x);
    expect(e.failure).toBe("wait_timed_out");
    expect(e.details).toMatchObject({ id: grant.id });
    expect(asCli(e).exitCode).toBe(ExitCode.TEMPFAIL);
    expect(asCli(e).hint).toContain(`apes grants wait ${grant.id}`);
  });
});

describe("http helper", () => {
  it("maps statuses to exit codes", () => {
    const u = "https://id.test/x";
    expect(asCli(errorFor(503, {}, u)).exitCode).toBe(ExitCode.UNAVAILABLE);
    expect(asCli(errorFor(401, { detail: "expired" }, u)).exitCode).toBe(ExitCode.NOPERM);
    expect(asCli(errorFor(403, {}, u)).exitCode).toBe(ExitCode.NOPERM);
    const e = errorFor(400, { error: "invalid_grant", error_description: "no such delegation" }, u);
    expect(asCli(e).exitCode).toBe(ExitCode.ERROR);
    expect(e.message).toContain("no such delegation");
    expect(e.code).toBe("invalid_grant");
    expect(e.status).toBe(400);
    expect(e.detail).toBe("no such delegation");
    expect(
      errorFor(409, { type: "https://openape.org/errors/invalid_state", title: "t", status: 409 }, u).code,
    ).toBe("invalid_state");
  });

  it("logs requests with --debug but never the token", async () => {
    const idp = fakeIdp();
    const ctx = fakeContext({ home, http: idp.http, globals: { debug: true } });
    await request(ctx, {
      url: `${idp.base}/.well-known/openid-configuration?x=secret`,
      token: "SECRET-TOKEN",
    });
    expect(ctx.stderr.text).toContain(
      "GET https://id.example.test/.well-known/openid-configuration?… -> 200",
    );
    expect(ctx.stderr.text).not.toContain("SECRET");
  });

  it("turns refused connections and 5xx into exit 69 naming the IdP", async () => {
    const idp = fakeIdp();
    const ctx = fakeContext({ home, http: idp.http });
    const e = await request(ctx, { url: `${idp.base}/boom` }).catch((x) => x);
    expect(asCli(e).exitCode).toBe(ExitCode.UNAVAILABLE);
    expect(e.message).toContain("maintenance");
    idp.down = true;
    const e2 = await request(ctx, { url: `${idp.base}/x` }).catch((x) => x);
    expect(asCli(e2).exitCode).toBe(ExitCode.UNAVAILABLE);
    expect(e2.message).toBe("IdP at https://id.example.test is unreachable (connection refused)");
  });

  it("refuses a configured CA file that is missing (78)", async () => {
    const ctx = fakeContext({ home, http: fakeIdp().http, config: { caFile: join(home, "nope.pem") } });
    const e = await request(ctx, { url: "https://id.example.test/x" }).catch((x) => x);
    expect(asCli(e).exitCode).toBe(ExitCode.CONFIG);
  });
});

describe("nodeFetch (node:http transport)", () => {
  it("sends method, headers and body; answers status, headers and text; refused -> 69", async () => {
    const { createServer } = await import("node:http");
    const seen: { method?: string; auth?: string; body?: string }[] = [];
    const server = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => {
        body += c;
      });
      req.on("end", () => {
        seen.push({ method: req.method, auth: req.headers.authorization, body });
        res.writeHead(201, {
          "content-type": "application/json",
          etag: '"7"',
          "preference-applied": "wait=5",
        });
        res.end('{"ok":true}');
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    try {
      const res = await nodeFetch(`http://127.0.0.1:${port}/x`, {
        method: "POST",
        headers: { Authorization: "Bearer t", "content-type": "application/json" },
        body: '{"a":1}',
      });
      expect(res.status).toBe(201);
      expect(res.headers.get("ETag")).toBe('"7"');
      expect(res.headers.get("missing")).toBeNull();
      expect(JSON.parse(await res.text())).toEqual({ ok: true });
      expect(seen[0]).toEqual({ method: "POST", auth: "Bearer t", body: '{"a":1}' });
    } finally {
      await new Promise((r) => server.close(r));
    }
    const ctx = fakeContext({
      home,
      http: ((u: string, i?: RequestInit) => nodeFetch(u, i)) as typeof fetch,
    });
    const e = await request(ctx, { url: `http://127.0.0.1:${port}/gone` }).catch((x) => x);
    expect(asCli(e).exitCode).toBe(ExitCode.UNAVAILABLE);
    expect(e.message).toContain("connection refused");
  });
});

describe("progress line", () => {
  it("prints one plain line when stderr is not a TTY", () => {
    const ctx = fakeContext();
    const p = startProgress(ctx, "waiting for approval");
    p.update("still waiting");
    p.stop("approved");
    expect(ctx.stderr.text).toBe("waiting for approval\napproved\n");
  });

  it("formats elapsed time", () => {
    expect(formatElapsed(5_400)).toBe("5s");
    expect(formatElapsed(65_000)).toBe("1m05s");
    expect(formatElapsed(3_700_000)).toBe("1h01m");
  });
});
