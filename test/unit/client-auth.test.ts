import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ExitCode } from "../../cli/exit-codes.ts";
import { clearDiscoveryMemory, endpointsFrom } from "../../client/discovery.ts";
import type { ClientError } from "../../client/errors.ts";
import { keyLogin } from "../../client/key-login.ts";
import { freshSession, needsRefresh } from "../../client/session.ts";
import {
  authFile,
  parseSession,
  readSession,
  type StoredSession,
  withSessionLock,
  writeSession,
} from "../../client/session-store.ts";
import { fingerprint, formatOpenSshPrivateKey } from "../../protocol/keys.ts";
import { asCli } from "../helpers/cli-error.ts";
import { fakeContext, StepClock } from "../helpers/fake-context.ts";
import { fakeIdp } from "./cli-fake-idp.ts";

let home: string;
beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "apes-auth-"));
  clearDiscoveryMemory();
});
afterEach(() => rmSync(home, { recursive: true, force: true }));

function setup(options: { family?: "auth" | "agent"; ttl?: number; raw?: boolean; allowRaw?: boolean } = {}) {
  const clock = new StepClock();
  const idp = fakeIdp({
    family: options.family,
    tokenTtlS: options.ttl,
    rawSignatures: options.raw,
    now: () => Math.floor(clock.now() / 1000),
  });
  const { privateKey } = generateKeyPairSync("ed25519");
  idp.users.set("bot@example.test", { key: privateKey, act: "agent" });
  const keyPath = join(home, "id_ed25519");
  writeFileSync(keyPath, formatOpenSshPrivateKey(privateKey, "bot@example.test"), { mode: 0o600 });
  const ctx = fakeContext({
    home,
    http: idp.http,
    clock,
    ...(options.allowRaw ? { config: { allowRawLoginSignature: true } } : {}),
  });
  return { clock, idp, ctx, privateKey, keyPath };
}

async function storeFor(s: ReturnType<typeof setup>, expiresInS: number): Promise<StoredSession> {
  const r = await keyLogin(s.ctx, s.idp.base, "bot@example.test", s.privateKey);
  const stored: StoredSession = {
    version: 1,
    idp: s.idp.base,
    email: r.email,
    act: r.act,
    token: r.token,
    expires_at: Math.floor(s.clock.now() / 1000) + expiresInS,
    key_path: s.keyPath,
    key_fingerprint: fingerprint(s.privateKey),
  };
  await writeSession(s.ctx, stored);
  return stored;
}

describe("key login", () => {
  it("logs in with {id} on ddisa_auth_* IdPs", async () => {
    const s = setup();
    const r = await keyLogin(s.ctx, s.idp.base, "bot@example.test", s.privateKey);
    expect(r.act).toBe("agent");
    expect(r.email).toBe("bot@example.test");
    expect(s.idp.requests.find((q) => q.path.endsWith("/challenge"))?.body).toEqual({
      id: "bot@example.test",
    });
  });

  it("logs in with {agent_id} on IdPs that only advertise ddisa_agent_*", async () => {
    const s = setup({ family: "agent" });
    const r = await keyLogin(s.ctx, s.idp.base, "bot@example.test", s.privateKey);
    expect(r.token.split(".")).toHaveLength(3);
    expect(s.idp.requests.find((q) => q.path.endsWith("/challenge"))?.body).toEqual({
      agent_id: "bot@example.test",
    });
  });

  it("signs the raw challenge of an older IdP only when the config opts in, with a warning", async () => {
    const refused = setup({ raw: true });
    const e = await keyLogin(refused.ctx, refused.idp.base, "bot@example.test", refused.privateKey).catch(
      (x) => x,
    );
    expect(e.failure).toBe("raw_signature_refused");
    expect(asCli(e).exitCode).toBe(ExitCode.CONFIG);
    expect(asCli(e).hint).toContain("allow_raw_login_signature = true");
    expect(refused.idp.requests.some((q) => q.path.endsWith("/challenge"))).toBe(false);
    const s = setup({ raw: true, allowRaw: true });
    const r = await keyLogin(s.ctx, s.idp.base, "bot@example.test", s.privateKey);
    expect(r.email).toBe("bot@example.test");
    expect(s.ctx.stderr.text).toContain("warning: signing the bare challenge");
  });

  it("refuses a key that is not registered with exit 77", async () => {
    const s = setup();
    const other = generateKeyPairSync("ed25519").privateKey;
    const e = await keyLogin(s.ctx, s.idp.base, "bot@example.test", other).catch((x) => x);
    expect(e.failure).toBe("login_refused");
    expect(asCli(e).exitCode).toBe(ExitCode.NOPERM);
    expect(e.message).toContain("login as bot@example.test failed");
  });

  it("reads endpoints from discovery, both name families", () => {
    const doc = {
      issuer: "https://i.test",
      jwks_uri: "https://i.test/j",
      ddisa_agent_challenge_endpoint: "https://i.test/c",
    };
    expect(endpointsFrom("https://i.test", doc).challengeFamily).toBe("agent");
    expect(endpointsFrom("https://i.test", doc).agentsEndpoint).toBe("https://i.test/api/agents");
    const doc2 = { ...doc, ddisa_auth_challenge_endpoint: "https://i.test/c2" };
    expect(endpointsFrom("https://i.test", doc2).challengeEndpoint).toBe("https://i.test/c2");
  });
});

