/**
 * The human's browser side of the IdP in a real chromium against the real `dist/apes idp serve`:
 * invite -> passkey registration -> account page -> sign out -> passkey login (conditional UI,
 * login_hint) -> a second passkey through a second invite -> removing one -> the removed one no
 * longer signs in; reused and expired invites, a cloned authenticator's counter regression,
 * cross-site and token-less state changes are refused; a disabled user's session ends. Each
 * person is a browser context with its own CDP virtual authenticator (test/helpers/browser.ts).
 */
import { createServer, type Server } from "node:http";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import { newInvite } from "../../idp/web/invites.ts";
import { CONTENT_SECURITY_POLICY } from "../../server/web/headers.ts";
import {
  addVirtualAuthenticator,
  humanWithPasskey,
  launchBrowser,
  newPage,
  screenshot,
  startWebIdp,
  type VirtualAuthenticator,
} from "../helpers/browser.ts";
import { type IdpHandle, runApes } from "../helpers/idp.ts";

const ALICE = "alice@example.com";
let idp: IdpHandle;
let browser: Browser;
const cspViolations: string[] = [];

interface Person {
  context: BrowserContext;
  page: Page;
  auth: VirtualAuthenticator;
}

/** A person with a passkey device; their pages use the button, not autofill, unless `autofill`. */
async function person(autofill = false): Promise<Person> {
  const { context, page } = await newPage(browser, { conditionalUi: autofill });
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  return { context, page, auth: await addVirtualAuthenticator(page) };
}

/** The invite link an admin command printed (its last stdout line). */
async function inviteLink(args: string[]): Promise<string> {
  const r = await runApes([...args, "--data", idp.dataDir]);
  expect(r.code, r.stderr).toBe(0);
  const link = r.stdout.trim().split("\n").pop()!;
  expect(link).toMatch(new RegExp(`^${idp.issuer}/invite#[A-Za-z0-9_-]{43}$`));
  return link;
}

async function register(p: Person, link: string, shot?: string): Promise<void> {
  await p.page.goto(link);
  await p.page.waitForSelector("body[data-ready=yes]");
  // The secret left the address bar at once (it stays out of history and of anything copied).
  expect(p.page.url()).toBe(`${idp.issuer}/invite`);
  if (shot) await screenshot(p.page, shot);
  await p.page.click("#register");
  await p.page.waitForURL(`${idp.issuer}/account`);
}

async function passkeyCount(page: Page): Promise<number> {
  return page.locator("li.passkey").count();
}

async function signInFails(p: Person): Promise<void> {
  await p.page.goto(`${idp.issuer}/login`);
  await p.page.click("#login-form button");
  await expect
    .poll(() => p.page.textContent("#status"))
    .toBe("Sign-in failed. Try again, or use another passkey.");
  expect(p.page.url()).toMatch(/\/login$/);
}

async function signIn(p: Person): Promise<void> {
  await p.page.goto(`${idp.issuer}/login`);
  await p.page.click("#login-form button");
  await p.page.waitForURL(`${idp.issuer}/account`);
}

beforeAll(async () => {
  idp = await startWebIdp();
  browser = await launchBrowser();
});
afterAll(async () => {
  await browser?.close();
  await idp?.stop();
});

