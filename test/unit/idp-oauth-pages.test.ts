import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { s256 } from "../../idp/oauth/pkce.ts";
import { formOf, type OAuthApp, startOAuthApp } from "../helpers/oauth-app.ts";

/**
 * The /authorize and /device routes over an injected HumanSessions (a cookie naming the person, a
 * fixed CSRF token per session): what the pages do with a session, none, a wrong token, and the
 * code they issue, exchanged at the real token route.
 */

const ALICE = "alice@example.com";
const VERIFIER = "v".repeat(43);

let app: OAuthApp;
let base: string;
beforeAll(async () => {
  app = await startOAuthApp([ALICE]);
  base = app.base;
  await app.store.addClient({ id: "sp", redirectUris: ["https://sp.example.com/cb"], createdAt: 1 });
});
afterAll(async () => {
  await app.close();
});

const REDIRECT = "http://127.0.0.1:5555/callback";
const params = (over: Record<string, string> = {}) =>
  new URLSearchParams({
    response_type: "code",
    client_id: "apes-cli",
    redirect_uri: REDIRECT,
    state: "the-state",
    nonce: "the-nonce",
    code_challenge: s256(VERIFIER),
    code_challenge_method: "S256",
    ...over,
  });
const get = (path: string, who?: string) =>
  fetch(base + path, {
    redirect: "manual",
    headers: who ? { cookie: `who=${encodeURIComponent(who)}` } : {},
  });
const post = (path: string, form: URLSearchParams, who?: string) =>
  fetch(base + path, {
    method: "POST",
    redirect: "manual",
    body: form.toString(),
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      ...(who ? { cookie: `who=${encodeURIComponent(who)}` } : {}),
    },
  });
