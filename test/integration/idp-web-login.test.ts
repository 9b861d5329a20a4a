/**
 * The passkey pages' HTTP side against the real `dist/apes idp serve`, without a browser: the JSON
 * calls refuse other origins, every failed login and every bad invite gets the same answer, the
 * calls are rate limited, a whole login (software authenticator) sets the documented cookies and
 * a logout needs the CSRF token and the Strict cookie; an IP-address issuer turns the pages off;
 * the invite commands check their input. The browser flows are in test/e2e/web-login.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Store } from "../../idp/store/types.ts";
import { newInvite } from "../../idp/web/invites.ts";
import { startWebIdp } from "../helpers/browser.ts";
import { addUser, type IdpHandle, type Json, openTestStore, runApes, startIdp } from "../helpers/idp.ts";
import { softPasskey } from "../helpers/soft-passkey.ts";

const ALICE = "alice@example.com";
let idp: IdpHandle;

beforeAll(async () => {
  idp = await startWebIdp();
  await addUser(idp.dataDir, ALICE);
  await addUser(idp.dataDir, "bot@example.com", { agent: true, owner: ALICE });
});
afterAll(async () => {
  await idp?.stop();
});

const json = async (res: Response): Promise<Json> => res.json();

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${idp.issuer}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      origin: idp.issuer,
      "sec-fetch-site": "same-origin",
      ...headers,
    },
    body: JSON.stringify(body),
    redirect: "manual",
  });

async function withStore<T>(fn: (s: Store) => Promise<T>): Promise<T> {
  const s = await openTestStore(idp.dataDir);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

describe("passkey login over HTTP", () => {
  it("JSON calls from another origin, or naming none, are refused", async () => {
    expect(
      (await post("/login/options", {}, { origin: "https://evil.example", "sec-fetch-site": "cross-site" }))
        .status,
    ).toBe(403);
    const noOrigin = await fetch(`${idp.issuer}/login/options`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(noOrigin.status).toBe(403);
    expect((await post("/login/options", {}, { "sec-fetch-site": "same-site" })).status).toBe(403);
    expect((await post("/login/options", { email: ALICE })).status).toBe(400); // unknown field
    const ok = await post("/login/options", {});
    expect(ok.status).toBe(200);
    expect((await json(ok)).options).toMatchObject({ rpId: "localhost", userVerification: "required" });
  });

  it("a whole login with a passkey: the documented cookies, then a logout that needs token and Strict cookie", async () => {
    const key = softPasskey({ origin: idp.issuer, rpId: "localhost" });
    await withStore((s) => s.addPasskey(key.record(ALICE)));
    const { options } = await json(await post("/login/options", {}));
    const res = await post("/login/verify", { response: key.assert(options), return_to: "/account?x=1" });
    expect(res.status).toBe(200);
    expect(await json(res)).toEqual({ redirect: "/account?x=1" });
    const cookies = res.headers.getSetCookie();
    expect(cookies).toHaveLength(2);
    expect(cookies[0]).toMatch(
      /^__Host-apes-session=[A-Za-z0-9_-]{43}; Path=\/; Max-Age=43200; Secure; HttpOnly; SameSite=Lax$/,
    );
    expect(cookies[1]).toMatch(
      /^__Host-apes-same-site=[A-Za-z0-9_-]{43}; Path=\/; Max-Age=43200; Secure; HttpOnly; SameSite=Strict$/,
    );
    let jar = cookies.map((c) => c.split(";")[0]).join("; ");
    let sessionOnly = cookies[0]!.split(";")[0]!;
    const account = await fetch(`${idp.issuer}/account`, { headers: { cookie: jar } });
    expect(account.status).toBe(200);
    let page = await account.text();
    expect(page).toContain(ALICE);
    // Signing in again in the same browser replaces the session: the old one ends.
    const again = await post(
      "/login/verify",
      { response: key.assert((await json(await post("/login/options", {}))).options) },
      { cookie: jar },
    );
    expect(again.status).toBe(200);
    expect(
      (await fetch(`${idp.issuer}/account`, { headers: { cookie: jar }, redirect: "manual" })).status,
    ).toBe(303);
    jar = again.headers
      .getSetCookie()
      .map((c) => c.split(";")[0])
      .join("; ");
    sessionOnly = again.headers.getSetCookie()[0]!.split(";")[0]!;
    page = await (await fetch(`${idp.issuer}/account`, { headers: { cookie: jar } })).text();
    expect(page).toContain(ALICE);
    const csrf = /name="csrf_token" value="([^"]+)"/.exec(page)![1]!;
    const logout = (cookie: string, form: Record<string, string>, headers: Record<string, string> = {}) =>
      fetch(`${idp.issuer}/logout`, {
        method: "POST",
        headers: {
          cookie,
          "content-type": "application/x-www-form-urlencoded",
          origin: idp.issuer,
          "sec-fetch-site": "same-origin",
          ...headers,
        },
        body: new URLSearchParams(form).toString(),
        redirect: "manual",
      });
    expect((await logout(jar, {})).status).toBe(403);
    expect((await logout(sessionOnly, { csrf_token: csrf })).status).toBe(403);
    expect((await logout(jar, { csrf_token: csrf }, { origin: "null" })).status).toBe(403);
    expect(
      (await fetch(`${idp.issuer}/account`, { headers: { cookie: jar }, redirect: "manual" })).status,
    ).toBe(200);
    const out = await logout(jar, { csrf_token: csrf });
    expect(out.status).toBe(303);
    expect(out.headers.get("location")).toBe("/login");
    expect(out.headers.getSetCookie().every((c) => /Max-Age=0/.test(c))).toBe(true);
    expect(
      (await fetch(`${idp.issuer}/account`, { headers: { cookie: jar }, redirect: "manual" })).status,
    ).toBe(303);
  });

  it("login_hint and return_to are shown escaped, never as markup", async () => {
    const hint = `"><script>alert(1)</script>`;
    const page = await (
      await fetch(
        `${idp.issuer}/login?login_hint=${encodeURIComponent(hint)}&return_to=${encodeURIComponent('/x"><b>')}`,
      )
    ).text();
    expect(page).toContain('value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"');
    expect(page).toContain('data-return-to="/x%22%3E%3Cb%3E"');
    expect(page).not.toContain("<script>alert");
  });

  it("a session survives a restart of the server; an ended one stays ended", async () => {
    const key = softPasskey({ origin: idp.issuer, rpId: "localhost" });
    await withStore((s) => s.addPasskey(key.record("carol-restart@example.com")));
    expect(
      (await runApes(["idp", "users", "add", "carol-restart@example.com", "--human", "--data", idp.dataDir]))
        .code,
    ).toBe(0);
    const login = async () => {
      const { options } = await json(await post("/login/options", {}));
      const res = await post("/login/verify", { response: key.assert(options) });
      expect(res.status).toBe(200);
      return res.headers
        .getSetCookie()
        .map((c) => c.split(";")[0])
        .join("; ");
    };
    const kept = await login();
    const ended = await login(); // a second browser, signed out below
    const account = (cookie: string) =>
      fetch(`${idp.issuer}/account`, { headers: { cookie }, redirect: "manual" });
    const page = await (await account(ended)).text();
    const csrf = /name="csrf_token" value="([^"]+)"/.exec(page)![1]!;
    const out = await fetch(`${idp.issuer}/logout`, {
      method: "POST",
      headers: {
        cookie: ended,
        "content-type": "application/x-www-form-urlencoded",
        origin: idp.issuer,
        "sec-fetch-site": "same-origin",
      },
      body: new URLSearchParams({ csrf_token: csrf }).toString(),
      redirect: "manual",
    });
    expect(out.status).toBe(303);
    await idp.restart();
    expect((await account(kept)).status).toBe(200);
    expect((await account(ended)).status).toBe(303);
  });

  it("every failed login gets the same answer, whatever the reason", async () => {
    const bodies: unknown[] = [];
    const strip = (b: Record<string, unknown>) => ({ ...b, instance: undefined });
    for (const response of [
      "garbage",
      { id: "abc", rawId: "abc", type: "public-key", response: {} },
      softPasskey({ origin: idp.issuer, rpId: "localhost" }).assert(
        (await json(await post("/login/options", {}))).options,
      ),
    ]) {
      const res = await post("/login/verify", { response });
      expect(res.status).toBe(401);
      bodies.push(strip(await json(res)));
    }
    expect(bodies[0]).toMatchObject({ detail: "sign-in failed" });
    expect(bodies[1]).toEqual(bodies[0]);
    expect(bodies[2]).toEqual(bodies[0]);
  });

  it("unknown, malformed, expired invites and invites of a disabled user get the same answer", async () => {
    const now = Math.floor(Date.now() / 1000);
    const expired = newInvite(ALICE, now - 7200, 3600);
    const ofAgent = newInvite("bot@example.com", now, 3600);
    const live = newInvite(ALICE, now, 3600);
    await withStore(async (s) => {
      await s.addInvite(expired.record);
      await s.addInvite(ofAgent.record);
      await s.addInvite(live.record);
    });
    const answers: unknown[] = [];
    for (const invite of ["A".repeat(43), "short", 42, expired.secret, ofAgent.secret]) {
      const res = await post("/invite/options", { invite });
      expect(res.status).toBe(400);
      answers.push({ ...(await json(res)), instance: undefined });
    }
    expect(answers[0]).toMatchObject({
      detail: expect.stringMatching(/not valid: it may have expired or been used/),
    });
    for (const a of answers) expect(a).toEqual(answers[0]);
    const ok = await post("/invite/options", { invite: live.secret });
    expect(ok.status).toBe(200);
    const { email, options } = await json(ok);
    expect(email).toBe(ALICE);
    expect(options).toMatchObject({
      rp: { id: "localhost" },
      user: { name: ALICE },
      authenticatorSelection: { residentKey: "required", userVerification: "required" },
    });
    // The passkey already registered is excluded (one authenticator, one passkey per account).
    expect(options.excludeCredentials.length).toBeGreaterThan(0);
    // A registration that does not verify does not spend the invite.
    expect(
      (await post("/invite/verify", { invite: live.secret, response: { type: "public-key" } })).status,
    ).toBe(400);
    expect((await post("/invite/options", { invite: live.secret })).status).toBe(200);
    // A disabled user's invite is dead too.
    expect((await runApes(["idp", "users", "disable", ALICE, "--data", idp.dataDir])).code).toBe(0);
    const disabled = await post("/invite/options", { invite: live.secret });
    expect({ ...(await json(disabled)), instance: undefined }).toEqual(answers[0]);
  });

  it("the login and invite calls are rate limited per client", async () => {
    const limited = await startWebIdp({ extraArgs: ["--login-rate-limit", "4/1m"] });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 6; i++) {
        const path = i % 2 ? "/invite/options" : "/login/options";
        const res = await fetch(`${limited.issuer}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json", origin: limited.issuer },
          body: JSON.stringify(i % 2 ? { invite: "A".repeat(43) } : {}),
        });
        statuses.push(res.status);
        if (res.status === 429) expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0);
      }
      expect(statuses).toEqual([200, 400, 200, 400, 429, 429]);
      // Pages themselves are not in that class.
      expect((await fetch(`${limited.issuer}/login`)).status).toBe(200);
    } finally {
      await limited.stop();
    }
  });
});

describe("an issuer passkeys cannot work with", () => {
  it("an IP-address issuer turns the pages off, saying why", async () => {
    const ip = await startIdp();
    try {
      const page = await fetch(`${ip.url}/login`);
      expect(page.status).toBe(200);
      expect(await page.text()).toMatch(
        /Passkeys unavailable.*is an IP address, and passkeys need a host name/s,
      );
      const call = await fetch(`${ip.url}/login/options`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: ip.url },
        body: "{}",
      });
      expect(call.status).toBe(503);
      expect(ip.logs()).toContain('"msg":"passkey pages off"');
      // The listening line is still the first one.
      expect(JSON.parse(ip.logs().split("\n")[0]!).msg).toBe("listening");
    } finally {
      await ip.stop();
    }
  });
});

describe("the invite commands", () => {
  it("check the user, the TTL and the issuer", async () => {
    const data = ["--data", idp.dataDir];
    const bad = async (args: string[], code: number, text: RegExp) => {
      const r = await runApes([...args, ...data]);
      expect(r.code, r.stderr).toBe(code);
      expect(r.stderr).toMatch(text);
      expect(r.stdout).toBe("");
    };
    await bad(["idp", "users", "invite", "nobody@example.com"], 1, /no user nobody@example.com/);
    await bad(["idp", "users", "invite", "bot@example.com"], 1, /is an agent/);
    await bad(["idp", "users", "invite", ALICE, "--ttl", "31d"], 2, /invalid --ttl/);
    await bad(["idp", "users", "invite", ALICE, "--ttl", "10s"], 2, /invalid --ttl/);
    await bad(["idp", "users", "invite", ALICE, "--issuer", "ftp://x"], 2, /--issuer must be http/);
    await bad(
      ["idp", "users", "add", "x@example.com", "--agent", "--owner", ALICE, "--invite"],
      2,
      /--invite is for humans/,
    );
    await bad(["idp", "users", "add", "y@example.com", "--human", "--ttl", "1h"], 2, /go with --invite/);
    const r = await runApes([
      "--json",
      "idp",
      "users",
      "add",
      "carol@example.com",
      "--human",
      "--invite",
      "--ttl",
      "2h",
      ...data,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.invite_url).toMatch(new RegExp(`^${idp.issuer}/invite#[A-Za-z0-9_-]{43}$`));
    expect(out.invite_expires_at - Math.floor(Date.now() / 1000)).toBeGreaterThan(7000);
    const secret = out.invite_url.split("#")[1];
    expect((await post("/invite/options", { invite: secret })).status).toBe(200);
  });
});
