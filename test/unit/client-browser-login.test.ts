import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../../cli/context.ts";
import { browserLogin } from "../../client/browser-login.ts";
import { idpEndpoints } from "../../client/discovery.ts";
import { ClientError } from "../../client/errors.ts";
import { verifyIdToken } from "../../client/oauth.ts";
import { signJwt } from "../../idp/tokens.ts";
import { fakeContext } from "../helpers/fake-context.ts";
import { formOf, type OAuthApp, startOAuthApp } from "../helpers/oauth-app.ts";

/**
 * The browser login (client/browser-login.ts) end to end in this process: the IdP's real OAuth routes (over the test
 * session seam of test/helpers/oauth-app.ts) and a "browser" that follows the URL the CLI opens,
 * as the person signed in as `who`. Also the id_token checks against tokens the IdP's key signs.
 */

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
let app: OAuthApp;
let home: string;

beforeAll(async () => {
  app = await startOAuthApp([ALICE, BOB]);
  home = mkdtempSync(join(tmpdir(), "apes-browser-login-"));
});
afterAll(async () => {
  await app.close();
  rmSync(home, { recursive: true, force: true });
});

const ctx = () => fakeContext({ home, http: (i, o) => fetch(i, o), clock: systemClock });

/** Plays the browser: the consent page as `who`, Continue (or Cancel), then the redirect to the CLI. */
const browserAs =
  (who: string, decision = "allow", seen: string[] = []) =>
  (url: string) => {
    seen.push(url);
    void (async () => {
      const cookie = { cookie: `who=${encodeURIComponent(who)}` };
      const page = await fetch(url, { headers: cookie });
      const form = formOf(await page.text());
      form.set("decision", decision);
      const r = await fetch(`${app.base}/authorize`, {
        method: "POST",
        redirect: "manual",
        body: form.toString(),
        headers: { ...cookie, "content-type": "application/x-www-form-urlencoded" },
      });
      await fetch(r.headers.get("location")!);
    })();
  };

describe("apes login in the browser (in process)", () => {
  it("logs alice in: PKCE S256 with a verifier that is never in the URL, state and nonce checked", async () => {
    const seen: string[] = [];
    const s = await browserLogin(ctx(), app.base, ALICE, {
      open: browserAs(ALICE, "allow", seen),
      timeoutMs: 10_000,
    });
    expect(s).toMatchObject({
      email: ALICE,
      act: "human",
      method: "browser",
      client_id: "apes-cli",
      idp: app.base,
    });
    expect(s.refresh_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const u = new URL(seen[0]!);
    expect(u.pathname).toBe("/authorize");
    expect(Object.fromEntries(u.searchParams)).toMatchObject({
      response_type: "code",
      client_id: "apes-cli",
      code_challenge_method: "S256",
      login_hint: ALICE,
    });
    expect(u.searchParams.get("redirect_uri")).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/callback$/);
    for (const k of ["state", "nonce", "code_challenge"])
      expect(u.searchParams.get(k)).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(u.searchParams.has("code_verifier")).toBe(false);
  });

  const failure = async (p: Promise<unknown>) => {
    const e = await p.catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ClientError);
    return e as ClientError;
  };

  it("refuses a login as someone else than the email asked for (nothing returned)", async () => {
    const e = await failure(
      browserLogin(ctx(), app.base, ALICE, { open: browserAs(BOB), timeoutMs: 10_000 }),
    );
    expect(e.failure).toBe("identity_mismatch");
    expect(e.message).toContain(BOB);
  });

  it("a cancelled consent ends with the IdP's access_denied", async () => {
    const e = await failure(
      browserLogin(ctx(), app.base, ALICE, { open: browserAs(ALICE, "deny"), timeoutMs: 10_000 }),
    );
    expect(e.failure).toBe("oauth_refused");
    expect(e.message).toContain("access_denied");
  });

  it("gives up when the browser never comes back", async () => {
    const e = await failure(browserLogin(ctx(), app.base, ALICE, { open: () => undefined, timeoutMs: 200 }));
    expect(e.failure).toBe("login_timed_out");
  });
});

describe("the id_token checks", () => {
  const sign = async (over: Record<string, unknown>) => {
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: app.base,
      sub: ALICE,
      aud: "apes-cli",
      iat: now,
      exp: now + 300,
      nonce: "n",
      jti: randomUUID(),
      act: "human",
      ...over,
    };
    return signJwt(claims, await app.idp.keys.signingKey(now, claims.exp as number));
  };
  const check = async (
    token: unknown,
    expect_: { email: string; nonce?: string } = { email: ALICE, nonce: "n" },
  ) => {
    const c = ctx();
    return verifyIdToken(c, await idpEndpoints(c, app.base), token, expect_);
  };
  it("accepts the IdP's own token", async () => {
    await expect(check(await sign({}))).resolves.toMatchObject({ sub: ALICE });
  });
  it.each([
    ["another nonce", { nonce: "other" }],
    ["no nonce", { nonce: undefined }],
    ["another audience", { aud: "sp" }],
    ["another issuer", { iss: "https://evil.example" }],
    ["act agent", { act: "agent" }],
    ["a delegated act", { act: { sub: BOB } }],
    ["longer than 300 s", { exp: Math.floor(Date.now() / 1000) + 3600 }],
    ["expired", { iat: Math.floor(Date.now() / 1000) - 1000, exp: Math.floor(Date.now() / 1000) - 700 }],
    ["another subject", { sub: BOB }],
  ])("refuses %s", async (_what, over) => {
    await expect(check(await sign(over))).rejects.toBeInstanceOf(ClientError);
  });
  it("refuses a token signed by another key, and no token", async () => {
    const { generateKeyPairSync } = await import("node:crypto");
    const now = Math.floor(Date.now() / 1000);
    const kid = (await app.idp.keys.jwks(now)).keys[0]!.kid;
    const forged = signJwt(
      { iss: app.base, sub: ALICE, aud: "apes-cli", iat: now, exp: now + 300, nonce: "n", act: "human" },
      { kid, privateKey: generateKeyPairSync("ed25519").privateKey },
    );
    await expect(check(forged)).rejects.toThrow(/signature/);
    await expect(check(undefined)).rejects.toThrow(/there is none/);
  });
});