describe("passkeys in the browser", () => {
  let a: Person;
  let b: Person;
  let firstLink: string;

  it("an invite link registers a passkey and signs the person in (cookies __Host-, Secure, HttpOnly, Lax/Strict)", async () => {
    firstLink = await inviteLink(["idp", "users", "add", ALICE, "--human", "--invite"]);
    a = await person();
    await register(a, firstLink, "register");
    expect(await a.page.textContent(".lead")).toContain(ALICE);
    expect(await passkeyCount(a.page)).toBe(1);
    await screenshot(a.page, "account");
    const cookies = Object.fromEntries((await a.context.cookies()).map((c) => [c.name, c]));
    expect(cookies["__Host-apes-session"]).toMatchObject({
      path: "/",
      secure: true,
      httpOnly: true,
      sameSite: "Lax",
    });
    expect(cookies["__Host-apes-same-site"]).toMatchObject({
      path: "/",
      secure: true,
      httpOnly: true,
      sameSite: "Strict",
    });
    expect(cookies["__Host-apes-session"]!.domain).toBe("localhost"); // host-only: no Domain attribute
    expect(idp.logs()).toContain('"msg":"passkey registered"');
    // The invite secret reached no log line (it travels in the fragment and the JSON body only).
    expect(idp.logs()).not.toContain(firstLink.split("#")[1]);
  });

  it("every page carries the CSP without inline script or style, and no-store", async () => {
    for (const [path, signedIn] of [
      ["/login", false],
      ["/invite", false],
      ["/account", true],
    ] as const) {
      const res = await (signedIn ? a.page.request : (await browser.newContext()).request).get(
        `${idp.issuer}${path}`,
        { maxRedirects: 0 },
      );
      expect(res.status(), path).toBe(200);
      const h = res.headers();
      expect(h["referrer-policy"]).toBe("same-origin");
      expect(h["content-security-policy"]).toBe(CONTENT_SECURITY_POLICY);
      expect(h["content-security-policy"]).toContain("frame-ancestors 'none'");
      expect(h["cache-control"]).toBe("no-store");
      expect(h["x-frame-options"]).toBe("DENY");
      const body = await res.text();
      expect(body).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
      expect(body).not.toMatch(/\sstyle=|<style/);
      expect(body).not.toMatch(/\son[a-z]+=/);
    }
    // The browser bundle is served by the IdP itself.
    const lib = await a.page.request.get(`${idp.issuer}/assets/simplewebauthn-browser.js`);
    expect(lib.status()).toBe(200);
    expect(await lib.text()).toContain("SimpleWebAuthnBrowser");
  });

  it("a used invite link and an expired one are refused with the same words", async () => {
    const c = await person();
    await c.page.goto(firstLink);
    await expect
      .poll(() => c.page.textContent("#invite-for"))
      .toMatch(/not valid: it may have expired or been used/);
    expect(await c.page.isHidden("#register")).toBe(true);
    await screenshot(c.page, "invite-invalid");
    // An expired one, written as the admin command would with a TTL long past.
    const store = openSqliteStore(idp.dataDir);
    const now = Math.floor(Date.now() / 1000);
    const old = newInvite(ALICE, now - 7200, 3600);
    await store.addInvite(old.record);
    await store.close();
    await c.page.goto(`${idp.issuer}/invite#${old.secret}`);
    await expect
      .poll(() => c.page.textContent("#invite-for"))
      .toMatch(/not valid: it may have expired or been used/);
    await c.context.close();
  });

  it("sign out ends the session: the old cookie no longer opens the account", async () => {
    const old = (await a.context.cookies()).find((c) => c.name === "__Host-apes-session")!.value;
    await a.page.click("text=Sign out");
    await a.page.waitForURL(`${idp.issuer}/login`);
    expect((await a.context.cookies()).map((c) => c.name)).toEqual([]);
    const res = await fetch(`${idp.issuer}/account`, {
      headers: { cookie: `__Host-apes-session=${old}` },
      redirect: "manual",
    });
    expect(res.status).toBe(303);
    expect(res.headers.get("location")).toBe("/login?return_to=%2Faccount");
  });

  it("the login page prefills login_hint and signs in with the passkey button", async () => {
    await a.page.goto(`${idp.issuer}/login?login_hint=${encodeURIComponent(ALICE)}&return_to=/account`);
    expect(await a.page.inputValue("#email")).toBe(ALICE);
    // The field that offers passkeys in its autofill suggestions (conditional UI).
    expect(await a.page.getAttribute("#email", "autocomplete")).toBe("username webauthn");
    await screenshot(a.page, "login");
    await a.page.click("#login-form button");
    await a.page.waitForURL(`${idp.issuer}/account`);
    expect(idp.logs()).toMatch(/"msg":"login".*"method":"webauthn"/);
  });

  it("the login page offers passkey autofill (conditional UI): picking the passkey signs in", async () => {
    const auto = await person(true);
    // The same passkey on a second browser profile: a copy of a's credential.
    const [cred] = await a.auth.credentials();
    await auto.auth.cdp.send("WebAuthn.addCredential", {
      authenticatorId: auto.auth.authenticatorId,
      credential: { ...cred!, signCount: cred!.signCount + 100 },
    });
    await auto.page.goto(`${idp.issuer}/login?return_to=${encodeURIComponent("/account?from=autofill")}`);
    // No click: the page starts a conditional request at load, which the authenticator answers
    // (as a person picking the passkey from the suggestions would).
    await auto.page.waitForURL(`${idp.issuer}/account?from=autofill`);
    expect(await auto.page.textContent(".lead")).toContain(ALICE);
    await auto.context.close();
  });

  it("return_to goes only to a path of the IdP (no open redirect)", async () => {
    for (const evil of [
      "//evil.example/x",
      "https://evil.example/",
      "/\\evil.example",
      "javascript:alert(1)",
    ]) {
      await a.page.goto(`${idp.issuer}/login?return_to=${encodeURIComponent(evil)}`);
      // Already signed in: sent on at once, to the default.
      expect(a.page.url(), evil).toBe(`${idp.issuer}/account`);
    }
    const c = await person();
    await c.page.goto(`${idp.issuer}/login?return_to=${encodeURIComponent("//evil.example/x")}`);
    expect(await c.page.getAttribute("#login-form", "data-return-to")).toBe("/account");
    await c.page.goto(`${idp.issuer}/login?return_to=${encodeURIComponent("/account?x=1")}`);
    expect(await c.page.getAttribute("#login-form", "data-return-to")).toBe("/account?x=1");
    await c.context.close();
  });

  it("`apes idp users invite` adds a second passkey on another device", async () => {
    const link = await inviteLink(["idp", "users", "invite", ALICE, "--ttl", "10m"]);
    b = await person();
    await register(b, link);
    expect(await passkeyCount(b.page)).toBe(2);
    await screenshot(b.page, "account-two-passkeys");
    const list = await runApes(["--json", "idp", "users", "list", "--data", idp.dataDir]);
    expect(JSON.parse(list.stdout)).toEqual([expect.objectContaining({ email: ALICE, passkeys: 2 })]);
  });

  it("a state change without the CSRF token, from another origin, or without the Strict cookie is refused", async () => {
    await b.page.goto(`${idp.issuer}/account`);
    const csrf = (await b.page.getAttribute("input[name=csrf_token]", "value"))!;
    const target = (await b.page.getAttribute("li.passkey:first-child input[name=credential_id]", "value"))!;
    const url = `${idp.issuer}/account/passkeys/remove`;
    const same = { origin: idp.issuer, "sec-fetch-site": "same-origin" };
    const noToken = await b.page.request.post(url, { form: { credential_id: target }, headers: same });
    expect(noToken.status()).toBe(403);
    const wrongToken = await b.page.request.post(url, {
      form: { credential_id: target, csrf_token: "A".repeat(43) },
      headers: same,
    });
    expect(wrongToken.status()).toBe(403);
    const crossSite = await b.page.request.post(url, {
      form: { credential_id: target, csrf_token: csrf },
      headers: { origin: "http://evil.example", "sec-fetch-site": "cross-site" },
    });
    expect(crossSite.status()).toBe(403);
    const session = (await b.context.cookies()).find((c) => c.name === "__Host-apes-session")!.value;
    const noStrictCookie = await fetch(url, {
      method: "POST",
      headers: {
        ...same,
        cookie: `__Host-apes-session=${session}`,
        "content-type": "application/x-www-form-urlencoded",
      },
      body: new URLSearchParams({ credential_id: target, csrf_token: csrf }).toString(),
      redirect: "manual",
    });
    expect(noStrictCookie.status).toBe(403);
    // A real cross-site page (another origin) posting the form, even with a leaked token.
    const evil = await attackerSite(url, { credential_id: target, csrf_token: csrf });
    try {
      const answer = b.page.waitForResponse((r) => r.url() === url);
      await b.page.goto(evil.url);
      expect((await answer).status()).toBeGreaterThanOrEqual(400);
    } finally {
      evil.server.close();
    }
    await b.page.goto(`${idp.issuer}/account`);
    expect(await passkeyCount(b.page)).toBe(2);
  });

  it("another person (humanWithPasskey) sees only their own passkeys and cannot remove anyone else's", async () => {
    const bob = await humanWithPasskey(browser, idp, "bob@example.com");
    expect(await bob.page.textContent(".lead")).toContain("bob@example.com");
    expect(await passkeyCount(bob.page)).toBe(1);
    const alices = await b.page
      .locator("input[name=credential_id]")
      .evaluateAll((els) => els.map((e) => (e as unknown as { value: string }).value));
    const csrf = (await bob.page.getAttribute("input[name=csrf_token]", "value"))!;
    const res = await bob.page.request.post(`${idp.issuer}/account/passkeys/remove`, {
      form: { credential_id: alices[0]!, csrf_token: csrf },
      headers: { origin: idp.issuer, "sec-fetch-site": "same-origin" },
      maxRedirects: 0,
    });
    expect(res.status()).toBe(404);
    expect(await res.text()).toContain("no such passkey");
    await b.page.reload();
    expect(await passkeyCount(b.page)).toBe(2);
    await bob.context.close();
  });

  it("removing a passkey: the removed one no longer signs in, with the generic error", async () => {
    const mine = (await b.auth.credentials())[0]!.credentialId;
    const ids = await b.page
      .locator("input[name=credential_id]")
      .evaluateAll((els) => els.map((e) => (e as unknown as { value: string }).value));
    const other = ids.find((id) => id !== base64url(mine))!;
    expect(other).toBeDefined();
    await b.page.click(`li.passkey:has(input[value="${other}"]) button`);
    await b.page.waitForURL(`${idp.issuer}/account`);
    expect(await passkeyCount(b.page)).toBe(1);
    expect(await b.page.textContent("li.passkey")).toContain("your only passkey");
    await a.page.click("text=Sign out");
    await a.page.waitForURL(`${idp.issuer}/login`);
    await signInFails(a);
    await screenshot(a.page, "login-failed");
    expect(idp.logs()).toContain('"reason":"unknown credential"');
  });

  it("a cloned authenticator (sign counter not increasing) is refused and logged", async () => {
    await b.page.click("text=Sign out");
    await signIn(b);
    const [cred] = await b.auth.credentials();
    expect(cred!.signCount).toBeGreaterThan(0);
    const put = async (signCount: number) => {
      await b.auth.cdp.send("WebAuthn.removeCredential", {
        authenticatorId: b.auth.authenticatorId,
        credentialId: cred!.credentialId,
      });
      await b.auth.cdp.send("WebAuthn.addCredential", {
        authenticatorId: b.auth.authenticatorId,
        credential: { ...cred!, signCount },
      });
    };
    await b.page.click("text=Sign out");
    // The copy signs with the count the IdP has already seen.
    await put(cred!.signCount - 1);
    await signInFails(b);
    expect(idp.logs()).toMatch(/passkey counter regression.*"stored":\d+,"received":\d+/);
    // Ahead of the stored count the same key signs in again: the counter was the reason.
    await put(cred!.signCount + 10);
    await signIn(b);
  });

  it("`apes idp users disable` ends the user's sessions at once", async () => {
    const r = await runApes(["idp", "users", "disable", ALICE, "--data", idp.dataDir]);
    expect(r.code, r.stderr).toBe(0);
    await b.page.goto(`${idp.issuer}/account`);
    expect(b.page.url()).toBe(`${idp.issuer}/login?return_to=%2Faccount`);
    const store = openSqliteStore(idp.dataDir);
    try {
      expect(await store.endWebSessionsOf(ALICE)).toBe(0); // none left to end
    } finally {
      await store.close();
    }
    await signInFails(b);
  });

  it("no page caused a CSP violation", () => {
    expect(cspViolations).toEqual([]);
  });
});

function base64url(s: string): string {
  return Buffer.from(s, "base64").toString("base64url");
}

/** Another origin (127.0.0.1, not localhost) whose page posts a form to the IdP as soon as it loads. */
async function attackerSite(
  action: string,
  fields: Record<string, string>,
): Promise<{ server: Server; url: string }> {
  const inputs = Object.entries(fields)
    .map(([k, v]) => `<input type="hidden" name="${k}" value="${v}">`)
    .join("");
  const page = `<!doctype html><form id="f" method="post" action="${action}">${inputs}</form><script>document.getElementById("f").submit()</script>`;
  const server = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(page);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as { port: number };
  return { server, url: `http://127.0.0.1:${port}/` };
}
