/**
 * Web Push from the approval pages, in a real chromium against the real `dist/apes idp serve`
 * ([notify.webpush] on, loopback targets allowed): "Notify me in this browser" on the inbox
 * registers the service worker (/sw.js) and hands the browser's push subscription to the IdP; an
 * agent's real grant request is then pushed to that subscription's endpoint, VAPID-signed and
 * RFC 8291-encrypted; the test decrypts it with the subscription's keys and delivers the plain
 * message into the real service worker (DevTools ServiceWorker.deliverPushMessage), which shows a
 * notification with the command and the reason that opens the grant's page. "Stop" removes it.
 *
 * The one stand-in is the browser's push service: offline, chromium cannot reach its vendor's, so
 * an init script gives PushManager a subscription whose endpoint is a receiver on loopback and
 * whose keys the test holds (what a push service would hand the page). Everything of ours is real.
 * Screenshots: test-output/screenshots/web-push-*.png.
 */
import { createECDH, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, CDPSession, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Human, humanWithPasskey, launchBrowser, screenshot, startWebIdp } from "../helpers/browser.ts";
import { addUser, type IdpHandle } from "../helpers/idp.ts";
import { decryptWebPush, type HttpReceiver, httpReceiver } from "../helpers/receivers.ts";
import { type CliUser, cliUser } from "../integration/cli-helpers.ts";

const ALICE = "alice@example.com";
const BOT = "bot+agent@example.com";

let dir: string;
let idp: IdpHandle;
let browser: Browser;
let alice: Human;
let bot: CliUser;
let pushService: HttpReceiver;
const ua = createECDH("prime256v1");
const p256dh = ua.generateKeys().toString("base64url");
const auth = randomBytes(16);
let endpoint = "";

/** What the page's fake push service saw: the applicationServerKey it was given, unsubscribes. */
interface FakePushLog {
  serverKey?: string;
  unsubscribed: number;
}

interface Notice {
  title: string;
  body: string;
  tag: string;
  data: { page?: string };
}

/** The browser globals the page functions below use (the project's tsconfig has no DOM lib). */
interface PageGlobals {
  __push: FakePushLog;
  PushManager: { prototype: Record<string, unknown> };
  localStorage: {
    getItem(k: string): string | null;
    setItem(k: string, v: string): void;
    removeItem(k: string): void;
  };
  btoa(s: string): string;
  navigator: {
    serviceWorker: { ready: Promise<{ scope: string; getNotifications(): Promise<Notice[]> }> };
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "apes-web-push-"));
  pushService = await httpReceiver();
  pushService.otherwise = 201;
  endpoint = `${pushService.url}/push/alice-browser`;
  const config = join(dir, "idp.toml");
  writeFileSync(
    config,
    `[notify]
allow_local_targets = true
timeout = "2s"
retry_base = "50ms"
retry_max = "200ms"

[notify.webpush]
subject = "mailto:admin@example.com"
`,
  );
  idp = await startWebIdp({ extraArgs: ["--config", config] });
  browser = await launchBrowser();
  alice = await humanWithPasskey(browser, idp, ALICE);
  await alice.context.grantPermissions(["notifications"], { origin: idp.issuer });
  // The push service's part (see the file comment): a subscription with our endpoint and keys.
  await alice.context.addInitScript(
    ({ endpoint, p256dh, auth }) => {
      const w = globalThis as unknown as PageGlobals;
      w.__push = { unsubscribed: 0 };
      let current: unknown = null;
      const make = () => ({
        endpoint,
        expirationTime: null,
        toJSON: () => ({ endpoint, expirationTime: null, keys: { p256dh, auth } }),
        unsubscribe: async () => {
          w.__push.unsubscribed++;
          current = null;
          w.localStorage.removeItem("fake-push");
          return true;
        },
      });
      if (w.localStorage.getItem("fake-push")) current = make();
      const proto = w.PushManager.prototype;
      proto.getSubscription = async () => current;
      proto.subscribe = async (options: { applicationServerKey: ArrayBuffer | Uint8Array }) => {
        const key = new Uint8Array(options.applicationServerKey as ArrayBuffer);
        w.__push.serverKey = w
          .btoa(String.fromCharCode(...key))
          .replace(/\+/g, "-")
          .replace(/\//g, "_")
          .replace(/=+$/, "");
        w.localStorage.setItem("fake-push", "1");
        current = make();
        return current;
      };
    },
    { endpoint, p256dh, auth: auth.toString("base64url") },
  );
  bot = cliUser(BOT, idp.issuer);
  await addUser(idp.dataDir, BOT, { agent: true, owner: ALICE, publicKey: bot.publicLine });
  const r = await bot.run(["login", BOT, "--key", bot.keyPath]);
  expect(r.code, r.stderr).toBe(0);
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await idp?.stop();
  await pushService?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const webpushTargets = async () => {
  const page = await alice.context.newPage();
  try {
    await page.goto(`${idp.issuer}/account`);
    return await page
      .locator(".subscription")
      .filter({ hasText: "Web Push" })
      .locator("code.target")
      .allTextContents();
  } finally {
    await page.close();
  }
};

/** The service worker's registration id, as DevTools reports it. */
async function registrationId(cdp: CDPSession): Promise<string> {
  const found = new Promise<string>((resolve) => {
    cdp.on("ServiceWorker.workerRegistrationUpdated", (e) => {
      const reg = e.registrations.find((r) => r.scopeURL === `${idp.issuer}/` && !r.isDeleted);
      if (reg) resolve(reg.registrationId);
    });
  });
  await cdp.send("ServiceWorker.enable");
  return found;
}

/** The notifications the service worker shows now. */
function shown(page: Page): Promise<Notice[]> {
  return page.evaluate(async () =>
    (
      await (await (globalThis as unknown as PageGlobals).navigator.serviceWorker.ready).getNotifications()
    ).map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data })),
  );
}

