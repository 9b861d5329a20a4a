/**
 * DDISA login for a web service, all real: dnsmasq serves the `_ddisa` TXT records on loopback, the
 * real `dist/apes idp serve` is the IdP (issuer http://localhost:PORT, passkeys through a virtual
 * authenticator in Debian's chromium), and examples/sp/server.ts runs as its own Node process with
 * the SP module (sp/login.ts). A person types an email at the service, is sent to the IdP the domain
 * names, signs in with a passkey, consents, and is greeted back at the service; replays, a domain
 * with mode=deny and one that allows only the service's admins are refused. Screenshots of the SP's
 * pages at laptop and phone width (test-output/screenshots/sp-*).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { humanWithPasskey, launchBrowser, newPage, screenshot, startWebIdp } from "../helpers/browser.ts";
import { type Dnsmasq, startDnsmasq } from "../helpers/dnsmasq.ts";
import { type IdpHandle, runApes } from "../helpers/idp.ts";
import { startTroop, TROOP_AUDIENCE, type TroopHandle } from "../helpers/troop.ts";

const SERVER = join(import.meta.dirname, "..", "..", "examples", "sp", "server.ts");
const ALICE = "alice@example.com";
let idp: IdpHandle;
let dns: Dnsmasq;
let browser: Browser;
let page: Page;
let sp: ChildProcess;
let spUrl: string;
let spLog = "";
let troop: TroopHandle | undefined;
const seen: string[] = [];

async function startSp(env: Record<string, string>): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [SERVER], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", PORT: "0", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the SP did not start:\n${spLog}`)), 20_000);
    child.stderr!.on("data", (c) => {
      spLog += c;
      const m = /"msg":"listening","url":"([^"]+)"/.exec(spLog);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once("exit", (code) => reject(new Error(`the SP exited (${code}):\n${spLog}`)));
  });
  return { child, url };
}

beforeAll(async () => {
  idp = await startWebIdp();
  dns = await startDnsmasq(
    [
      ["_ddisa.example.com", `v=ddisa1 idp=${idp.issuer}; mode=open`],
      ["_ddisa.deny.example", `v=ddisa1 idp=${idp.issuer}; mode=deny`],
      ["_ddisa.listed.example", `v=ddisa1 idp=${idp.issuer}; mode=allowlist-admin`],
    ],
    ["example", "com"],
  );
  ({ child: sp, url: spUrl } = await startSp({
    SP_CLIENT_ID: "hello",
    SP_DNS_SERVERS: dns.server,
    SP_ALLOW_LOOPBACK_HTTP: "1",
    SP_COOKIE: "hello",
    SP_ADMINS: "root@listed.example",
  }));
  const add = await runApes([
    "idp",
    "clients",
    "add",
    "hello",
    "--redirect-uri",
    `${spUrl}/auth/callback`,
    "--data",
    idp.dataDir,
  ]);
  if (add.code !== 0) throw new Error(`clients add: ${add.stderr}`);
  browser = await launchBrowser();
  ({ page } = await humanWithPasskey(browser, idp, ALICE));
  page.on("request", (r) => {
    seen.push(r.url());
  });
}, 90_000);

afterAll(async () => {
  await troop?.stop();
  sp?.kill("SIGTERM");
  await browser?.close();
  await idp?.stop();
  await dns?.stop();
});

describe("DDISA login at the example service", () => {
  it("email -> the domain's IdP -> passkey -> consent -> back: hello alice@example.com, act human", async () => {
    // Signed out at the IdP, so the passkey is really used on the way.
    await page.goto(`${idp.issuer}/account`);
    await page.click("text=Sign out");
    await page.waitForURL(`${idp.issuer}/login`);

    await page.goto(`${spUrl}/`);
    await page.waitForURL(`${spUrl}/auth/login`);
    await screenshot(page, "sp-login");
    await page.fill("#email", ALICE);
    await page.click("button[type=submit]");
    // The continue page moves on to the IdP's login (the authorize request waits behind it).
    await page.waitForURL(/\/login\?/);
    expect(new URL(page.url()).origin).toBe(idp.issuer);
    expect(await page.inputValue("#email")).toBe(ALICE);
    await page.click("#login-form button");
    await page.waitForSelector("button[value=allow]");
    await page.click("button[value=allow]");
    await page.waitForURL(`${spUrl}/`);
    expect(await page.textContent("#hello")).toBe(`hello ${ALICE}, act human`);
    await screenshot(page, "sp-hello");

    const authorize = seen.find((u) => u.startsWith(`${idp.issuer}/authorize?`));
    expect(authorize).toBeDefined();
    const q = new URL(authorize!).searchParams;
    expect(q.get("client_id")).toBe("hello");
    expect(q.get("redirect_uri")).toBe(`${spUrl}/auth/callback`);
    expect(q.get("code_challenge_method")).toBe("S256");
    expect(q.get("state")).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(q.get("nonce")).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(q.get("code_verifier")).toBeNull();
    // No token in any URL the browser loaded (the one-time code is not a JWT).
    expect(seen.filter((u) => /eyJ[\w-]+\.eyJ/.test(u))).toEqual([]);
    const cookie = (await page.context().cookies(spUrl)).find((c) => c.name === "__Host-hello");
    expect(cookie).toMatchObject({ httpOnly: true, secure: true, sameSite: "Lax", path: "/" });
    expect(spLog).not.toMatch(/eyJ[\w-]+\.eyJ/);
  }, 90_000);

  it("the callback replayed (same browser, then another one) is refused; the session stays", async () => {
    const callback = seen.find((u) => u.startsWith(`${spUrl}/auth/callback?`));
    expect(callback).toBeDefined();
    const again = await page.goto(callback!);
    expect(again!.status()).toBe(400);
    expect(await page.textContent("h1")).toBe("Sign-in expired");
    await screenshot(page, "sp-replayed");
    await page.goto(`${spUrl}/`);
    expect(await page.textContent("#hello")).toBe(`hello ${ALICE}, act human`);

    const other = await newPage(browser);
    const r = await other.page.goto(callback!);
    expect(r!.status()).toBe(400);
    await other.page.goto(`${spUrl}/`);
    await other.page.waitForURL(`${spUrl}/auth/login`);
    await other.context.close();
  }, 60_000);

  it("a state that is not this browser's sign-in is refused, and the sign-in it hit is spent", async () => {
    const other = await newPage(browser);
    // Start a sign-in in this browser (its transaction cookie is set), but never go to the IdP.
    const started = await other.context.request.post(`${spUrl}/auth/login`, {
      form: { email: ALICE },
      headers: { origin: spUrl },
    });
    expect(started.status()).toBe(200);
    const text = await started.text();
    expect(text).toContain("Continue at your identity provider");
    const state = /state=([A-Za-z0-9_-]{43})/.exec(text)![1]!;
    const forged = await other.page.goto(`${spUrl}/auth/callback?code=abc&state=${"x".repeat(43)}`);
    expect(forged!.status()).toBe(400);
    expect(await other.page.textContent(".error")).toContain("does not belong to the sign-in started here");
    // The real state now finds nothing: a transaction is spent by the first answer, good or bad.
    const late = await other.page.goto(`${spUrl}/auth/callback?code=abc&state=${state}`);
    expect(late!.status()).toBe(400);
    expect(await other.page.textContent("h1")).toBe("Sign-in expired");
    await other.context.close();
  }, 60_000);

  it("the continue page names the IdP the domain's record chose, and links to its /authorize", async () => {
    const other = await newPage(browser);
    await other.page.goto(`${spUrl}/auth/login`);
    const answer = await other.context.request.post(`${spUrl}/auth/login`, {
      form: { email: ALICE },
      headers: { origin: spUrl },
    });
    const text = await answer.text();
    expect(text).toContain(`<meta http-equiv="refresh" content="0; url=${idp.issuer}/authorize?`);
    // Shown without its refresh, on the SP's origin (so its stylesheet loads), for the screenshot.
    await other.page.setContent(text.replace(/<meta http-equiv="refresh"[^>]*>/, ""));
    expect(await other.page.textContent(".lead")).toContain(idp.issuer);
    const link = await other.page.getAttribute("a.button", "href");
    expect(new URL(link!).origin + new URL(link!).pathname).toBe(`${idp.issuer}/authorize`);
    await screenshot(other.page, "sp-continue");
    await other.context.close();
  }, 60_000);

  it("a domain whose record says mode=deny is refused before the IdP is asked", async () => {
    const other = await newPage(browser);
    const urls: string[] = [];
    other.page.on("request", (r) => {
      urls.push(r.url());
    });
    await other.page.goto(`${spUrl}/auth/login`);
    await other.page.fill("#email", "dora@deny.example");
    await other.page.click("button[type=submit]");
    await other.page.waitForSelector(".error");
    expect(await other.page.textContent(".error")).toContain("mode=deny");
    expect(urls.some((u) => u.startsWith(idp.issuer))).toBe(false);
    await screenshot(other.page, "sp-refused");
    await other.context.close();
  }, 60_000);

  it("mode=allowlist-admin: someone not on the service's admin list is refused", async () => {
    const other = await newPage(browser);
    await other.page.goto(`${spUrl}/auth/login`);
    await other.page.fill("#email", "bob@listed.example");
    await other.page.click("button[type=submit]");
    await other.page.waitForSelector(".error");
    expect(await other.page.textContent(".error")).toContain("not on this service's list");
    await other.context.close();
  }, 60_000);

  it("signed in, the sign-in page goes on to the service", async () => {
    await page.goto(`${spUrl}/auth/login`);
    await page.waitForURL(`${spUrl}/`);
    expect(await page.textContent("#hello")).toBe(`hello ${ALICE}, act human`);
  }, 60_000);

  it("sign out ends the SP's session", async () => {
    await page.goto(`${spUrl}/`);
    await page.click("text=Sign out");
    await page.waitForURL(`${spUrl}/auth/login`);
    await page.goto(`${spUrl}/`);
    await page.waitForURL(`${spUrl}/auth/login`);
  }, 60_000);
});

describe("the troop's status page behind DDISA login (apes troop serve --web-login)", () => {
  it("a browser without a session is sent to sign in, comes back to /status; the cookie opens no API", async () => {
    troop = await startTroop(idp.issuer, {
      extraArgs: ["--web-login"],
      env: { APES_DNS_SERVERS: dns.server, APES_ALLOW_LOOPBACK_HTTP: "1" },
    });
    const add = await runApes([
      "idp",
      "clients",
      "add",
      TROOP_AUDIENCE,
      "--redirect-uri",
      `${troop.url}/auth/callback`,
      "--data",
      idp.dataDir,
    ]);
    expect(add.code, add.stderr).toBe(0);
    // A browser is sent to sign in; a script with a bearer token gets the API answer (here: 401).
    expect((await fetch(`${troop.url}/status`, { redirect: "manual" })).status).toBe(303);
    expect((await fetch(`${troop.url}/status`, { headers: { authorization: "Bearer x.y.z" } })).status).toBe(
      401,
    );

    await page.goto(`${troop.url}/status`);
    await page.waitForURL(`${troop.url}/auth/login`);
    await page.fill("#email", ALICE);
    await page.click("button[type=submit]");
    // Still signed in at the IdP: straight to the consent step.
    await page.waitForSelector("button[value=allow]");
    await page.click("button[value=allow]");
    await page.waitForURL(`${troop.url}/status`);
    expect(await page.textContent("body")).toContain(`Signed in as ${ALICE}`);
    await screenshot(page, "sp-troop-status");
    const api = await page.context().request.get(`${troop.url}/v1/nests`);
    expect(api.status()).toBe(401);
    await page.click("text=Sign out");
    await page.waitForURL(`${troop.url}/auth/login`);
  }, 90_000);
});