describe("GET/POST /authorize", () => {
  it("without a session: to the login page, return_to a relative path back to this request", async () => {
    const r = await get(`/authorize?${params({ login_hint: ALICE })}`);
    expect(r.status).toBe(303);
    const to = new URL(r.headers.get("location")!, base);
    expect(to.pathname).toBe("/login");
    const back = to.searchParams.get("return_to")!;
    expect(back.startsWith("/authorize?")).toBe(true);
    expect(new URLSearchParams(back.split("?")[1]).get("state")).toBe("the-state");
    expect(to.searchParams.get("login_hint")).toBe(ALICE);
  });

  it("an unchecked redirect URI is a page, never a redirect (with or without a session)", async () => {
    for (const who of [undefined, ALICE]) {
      const r = await get(`/authorize?${params({ redirect_uri: "https://evil.example/cb" })}`, who);
      expect(r.status).toBe(400);
      expect(r.headers.get("location")).toBeNull();
      expect(r.headers.get("content-type")).toContain("text/html");
      expect(r.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");
      expect(await r.text()).not.toContain("evil.example");
    }
  });

  it("a bad request with a checked redirect goes back with error and state", async () => {
    const r = await get(`/authorize?${params({ code_challenge_method: "plain" })}`, ALICE);
    expect(r.status).toBe(303);
    const to = new URL(r.headers.get("location")!);
    expect(to.origin + to.pathname).toBe(REDIRECT);
    expect(to.searchParams.get("error")).toBe("invalid_request");
    expect(to.searchParams.get("state")).toBe("the-state");
  });

  it("consent, then the code and state on the redirect; the code gives alice's tokens once", async () => {
    const page = await get(`/authorize?${params()}`, ALICE);
    expect(page.status).toBe(200);
    // The form's answer redirects to the client: form-action must allow exactly that origin too.
    expect(page.headers.get("content-security-policy")).toContain(
      "form-action 'self' http://127.0.0.1:5555;",
    );
    const text = await page.text();
    expect(text).toContain(`Continue as ${ALICE}?`);
    const form = formOf(text);
    expect(form.get("csrf_token")).toBe(`csrf-s-${ALICE}`);
    form.set("decision", "allow");
    const r = await post("/authorize", form, ALICE);
    expect(r.status).toBe(303);
    const to = new URL(r.headers.get("location")!);
    expect(to.origin + to.pathname).toBe(REDIRECT);
    expect(to.searchParams.get("state")).toBe("the-state");
    const code = to.searchParams.get("code")!;
    const exchange = () =>
      fetch(`${base}/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          grant_type: "authorization_code",
          code,
          code_verifier: VERIFIER,
          redirect_uri: REDIRECT,
          client_id: "apes-cli",
        }),
      });
    const t = await exchange();
    expect(t.status).toBe(200);
    const body = (await t.json()) as { id_token: string };
    const claims = JSON.parse(Buffer.from(body.id_token.split(".")[1]!, "base64url").toString());
    expect(claims).toMatchObject({ sub: ALICE, aud: "apes-cli", nonce: "the-nonce", act: "human" });
    expect((await exchange()).status).toBe(400);
  });

  it("cancel sends access_denied back; no session, a wrong CSRF token or tampered fields give no code", async () => {
    const form = formOf(await (await get(`/authorize?${params()}`, ALICE)).text());
    form.set("decision", "deny");
    const denied = new URL((await post("/authorize", form, ALICE)).headers.get("location")!);
    expect(denied.searchParams.get("error")).toBe("access_denied");
    expect(denied.searchParams.get("code")).toBeNull();
    form.set("decision", "allow");
    expect((await post("/authorize", form)).status).toBe(403);
    const wrong = new URLSearchParams(form);
    wrong.set("csrf_token", "csrf-s-mallory");
    expect((await post("/authorize", wrong, ALICE)).status).toBe(403);
    const tampered = new URLSearchParams(form);
    tampered.set("redirect_uri", "https://evil.example/cb");
    const r = await post("/authorize", tampered, ALICE);
    expect(r.status).toBe(400);
    expect(r.headers.get("location")).toBeNull();
  });

  it("a registered client: exactly its redirect URI, and the consent page names it", async () => {
    const p = params({ client_id: "sp", redirect_uri: "https://sp.example.com/cb" });
    const text = await (await get(`/authorize?${p}`, ALICE)).text();
    expect(text).toContain("<strong>sp</strong>");
    const loop = params({ client_id: "sp" });
    expect((await get(`/authorize?${loop}`, ALICE)).status).toBe(400);
  });
});

describe("GET/POST /device", () => {
  const start = async () => {
    const r = await fetch(`${base}/device_authorization`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "client_id=apes-cli",
    });
    return (await r.json()) as { device_code: string; user_code: string };
  };
  const poll = async (deviceCode: string) =>
    (await (
      await fetch(`${base}/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          grant_type: "urn:ietf:params:oauth:grant-type:device_code",
          device_code: deviceCode,
          client_id: "apes-cli",
        }),
      })
    ).json()) as Record<string, string>;

  it("without a session: to the login page, back to /device with the code", async () => {
    const r = await get("/device?user_code=bcdf-ghjk");
    const to = new URL(r.headers.get("location")!, base);
    expect(to.pathname).toBe("/login");
    expect(to.searchParams.get("return_to")).toBe("/device?user_code=BCDF-GHJK");
  });

  it("enter the code, confirm, approve: the polling device gets alice's tokens", async () => {
    const d = await start();
    const entry = await (await get(`/device?user_code=${d.user_code}`, ALICE)).text();
    expect(entry).toContain(`value="${d.user_code}"`);
    const form = formOf(entry);
    form.set("user_code", d.user_code.toLowerCase());
    form.set("decision", "check");
    const confirm = await post("/device", form, ALICE);
    expect(confirm.status).toBe(200);
    const confirmText = await confirm.text();
    expect(confirmText).toContain("apes command line");
    const approve = formOf(confirmText);
    approve.set("decision", "approve");
    expect((await post("/device", approve, ALICE)).status).toBe(200);
    const t = await poll(d.device_code);
    expect(t.access_token).toBeDefined();
    // Decided: the code no longer opens.
    expect((await post("/device", approve, ALICE)).status).toBe(400);
  });

  it("deny; a wrong or unknown code says the same thing; a bad CSRF token changes nothing", async () => {
    const d = await start();
    const form = formOf(await (await get("/device", ALICE)).text());
    form.set("user_code", "ZZZZ-ZZZZ");
    form.set("decision", "check");
    const unknown = await post("/device", form, ALICE);
    expect(unknown.status).toBe(400);
    expect(await unknown.text()).toContain("unknown, expired or already used");
    form.set("user_code", d.user_code);
    form.set("decision", "approve");
    const bad = new URLSearchParams(form);
    bad.set("csrf_token", "nope");
    expect((await post("/device", bad, ALICE)).status).toBe(403);
    expect((await poll(d.device_code)).error).toBe("authorization_pending");
    form.set("decision", "deny");
    expect((await post("/device", form, ALICE)).status).toBe(200);
    expect((await poll(d.device_code)).error).toBe("access_denied");
  });
});
