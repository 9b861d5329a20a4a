import { mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { type Browser, type BrowserContext, type CDPSession, chromium, type Page } from "playwright-core";
import { type IdpHandle, runApes, type StartIdpOptions, startIdp } from "./idp.ts";

/**
 * A real browser for tests of the IdP's pages: Debian's chromium driven by playwright-core (no
 * browser download), a CDP WebAuthn virtual authenticator standing in for a person's passkey
 * device, and screenshots at a laptop and a phone width.
 */

export const CHROMIUM = "/usr/bin/chromium";

/** Flags for a quiet, offline, headless chromium (playwright gives it a fresh temporary --user-data-dir). */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // localhost is the IdP on 127.0.0.1 (WebAuthn needs a host name; the IdP listens on IPv4 only).
  "--host-resolver-rules=MAP localhost 127.0.0.1",
];

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/**
 * A fresh context (its own cookies: one person) with a page at laptop size. A virtual authenticator
 * answers a conditional (autofill) WebAuthn request at once, as if the person had picked the passkey
 * from the suggestions, so a login page that starts one signs in by itself; with
 * `{conditionalUi: false}` the context's pages see no autofill support (the button path).
 */
export async function newPage(
  browser: Browser,
  options: { conditionalUi?: boolean } = {},
): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ viewport: LAPTOP, locale: "en-US" });
  if (options.conditionalUi === false) {
    await context.addInitScript({
      content:
        "if (window.PublicKeyCredential) PublicKeyCredential.isConditionalMediationAvailable = async () => false;",
    });
  }
  return { context, page: await context.newPage() };
}

export interface VirtualAuthenticator {
  cdp: CDPSession;
  authenticatorId: string;
  /** The credentials the authenticator holds (with private keys and sign counts). */
  credentials(): Promise<VirtualCredential[]>;
  remove(): Promise<void>;
}

export interface VirtualCredential {
  credentialId: string;
  isResidentCredential: boolean;
  rpId?: string;
  privateKey: string;
  userHandle?: string;
  signCount: number;
}

/**
 * A platform authenticator for `page` (CTAP2, internal transport, resident keys, user verification
 * that succeeds): WebAuthn calls in the page complete without any dialog.
 */
export async function addVirtualAuthenticator(page: Page): Promise<VirtualAuthenticator> {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return {
    cdp,
    authenticatorId,
    async credentials() {
      const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
      return credentials as VirtualCredential[];
    },
    async remove() {
      await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId });
    },
  };
}

export const LAPTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };
export const SCREENSHOT_DIR = resolve(import.meta.dirname, "..", "..", "test-output", "screenshots");

/** Saves `<name>-laptop.png` (1280x800) and `<name>-phone.png` (390x844), full page, into test-output/screenshots/. */
export async function screenshot(page: Page, name: string): Promise<string[]> {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const before = page.viewportSize();
  const files: string[] = [];
  for (const [label, size] of [
    ["laptop", LAPTOP],
    ["phone", PHONE],
  ] as const) {
    await page.setViewportSize(size);
    const path = join(SCREENSHOT_DIR, `${name}-${label}.png`);
    await page.screenshot({ path, fullPage: true });
    files.push(path);
  }
  if (before) await page.setViewportSize(before);
  return files;
}

/** A port free right now on 127.0.0.1 (the IdP is then started on it; startWebIdp retries a lost race). */
function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolvePort(port));
    });
  });
}

/**
 * The real IdP (`dist/apes idp serve`) on 127.0.0.1 with the issuer `http://localhost:PORT`: the
 * WebAuthn RP ID must be a host name, and browsers treat http://localhost as a secure context
 * (the IdP allows plain http for its pages only on loopback, for development and tests).
 */
export async function startWebIdp(
  options: Omit<StartIdpOptions, "issuer" | "port"> = {},
): Promise<IdpHandle> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    try {
      return await startIdp({
        ...options,
        issuer: `http://localhost:${port}`,
        port,
      });
    } catch (e) {
      if (attempt >= 4 || !/already in use/.test((e as Error).message)) throw e;
    }
  }
}

export interface Human {
  email: string;
  context: BrowserContext;
  page: Page;
  authenticator: VirtualAuthenticator;
}

/**
 * A person signed in at `idp` (started with startWebIdp) with a passkey: `apes idp users add EMAIL
 * --human --invite` (or `users invite` when `existing`), the invite page in a fresh context with a
 * virtual authenticator, registration; the page is left on /account. Pages see no autofill support
 * unless `conditionalUi` (see newPage).
 */
export async function humanWithPasskey(
  browser: Browser,
  idp: IdpHandle,
  email: string,
  options: { existing?: boolean; admin?: boolean; conditionalUi?: boolean } = {},
): Promise<Human> {
  const args = options.existing
    ? ["idp", "users", "invite", email]
    : ["idp", "users", "add", email, "--human", "--invite", ...(options.admin ? ["--admin"] : [])];
  const r = await runApes([...args, "--data", idp.dataDir]);
  if (r.code !== 0) throw new Error(`apes ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
  const link = r.stdout.trim().split("\n").pop()!;
  const { context, page } = await newPage(browser, { conditionalUi: options.conditionalUi ?? false });
  const authenticator = await addVirtualAuthenticator(page);
  await page.goto(link);
  await page.waitForSelector("body[data-ready=yes]");
  await page.click("#register");
  await page.waitForURL(`${idp.issuer}/account`);
  return { email, context, page, authenticator };
}
