import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import type { Store } from "../../idp/store/types.ts";
import { addUser, apesBin, api, discovery, type IdpHandle, startIdp } from "../helpers/idp.ts";
import { type CliUser, cliUser, jwtClaims } from "./cli-helpers.ts";

/**
 * `apes login --device` against the real IdP, the refresh of the session it makes (rotation under
 * the auth.json lock, also for concurrent commands) and `apes logout` revoking it. The device code is
 * approved in the IdP's database here (as the /device page does).
 */

const ALICE = "alice@example.com";
const TTL_S = 6;

describe("apes login --device, refresh and logout", () => {
  let idp: IdpHandle;
  let store: Store;
  let alice: CliUser;

  beforeAll(async () => {
    // Short-lived access tokens so that a refresh is due within the test; long enough (a renewal
    // leaves at least half of it) that a renewed token is still valid when a command on a busy
    // machine gets to use it.
    idp = await startIdp({ tokenTtl: `${TTL_S}s` });
    await addUser(idp.dataDir, ALICE);
    store = openSqliteStore(idp.dataDir);
    alice = cliUser(ALICE, idp.url);
  });
  afterAll(async () => {
    await store?.close();
    await idp?.stop();
  });

  /** Runs `apes login --device`, approving (or denying) the code it prints. */
  const deviceLogin = (decision: "approved" | "denied") =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      const p = spawn(apesBin(), ["--json", "login", "--device", ALICE], { env: alice.env });
      let stdout = "";
      let stderr = "";
      let decided = false;
      p.stdout.on("data", (d) => {
        stdout += d;
      });
      p.stderr.on("data", async (d) => {
        stderr += d;
        const m = /enter the code\s+([A-Z]{4}-[A-Z]{4})/.exec(stderr);
        if (m && !decided) {
          decided = true;
          const ok = await store.decideDeviceCode(
            m[1]!.replace("-", ""),
            decision,
            ALICE,
            Math.floor(Date.now() / 1000),
          );
          if (!ok) p.kill();
        }
      });
      p.on("exit", (code) => resolve({ code: code ?? 1, stdout, stderr }));
    });

  it("logs in with a device code: a human session with a refresh token in auth.json", async () => {
    const r = await deviceLogin("approved");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`${idp.url}/device`);
    expect(JSON.parse(r.stdout)).toMatchObject({ email: ALICE, act: "human", method: "device" });
    const s = alice.authJson();
    expect(s).toMatchObject({ email: ALICE, act: "human", client_id: "apes-cli", method: "device" });
    expect(s.refresh_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(jwtClaims(String(s.token))).toMatchObject({ sub: ALICE, aud: "apes-cli", act: "human" });
  }, 30_000);

  it("a denied device code logs nobody in (exit 77)", async () => {
    const before = alice.authJson();
    const r = await deviceLogin("denied");
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("access_denied");
    expect(alice.authJson()).toEqual(before);
  }, 30_000);

  it("an expiring session renews with its refresh token; ten commands at once renew it once", async () => {
    const first = alice.authJson();
    await sleep(TTL_S * 1000 + 500); // the access token has expired
    const runs = await Promise.all(Array.from({ length: 10 }, () => alice.run(["--json", "grants", "list"])));
    for (const r of runs) expect(r.code, r.stderr).toBe(0);
    const next = alice.authJson();
    expect(next.refresh_token).not.toBe(first.refresh_token);
    expect(next.token).not.toBe(first.token);
    expect(next.method).toBe("device");
    // Exactly one rotation: a second spend of the same refresh token would have revoked the family,
    // and then the current one would fail.
    const doc = await discovery(idp.url);
    const r = await api(idp.url).post(doc.token_endpoint!, {
      grant_type: "refresh_token",
      refresh_token: next.refresh_token,
      client_id: "apes-cli",
    });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    // That spent auth.json's token behind apes' back: the next renewal sees the reuse and ends the session.
    await sleep(TTL_S * 1000 + 500);
    const ended = await alice.run(["grants", "list"]);
    expect(ended.code).toBe(77);
    expect(ended.stderr).toContain("has ended at the IdP");
    expect(idp.logs()).toContain("refresh token reused");
  }, 60_000);

  it("apes logout revokes the refresh token at the IdP", async () => {
    expect((await deviceLogin("approved")).code).toBe(0);
    const s = alice.authJson();
    const out = await alice.run(["--json", "logout"]);
    expect(out.code, out.stderr).toBe(0);
    expect(JSON.parse(out.stdout)).toMatchObject({ logged_out: true, revoked: true });
    const doc = await discovery(idp.url);
    const r = await api(idp.url).post(doc.token_endpoint!, {
      grant_type: "refresh_token",
      refresh_token: s.refresh_token,
      client_id: "apes-cli",
    });
    expect(r.body.error).toBe("invalid_grant");
  }, 30_000);

  it("apes logout with the IdP down still removes the session here and says the token was not revoked (69)", async () => {
    expect((await deviceLogin("approved")).code).toBe(0);
    await idp.stop();
    try {
      const out = await alice.run(["logout"]);
      expect(out.code).toBe(69);
      expect(out.stderr).toContain("not revoked");
      expect(() => alice.authJson()).toThrow();
    } finally {
      await idp.restart();
    }
  }, 30_000);
});