describe("session store", () => {
  it("writes auth.json 0600 in a 0700 directory", async () => {
    const s = setup();
    await storeFor(s, 3600);
    expect(statSync(authFile(s.ctx)).mode & 0o777).toBe(0o600);
    expect(statSync(s.ctx.paths.configDir).mode & 0o777).toBe(0o700);
    expect((await readSession(s.ctx))?.email).toBe("bot@example.test");
  });

  it("reports a broken auth.json with exit 78 and the fix", () => {
    for (const text of [
      "{",
      "[]",
      '{"version":1}',
      '{"version":1,"idp":"x","email":"e","token":"t","act":"root","expires_at":1}',
    ]) {
      const e = (() => {
        try {
          parseSession(text, "/x/auth.json");
        } catch (x) {
          return x;
        }
      })();
      expect((e as ClientError).failure).toBe("session_broken");
      expect(asCli(e).exitCode).toBe(ExitCode.CONFIG);
      expect(asCli(e).hint).toContain("apes logout");
    }
  });

  it("takes over a lock left by a dead process", async () => {
    const s = setup();
    const { mkdirSync } = await import("node:fs");
    mkdirSync(s.ctx.paths.configDir, { recursive: true });
    writeFileSync(`${authFile(s.ctx)}.lock`, "999999999\n");
    expect(await withSessionLock(s.ctx, async () => "ran")).toBe("ran");
  });

  it("waits for a live holder, and takes over one hung far beyond a login", async () => {
    const s = setup();
    const { mkdirSync, utimesSync } = await import("node:fs");
    mkdirSync(s.ctx.paths.configDir, { recursive: true });
    const lock = `${authFile(s.ctx)}.lock`;
    writeFileSync(lock, `${process.ppid}\n`);
    let ran = false;
    const r = await withSessionLock(
      s.ctx,
      async () => {
        ran = true;
        return "took the lock";
      },
      async () => "someone else renewed",
    );
    expect(r).toBe("someone else renewed");
    expect(ran).toBe(false);
    const old = new Date(Date.now() - 10 * 60_000);
    utimesSync(lock, old, old);
    expect(await withSessionLock(s.ctx, async () => "took the lock")).toBe("took the lock");
  });

  it("serialises concurrent holders", async () => {
    const s = setup();
    let inside = 0;
    let maxInside = 0;
    await Promise.all(
      Array.from({ length: 5 }, () =>
        withSessionLock(s.ctx, async () => {
          inside++;
          maxInside = Math.max(maxInside, inside);
          await new Promise((r) => setTimeout(r, 5));
          inside--;
        }),
      ),
    );
    expect(maxInside).toBe(1);
  });
});

