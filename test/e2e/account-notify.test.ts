/**
 * Notification subscriptions on the account page, in a real chromium against the real `dist/apes
 * idp serve` (its [notify] config allows loopback targets; webhook, ntfy, mail, Web Push): the page lists
 * none, adds a webhook to a receiver on loopback and shows its secret once, an agent's real grant
 * request is delivered there signed with that secret, the API's rules refuse what they refuse on the
 * API, a form without the CSRF token or from another site changes nothing, and Remove removes it.
 * Screenshots at laptop and phone width in test-output/screenshots/account-notify-*.png.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyWebhook } from "../../protocol/webhook.ts";
import { type Human, humanWithPasskey, launchBrowser, screenshot, startWebIdp } from "../helpers/browser.ts";
import { addUser, type IdpHandle, loopbackCert } from "../helpers/idp.ts";
import { type HttpReceiver, httpReceiver, type SmtpServer, smtpServer } from "../helpers/receivers.ts";
import { type CliUser, cliUser } from "../integration/cli-helpers.ts";

const ALICE = "alice@example.com";
const BOT = "bot+agent@example.com";

let dir: string;
let idp: IdpHandle;
let browser: Browser;
let alice: Human;
let bot: CliUser;
let hook: HttpReceiver;
let ntfy: HttpReceiver;
let smtp: SmtpServer;
let evil: Server;
let evilUrl = "";
/** The HTML the other site serves at / (set by a test). */
let evilPage = "";

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "apes-account-notify-"));
  const tls = loopbackCert(dir);
  [hook, ntfy, smtp] = await Promise.all([httpReceiver(), httpReceiver(), smtpServer(tls)]);
  writeFileSync(join(dir, "smtp-auth"), "relay:relay-pass-Zq81\n", { mode: 0o600 });
  const config = join(dir, "idp.toml");
  writeFileSync(
    config,
    `[notify]
link_base = "https://id.example.com"
allow_local_targets = true
timeout = "1s"
retry_base = "50ms"
retry_max = "200ms"

[notify.ntfy]
server = "${ntfy.url}"

[notify.smtp]
host = "127.0.0.1"
port = ${smtp.port}
from = "apes@id.example.com"
auth_file = "${join(dir, "smtp-auth")}"
ca_file = "${tls.cert}"

[notify.webpush]
subject = "mailto:admin@example.com"
`,
  );
  // Another site (127.0.0.1 is not the IdP's localhost): a page whose form posts to the IdP.
  evil = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(evilPage);
  });
  await new Promise<void>((r) => evil.listen(0, "127.0.0.1", r));
  evilUrl = `http://127.0.0.1:${(evil.address() as AddressInfo).port}`;
  idp = await startWebIdp({ extraArgs: ["--config", config] });
  browser = await launchBrowser();
  alice = await humanWithPasskey(browser, idp, ALICE);
  bot = cliUser(BOT, idp.issuer);
  await addUser(idp.dataDir, BOT, { agent: true, owner: ALICE, publicKey: bot.publicLine });
  const r = await bot.run(["login", BOT, "--key", bot.keyPath]);
  expect(r.code, r.stderr).toBe(0);
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await idp?.stop();
  await Promise.all([hook?.close(), ntfy?.close(), smtp?.close()]);
  await new Promise((r) => (evil ? evil.close(r) : r(undefined)));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const account = (page: Page) => page.goto(`${idp.issuer}/account`);
const targets = (page: Page) => page.locator(".subscription code.target").allTextContents();

/** The add form, filled and sent; the page is left on the answer. */
async function add(page: Page, channel: string, target: string, events = { pending: true, decided: true }) {
  await account(page);
  await page.selectOption("#channel", channel);
  await page.fill("#target", target);
  await page.setChecked("input[name=event_pending]", events.pending);
  await page.setChecked("input[name=event_decided]", events.decided);
  await Promise.all([page.waitForNavigation(), page.click(".add-notification button[type=submit]")]);
}

/** A form post from inside the page (same origin and cookies), as url-encoded fields. */
function postForm(page: Page, path: string, fields: Record<string, string>): Promise<number> {
  return page.evaluate(
    async ({ path, fields }) => {
      const res = await fetch(path, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(fields).toString(),
        credentials: "same-origin",
        redirect: "manual",
      });
      // A redirect is opaque to the page's fetch (status 0): it is the form's 303 to /account.
      return res.type === "opaqueredirect" ? 303 : res.status;
    },
    { path, fields },
  );
}

