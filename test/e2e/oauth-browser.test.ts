/**
 * The OAuth flows in a real chromium against the real `dist/apes idp serve` and the real `dist/apes`:
 * `apes login --browser` (its $BROWSER is a script that hands the URL to this test, which plays the
 * browser: a person signed in with a passkey, or signed out and sent through the login page and
 * back), and `apes login --device` approved on the /device page. Screenshots of the consent and
 * device pages at laptop and phone width (test/helpers/browser.ts).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { humanWithPasskey, launchBrowser, screenshot, startWebIdp } from "../helpers/browser.ts";
import { apesBin, type IdpHandle } from "../helpers/idp.ts";
import { type CliUser, cliUser, jwtClaims } from "../integration/cli-helpers.ts";

const ALICE = "alice@example.com";
let idp: IdpHandle;
let browser: Browser;
let page: Page;
let alice: CliUser;
let urlFile: string;

/** Runs dist/apes as alice in the background; resolves with its exit and output. */
function apes(args: string[], onStderr?: (text: string, p: ChildProcess) => void) {
  const p = spawn(apesBin(), args, { env: { ...alice.env, BROWSER: join(alice.home, "browser.sh") } });
  let stdout = "";
  let stderr = "";
  p.stdout!.on("data", (d) => {
    stdout += d;
  });
  p.stderr!.on("data", (d) => {
    stderr += d;
    onStderr?.(stderr, p);
  });
  return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
    p.on("exit", (code) => resolve({ code: code ?? 1, stdout, stderr })),
  );
}

/** The URL the CLI handed to $BROWSER (the script appends each one to a file). */
async function openedUrl(count: number): Promise<string> {
  await expect
    .poll(() => (existsSync(urlFile) ? readFileSync(urlFile, "utf8").trim().split("\n").length : 0), {
      timeout: 15_000,
    })
    .toBe(count);
  return readFileSync(urlFile, "utf8").trim().split("\n")[count - 1]!;
}

beforeAll(async () => {
  idp = await startWebIdp();
  browser = await launchBrowser();
  ({ page } = await humanWithPasskey(browser, idp, ALICE));
  alice = cliUser(ALICE, idp.issuer);
  urlFile = join(alice.home, "opened-urls");
  const script = join(alice.home, "browser.sh");
  writeFileSync(script, `#!/bin/sh\nprintf '%s\\n' "$1" >> '${urlFile}'\n`);
  chmodSync(script, 0o755);
}, 60_000);
afterAll(async () => {
  await browser?.close();
  await idp?.stop();
});

describe("apes login in the browser", () => {
  it("signed in with a passkey: consent, Continue, and the CLI has alice's session", async () => {
    const run = apes(["--json", "login", "--browser", ALICE]);
    const url = await openedUrl(1);
    expect(new URL(url).origin).toBe(idp.issuer);
    expect(url).not.toContain("code_verifier");
    await page.goto(url);
    await page.waitForSelector("button[value=allow]");
    expect(await page.textContent("h1")).toContain(ALICE);
    await screenshot(page, "consent");
    await page.click("button[value=allow]");
    await page.waitForURL(/^http:\/\/127\.0\.0\.1:\d+\/callback\?/);
    expect(await page.textContent("body")).toContain("You are logged in to apes");
    const r = await run;
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ email: ALICE, act: "human", method: "browser" });
    const s = alice.authJson();
    expect(s).toMatchObject({ email: ALICE, act: "human", client_id: "apes-cli", method: "browser" });
    expect(jwtClaims(String(s.token))).toMatchObject({
      iss: idp.issuer,
      sub: ALICE,
      aud: "apes-cli",
      act: "human",
    });
    // The session works for the IdP's APIs.
    const list = await alice.run(["--json", "grants", "list"]);
    expect(list.code, list.stderr).toBe(0);
  }, 60_000);

  it("signed out: the login page first (passkey), then back to the consent step", async () => {
    await page.goto(`${idp.issuer}/account`);
    await page.click("text=Sign out");
    await page.waitForURL(`${idp.issuer}/login`);
    const run = apes(["login", "--browser", ALICE]);
    await page.goto(await openedUrl(2));
    await page.waitForURL(/\/login\?/);
    expect(await page.inputValue("#email")).toBe(ALICE);
    await page.click("#login-form button");
    await page.waitForSelector("button[value=allow]");
    await page.click("button[value=allow]");
    await page.waitForURL(/^http:\/\/127\.0\.0\.1:\d+\/callback\?/);
    const r = await run;
    expect(r.code, r.stderr).toBe(0);
  }, 60_000);

  it("Cancel on the consent page: the CLI says the login was refused (77) and stores nothing new", async () => {
    const before = alice.authJson();
    const run = apes(["login", "--browser", ALICE]);
    await page.goto(await openedUrl(3));
    await page.click("button[value=deny]");
    const r = await run;
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("access_denied");
    expect(alice.authJson()).toEqual(before);
  }, 60_000);

  it("an authorize URL with a foreign redirect_uri is a page at the IdP, never a redirect", async () => {
    const u = new URL(await openedUrl(3));
    u.searchParams.set("redirect_uri", "https://evil.example/callback");
    const res = await page.goto(u.toString());
    expect(res!.status()).toBe(400);
    expect(new URL(page.url()).origin).toBe(idp.issuer);
    await screenshot(page, "authorize-error");
  });
});

describe("apes login --device", () => {
  it("the code typed at /device, confirmed and approved: the CLI has alice's session", async () => {
    let code: string | undefined;
    const run = apes(["--json", "login", "--device", ALICE], (text) => {
      code ??= /enter the code\s+([A-Z]{4}-[A-Z]{4})/.exec(text)?.[1];
    });
    await expect.poll(() => code, { timeout: 15_000 }).toBeDefined();
    await page.goto(`${idp.issuer}/device`);
    await screenshot(page, "device");
    await page.fill("#user_code", code!.toLowerCase());
    await page.click("button[value=check]");
    await page.waitForSelector("button[value=approve]");
    await screenshot(page, "device-confirm");
    await page.click("button[value=approve]");
    await page.waitForSelector("text=Device signed in");
    const r = await run;
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ email: ALICE, method: "device" });
  }, 60_000);

  it("denied at /device: the CLI ends with 77", async () => {
    let code: string | undefined;
    const run = apes(["login", "--device", ALICE], (text) => {
      code ??= /enter the code\s+([A-Z]{4}-[A-Z]{4})/.exec(text)?.[1];
    });
    await expect.poll(() => code, { timeout: 15_000 }).toBeDefined();
    await page.goto(`${idp.issuer}/device?user_code=${code}`);
    await page.click("button[value=check]");
    await page.click("button[value=deny]");
    await page.waitForSelector("text=Sign-in denied");
    const r = await run;
    expect(r.code).toBe(77);
  }, 60_000);

  it("apes logout revokes the session at the IdP", async () => {
    const s = alice.authJson();
    const out = await alice.run(["--json", "logout"]);
    expect(out.code, out.stderr).toBe(0);
    expect(JSON.parse(out.stdout)).toMatchObject({ revoked: true });
    const r = await fetch(`${idp.issuer}/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        grant_type: "refresh_token",
        refresh_token: s.refresh_token,
        client_id: "apes-cli",
      }),
    });
    expect(((await r.json()) as { error: string }).error).toBe("invalid_grant");
  });
});