/**
 * The first notification `pick` finds, waiting for it to be shown. `redeliver`, when given, sends
 * the pushes again once if nothing came within 10 s: a push that DevTools delivers while Chromium
 * (re)starts the worker on a loaded machine can be lost before the worker sees it (seen once in a
 * full CI run); the same payloads again change nothing (a grant's tag replaces its banner).
 */
async function shownOne(
  page: Page,
  pick: (n: Notice) => boolean,
  redeliver?: () => Promise<void>,
): Promise<Notice> {
  let found: Notice | undefined;
  const look = (timeout: number) =>
    expect
      .poll(
        async () => {
          found = (await shown(page)).find(pick);
          return found !== undefined;
        },
        { timeout },
      )
      .toBe(true);
  if (!redeliver) await look(10_000);
  else {
    try {
      await look(10_000);
    } catch {
      await redeliver();
      await look(10_000);
    }
  }
  return found!;
}

describe("Web Push from the approval pages", () => {
  let page: Page;
  let cdp: CDPSession;
  let registration = "";

  it("the inbox offers it; a click subscribes this browser with the IdP's VAPID key", async () => {
    page = alice.page;
    await page.goto(`${idp.issuer}/inbox`);
    await expect.poll(() => page.isVisible("#push-on")).toBe(true);
    expect(await page.isVisible("#push-off")).toBe(false);
    await screenshot(page, "web-push-offered");
    await page.click("#push-on");
    await page.waitForSelector("#push-status.ok");
    expect(await page.textContent("#push-status")).toContain("This browser is notified");
    expect(await page.isVisible("#push-off")).toBe(true);
    const vapid = (await (await fetch(`${idp.issuer}/api/notify/vapid`)).json()) as { public_key: string };
    const log = await page.evaluate(() => (globalThis as unknown as PageGlobals).__push);
    expect(log.serverKey).toBe(vapid.public_key);
    // The service worker is registered at the root, so it covers the grant pages too.
    const scope = await page.evaluate(
      async () => (await (globalThis as unknown as PageGlobals).navigator.serviceWorker.ready).scope,
    );
    expect(scope).toBe(`${idp.issuer}/`);
    expect(await webpushTargets()).toEqual([endpoint]);
    await screenshot(page, "web-push-on");
  });

  it("a second click (or a reload) keeps one subscription", async () => {
    await page.reload();
    await expect.poll(() => page.isVisible("#push-off")).toBe(true);
    const again = await page.evaluate(
      async ({ csrf, endpoint, p256dh, auth }) => {
        const res = await fetch("/account/push/subscribe", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ csrf_token: csrf, endpoint, keys: { p256dh, auth } }),
        });
        return { status: res.status, body: await res.json() };
      },
      {
        csrf: (await page.getAttribute("#push", "data-csrf"))!,
        endpoint,
        p256dh,
        auth: auth.toString("base64url"),
      },
    );
    expect(again).toMatchObject({ status: 200, body: { created: false } });
    expect(await webpushTargets()).toEqual([endpoint]);
  });

  it("refuses a subscription without the CSRF token, to a non-https endpoint, or with bad keys", async () => {
    const csrf = (await page.getAttribute("#push", "data-csrf"))!;
    const post = (body: unknown) =>
      page.evaluate(async (body) => {
        const res = await fetch("/account/push/subscribe", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        return res.status;
      }, body);
    const keys = { p256dh, auth: auth.toString("base64url") };
    expect(await post({ endpoint: `${pushService.url}/other`, keys })).toBe(403);
    expect(await post({ csrf_token: "x", endpoint: `${pushService.url}/other`, keys })).toBe(403);
    expect(await post({ csrf_token: csrf, endpoint: "http://push.example.com/x", keys })).toBe(400);
    expect(
      await post({ csrf_token: csrf, endpoint: `${pushService.url}/other`, keys: { p256dh, auth: "AA" } }),
    ).toBe(400);
    expect(await post({ csrf_token: csrf, endpoint: `${pushService.url}/other`, keys, extra: 1 })).toBe(400);
    // Signed out: nothing.
    const other = await browser.newContext();
    try {
      const res = await other.request.post(`${idp.issuer}/account/push/subscribe`, {
        data: { csrf_token: csrf, endpoint: `${pushService.url}/other`, keys },
        headers: { origin: idp.issuer },
      });
      expect(res.status()).toBe(401);
    } finally {
      await other.close();
    }
    expect(await webpushTargets()).toEqual([endpoint]);
  });

  it("a grant request is pushed encrypted; the service worker shows the command and reason and links the grant", async () => {
    cdp = await alice.context.newCDPSession(page);
    registration = await registrationId(cdp);
    const r = await bot.run([
      "grants",
      "request",
      "--host",
      "web1",
      "--reason",
      "rotate the logs",
      "--",
      "logrotate",
      "-f",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const grantId = r.stdout.trim();
    const [delivery] = await pushService.waitFor(1, 20_000);
    expect(delivery!.path).toBe("/push/alice-browser");
    expect(delivery!.headers["content-encoding"]).toBe("aes128gcm");
    expect(delivery!.body.toString("latin1")).not.toContain("logrotate");
    const plain = decryptWebPush(delivery!.body, ua, auth).toString("utf8");
    expect(JSON.parse(plain)).toMatchObject({ grant_id: grantId, url: `${idp.issuer}/grants/${grantId}` });

    await cdp.send("ServiceWorker.deliverPushMessage", {
      origin: idp.issuer,
      registrationId: registration,
      data: plain,
    });
    const n = await shownOne(page, (x) => x.tag === grantId);
    expect(n!.title).toBe(`apes: ${BOT} asks for approval on web1`);
    expect(n!.body).toContain("command: logrotate -f");
    expect(n!.body).toContain("rotate the logs");
    expect(n!.tag).toBe(grantId);
    expect(n!.data.page).toBe(`/grants/${grantId}`);
  });

  it("the service worker opens only this origin's pages, and cuts what it shows", async () => {
    const id = "6f1c0e0a-0000-4000-8000-00000000beef";
    // A path of this origin's URL that a click would resolve to another origin.
    const id2 = "6f1c0e0a-0000-4000-8000-00000000cafe";
    const payloads = [
      JSON.stringify({ title: "x".repeat(5000), body: 7, url: "https://evil.example/phish", grant_id: id }),
      JSON.stringify({ title: "t", body: "b", url: `${idp.issuer}//evil.example/phish`, grant_id: id2 }),
      "not json",
    ];
    const deliver = async () => {
      for (const data of payloads) {
        await cdp.send("ServiceWorker.deliverPushMessage", {
          origin: idp.issuer,
          registrationId: registration,
          data,
        });
      }
    };
    await deliver();
    const evil = await shownOne(page, (n) => n.tag === id, deliver);
    expect(evil.title.length).toBe(200);
    expect(evil.body).toBe("");
    expect(evil.data.page).toBe(`/grants/${id}`);
    expect((await shownOne(page, (n) => n.tag === id2, deliver)).data.page).toBe(`/grants/${id2}`);
    const junk = await shownOne(page, (n) => n.title === "apes: something changed", deliver);
    expect(junk.data.page).toBe("/inbox");
  }, 60_000);

  it("Stop removes the subscription here and at the IdP", async () => {
    await page.click("#push-off");
    await page.waitForSelector("#push-status.ok");
    expect(await page.textContent("#push-status")).toContain("no longer notified");
    expect(await page.isVisible("#push-on")).toBe(true);
    const log = await page.evaluate(() => (globalThis as unknown as PageGlobals).__push);
    expect(log.unsubscribed).toBe(1);
    expect(await webpushTargets()).toEqual([]);
    // Removing again (the IdP already dropped it) is no error.
    const status = await page.evaluate(
      async ({ csrf, endpoint }) => {
        const res = await fetch("/account/push/unsubscribe", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ csrf_token: csrf, endpoint }),
        });
        return { status: res.status, body: await res.json() };
      },
      { csrf: (await page.getAttribute("#push", "data-csrf"))!, endpoint },
    );
    expect(status).toEqual({ status: 200, body: { removed: false } });
  });

  it("the account page offers the same control", async () => {
    await page.goto(`${idp.issuer}/account`);
    await expect.poll(() => page.isVisible("#push-on")).toBe(true);
    await screenshot(page, "web-push-account");
  });
});