describe("notifications on the account page", () => {
  it("an IdP without [notify] offers webhooks only, and to no loopback target", async () => {
    const bare = await startWebIdp();
    try {
      const carol = await humanWithPasskey(browser, bare, "carol@example.com");
      const offered = await carol.page
        .locator("#channel option")
        .evaluateAll((o) => o.map((x) => (x as unknown as { value: string }).value));
      expect(offered).toEqual(["webhook"]);
      const name = (await carol.page.getAttribute(".add-notification input[type=hidden]", "name"))!;
      const csrf = (await carol.page.getAttribute(".add-notification input[type=hidden]", "value"))!;
      const fields = { [name]: csrf, channel: "ntfy", target: "alerts", event_pending: "1" };
      expect(await postForm(carol.page, "/account/notifications/add", fields)).toBe(400);
      await carol.page.fill("#target", `${hook.url}/carol`);
      await Promise.all([
        carol.page.waitForNavigation(),
        carol.page.click(".add-notification button[type=submit]"),
      ]);
      expect(await carol.page.textContent(".lead")).toMatch(/allow_local_targets is off/);
      await carol.page.goto(`${bare.issuer}/account`);
      expect(await carol.page.textContent("#notifications + p")).toBe("You get no notifications yet.");
      await carol.context.close();
    } finally {
      await bare.stop();
    }
  });

  it("lists none at first and offers only the channels the IdP's config enables", async () => {
    const page = alice.page;
    await account(page);
    expect(await page.textContent("#notifications + p")).toBe("You get no notifications yet.");
    const offered = await page
      .locator("#channel option")
      .evaluateAll((o) => o.map((x) => (x as unknown as { value: string }).value));
    // Web Push (configured too) is subscribed from the approval pages, not this form.
    expect(offered).toEqual(["webhook", "ntfy", "email"]);
    await screenshot(page, "account-notify-empty");
  });

  it("adds a webhook, shows its secret once, and the agent's request is delivered there signed with it", async () => {
    const page = alice.page;
    const target = `${hook.url}/alice`;
    await add(page, "webhook", target);
    expect(await page.textContent("h1")).toBe("Webhook added");
    const secret = (await page.textContent("#webhook-secret"))!.trim();
    expect(secret.length).toBeGreaterThan(20);
    await screenshot(page, "account-notify-secret");
    await account(page);
    expect(await targets(page)).toEqual([target]);
    // Listed, never the secret again.
    expect(await page.content()).not.toContain(secret);
    await screenshot(page, "account-notify-listed");

    const r = await bot.run([
      "grants",
      "request",
      "--host",
      "web1",
      "--reason",
      "deploy the fix",
      "--",
      "id",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const grantId = r.stdout.trim();
    const [delivery] = await hook.waitFor(1, 20_000);
    expect(delivery!.path).toBe("/alice");
    const now = Math.floor(Date.now() / 1000);
    expect(
      verifyWebhook(secret, delivery!.headers as Record<string, string>, delivery!.body, now),
    ).toMatchObject({
      ok: true,
    });
    expect(
      verifyWebhook(
        `${secret.slice(0, 10)}${secret[10] === "A" ? "B" : "A"}${secret.slice(11)}`,
        delivery!.headers as Record<string, string>,
        delivery!.body,
        now,
      ).ok,
    ).toBe(false);
    expect(JSON.parse(delivery!.body.toString("utf8")).data).toMatchObject({
      event: "grant.pending",
      grant_id: grantId,
    });
  });

  it("refuses what the API refuses, on an error page, and adds nothing", async () => {
    const page = alice.page;
    // Plain http off loopback.
    await add(page, "webhook", "http://hooks.example.com/x");
    expect(await page.textContent("h1")).toBe("That did not work");
    expect(await page.textContent(".lead")).toMatch(/https/);
    // No event chosen.
    await add(page, "ntfy", "alerts", { pending: false, decided: false });
    expect(await page.textContent(".lead")).toMatch(/events must be a non-empty array/);
    // A topic that is no topic.
    await add(page, "ntfy", "no spaces here");
    expect(await page.textContent(".lead")).toMatch(/ntfy topic/);
    // Mail only to your own address.
    await add(page, "email", "bob@example.com");
    expect(await page.textContent(".lead")).toMatch(/mail goes only to your own address/);
    // The same webhook twice.
    await add(page, "webhook", `${hook.url}/alice`);
    expect(await page.textContent(".lead")).toMatch(/already have this subscription/);
    await screenshot(page, "account-notify-refused");
    await account(page);
    expect(await targets(page)).toEqual([`${hook.url}/alice`]);
  });

  it("adds mail to your own address when the target is left empty", async () => {
    const page = alice.page;
    await add(page, "email", "");
    expect(page.url()).toBe(`${idp.issuer}/account#notifications`);
    expect(await targets(page)).toEqual([`${hook.url}/alice`, ALICE]);
    await Promise.all([
      page.waitForNavigation(),
      page.click(`.subscription:has-text('${ALICE}') button.danger`),
    ]);
    expect(await targets(page)).toEqual([`${hook.url}/alice`]);
  });

  it("refuses a post without the CSRF token, with a wrong one, with an unknown field, and from another site", async () => {
    const page = alice.page;
    await account(page);
    const csrf = (await page.getAttribute(".add-notification input[type=hidden]", "value"))!;
    const fields = { channel: "ntfy", target: "sneaky", event_pending: "1" };
    expect(await postForm(page, "/account/notifications/add", fields)).toBe(403);
    expect(
      await postForm(page, "/account/notifications/add", { ...fields, csrf_token: "x".repeat(43) }),
    ).toBe(403);
    const name = (await page.getAttribute(".add-notification input[type=hidden]", "name"))!;
    expect(await postForm(page, "/account/notifications/add", { ...fields, [name]: "x".repeat(43) })).toBe(
      403,
    );
    expect(await postForm(page, "/account/notifications/add", { ...fields, [name]: csrf, extra: "1" })).toBe(
      400,
    );
    // Another site's form, even with the right token: the Strict cookie is not sent, the Origin is wrong.
    evilPage = `<!doctype html><form id="f" method="post" action="${idp.issuer}/account/notifications/add">
<input name="${name}" value="${csrf}"><input name="channel" value="ntfy"><input name="target" value="sneaky">
<input name="event_pending" value="1"></form><script>document.getElementById("f").submit()</script>`;
    const other = await alice.context.newPage();
    const answer = other.waitForResponse((res) =>
      res.url().startsWith(`${idp.issuer}/account/notifications/add`),
    );
    await other.goto(evilUrl);
    expect((await answer).status()).toBeGreaterThanOrEqual(400);
    await other.close();
    await account(page);
    expect(await targets(page)).toEqual([`${hook.url}/alice`]);
    // With the token, from the page itself: the same post works.
    expect(await postForm(page, "/account/notifications/add", { ...fields, [name]: csrf })).toBe(303);
    await account(page);
    expect(await targets(page)).toEqual([`${hook.url}/alice`, "sneaky"]);
  });

  it("removes a subscription with its Remove button; an unknown id or a post without the token removes nothing", async () => {
    const page = alice.page;
    await account(page);
    const name = (await page.getAttribute(".add-notification input[type=hidden]", "name"))!;
    const csrf = (await page.getAttribute(".add-notification input[type=hidden]", "value"))!;
    const id = (await page.getAttribute(".subscription:has-text('sneaky') input[name=id]", "value"))!;
    expect(await postForm(page, "/account/notifications/remove", { id })).toBe(403);
    expect(
      await postForm(page, "/account/notifications/remove", {
        [name]: csrf,
        id: "00000000-0000-4000-8000-000000000000",
      }),
    ).toBe(404);
    await account(page);
    expect(await targets(page)).toEqual([`${hook.url}/alice`, "sneaky"]);
    await Promise.all([
      page.waitForNavigation(),
      page.click(".subscription:has-text('sneaky') button.danger"),
    ]);
    expect(await targets(page)).toEqual([`${hook.url}/alice`]);
    await Promise.all([page.waitForNavigation(), page.click(".subscription button.danger")]);
    expect(await targets(page)).toEqual([]);
    expect(await page.textContent("#notifications + p")).toBe("You get no notifications yet.");
  });
});