describe("freshSession", () => {
  it("says how to log in when there is no session (77)", async () => {
    const s = setup();
    const e = await freshSession(s.ctx).catch((x) => x);
    expect(e.failure).toBe("no_session");
    expect(asCli(e).exitCode).toBe(ExitCode.NOPERM);
    expect(asCli(e).hint).toContain("apes login");
  });

  it("returns a session with more than 60 s left without contacting the IdP", async () => {
    const s = setup();
    await storeFor(s, 3600);
    const before = s.idp.requests.length;
    const session = await freshSession(s.ctx);
    expect(session.email).toBe("bot@example.test");
    expect(s.idp.requests.length).toBe(before);
  });

  it("re-authenticates with the key when less than 60 s remain, once for concurrent callers", async () => {
    const s = setup();
    const old = await storeFor(s, 30);
    const before = s.idp.authentications;
    const sessions = await Promise.all(Array.from({ length: 10 }, () => freshSession(s.ctx)));
    expect(s.idp.authentications - before).toBe(1);
    expect(new Set(sessions.map((x) => x.token)).size).toBe(1);
    expect(sessions[0]!.token).not.toBe(old.token);
    const stored = JSON.parse(readFileSync(authFile(s.ctx), "utf8"));
    expect(stored.token).toBe(sessions[0]!.token);
    expect(stored.expires_at).toBeGreaterThan(old.expires_at);
  });

  it("names the exact login command when the key is gone from the recorded path (78)", async () => {
    const s = setup();
    await storeFor(s, 10);
    rmSync(s.keyPath);
    const e = await freshSession(s.ctx).catch((x) => x);
    expect(e.failure).toBe("key_unreadable");
    expect(asCli(e).exitCode).toBe(ExitCode.CONFIG);
    expect(e.message).toContain(`${s.keyPath} does not exist`);
    expect(asCli(e).hint).toContain("apes login bot@example.test --key");
  });

  it("points at the same key when it moved to a default location", async () => {
    const s = setup();
    await storeFor(s, 10);
    const { mkdirSync, renameSync } = await import("node:fs");
    mkdirSync(join(home, ".ssh"));
    renameSync(s.keyPath, join(home, ".ssh", "id_ed25519"));
    const e = await freshSession(s.ctx).catch((x) => x);
    expect(e.failure).toBe("key_moved");
    expect(asCli(e).exitCode).toBe(ExitCode.CONFIG);
    expect(asCli(e).hint).toContain(`apes login bot@example.test --key ${join(home, ".ssh", "id_ed25519")}`);
  });

  it("detects a different key at the recorded path (78)", async () => {
    const s = setup();
    await storeFor(s, 10);
    writeFileSync(s.keyPath, formatOpenSshPrivateKey(generateKeyPairSync("ed25519").privateKey), {
      mode: 0o600,
    });
    const e = await freshSession(s.ctx).catch((x) => x);
    expect(e.failure).toBe("key_mismatch");
    expect(asCli(e).exitCode).toBe(ExitCode.CONFIG);
    expect(e.message).toContain("is not the one this session was created with");
    expect(asCli(e).hint).toContain(`apes login bot@example.test --key ${s.keyPath}`);
  });

  it("reports an unreachable IdP during renewal with 69", async () => {
    const s = setup();
    await storeFor(s, 10);
    s.idp.down = true;
    clearDiscoveryMemory();
    rmSync(s.ctx.paths.cacheDir, { recursive: true, force: true });
    const e = await freshSession(s.ctx).catch((x) => x);
    expect(e.failure).toBe("idp_unreachable");
    expect(asCli(e).exitCode).toBe(ExitCode.UNAVAILABLE);
    expect(e.message).toContain("IdP at https://id.example.test is unreachable (connection refused)");
  });

  it("needsRefresh is true below the 60 s margin only", () => {
    expect(needsRefresh({ expires_at: 1060 }, 1000)).toBe(false);
    expect(needsRefresh({ expires_at: 1059 }, 1000)).toBe(true);
    expect(needsRefresh({ expires_at: 900 }, 1000)).toBe(true);
    // A 10 s token is renewed in its last 5 s, not at once.
    expect(needsRefresh({ issued_at: 1000, expires_at: 1010 }, 1000)).toBe(false);
    expect(needsRefresh({ issued_at: 1000, expires_at: 1010 }, 1006)).toBe(true);
    expect(needsRefresh({ issued_at: 1000, expires_at: 4600 }, 4540)).toBe(false);
    expect(needsRefresh({ issued_at: 1000, expires_at: 4600 }, 4541)).toBe(true);
  });
});
