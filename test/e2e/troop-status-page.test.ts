import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BrowserContext, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startWorld, USERS, type World } from "../helpers/idp.ts";
import { connectNest, startTroop, type TroopHandle, troopToken } from "../helpers/troop.ts";

/**
 * The troop's status page in a real browser (Debian's chromium through playwright-core): it lists the
 * caller's nests, agents and intents, and what a nest reported is shown as text, never as markup.
 * Bearer-only for now: the browser sends the Authorization header itself.
 */
describe("troop status page in chromium", () => {
  let w: World;
  let troop: TroopHandle;
  let alice: string;
  let context: BrowserContext;
  beforeAll(async () => {
    w = await startWorld();
    troop = await startTroop(w.idp.issuer);
    alice = await troopToken(w.idp.url, w.tokens.alice);
    // A fresh profile each run (playwright passes it as --user-data-dir).
    context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "apes-chromium-")), {
      executablePath: "/usr/bin/chromium",
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      extraHTTPHeaders: { authorization: `Bearer ${alice}` },
    });
  });
  afterAll(async () => {
    await context?.close();
    await troop?.stop();
    await w?.idp.stop();
  });

  it("shows nests, agents and intents; a hostile version string stays text", async () => {
    const botToken = await troopToken(w.idp.url, w.tokens.bot);
    const r = await connectNest(troop.wsUrl, botToken);
    if (!r.ok) throw new Error(`refused ${r.status}`);
    await r.nest.next("hello");
    const hostile = '<img src=x onerror="document.title=1">';
    r.nest.send({
      type: "status",
      version: hostile,
      agents: [{ name: "worker", state: "paused", restarts: 2, since: 1 }],
    });
    const post = await fetch(`${troop.url}/v1/intents`, {
      method: "POST",
      headers: { authorization: `Bearer ${alice}`, "content-type": "application/json" },
      body: JSON.stringify({ id: "page-1", nest: USERS.bot, kind: "pause", agent: "worker" }),
    });
    expect(post.status).toBe(201);
    await r.nest.next("intent");
    const page = await context.newPage();
    let dialogs = 0;
    page.on("dialog", (d) => {
      dialogs++;
      void d.dismiss();
    });
    await expect
      .poll(async () => {
        const res = await page.goto(`${troop.url}/status`);
        expect(res?.status()).toBe(200);
        return page.locator("body").innerText();
      })
      .toContain(hostile);
    const text = await page.locator("body").innerText();
    expect(text).toContain(USERS.bot);
    expect(text).toContain("connected");
    expect(text).toContain("paused");
    expect(text).toContain("page-1");
    expect(await page.locator("img").count()).toBe(0);
    expect(await page.title()).toBe("apes troop");
    expect(dialogs).toBe(0);
    // Without the bearer: 401, nothing listed.
    const anonymous = await fetch(`${troop.url}/status`);
    expect(anonymous.status).toBe(401);
    expect(await anonymous.text()).not.toContain(USERS.bot);
    r.nest.close();
  });
});
