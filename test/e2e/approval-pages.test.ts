/**
 * The approval pages in a real chromium against the real `dist/apes idp serve`: an agent (the real
 * CLI, key login) asks for a grant and its owner's open inbox shows it without a reload; the grant
 * page shows the exact argv with escape sequences and RTL overrides made visible; approve takes a
 * passkey step-up and the agent's waiting `apes grants wait` proceeds; a session cookie without an
 * assertion, or with one bound to another grant or decision, approves nothing; deny needs no
 * passkey; a decision made elsewhere (the CLI) updates the open inbox and grant page; delegations
 * are created, listed and revoked; the history pages; CSRF and no-store.
 */
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { visible, visibleArgv } from "../../protocol/display.ts";
import { CONTENT_SECURITY_POLICY } from "../../server/web/headers.ts";
import { type Human, humanWithPasskey, launchBrowser, screenshot, startWebIdp } from "../helpers/browser.ts";
import { addUser, api, type IdpHandle, type Json } from "../helpers/idp.ts";
import { type CliUser, cliUser } from "../integration/cli-helpers.ts";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const CAROL = "carol@example.com";
const BOT = "bot+agent@example.com";

/** An argv that tries to fool the eye: a terminal colour escape, an RTL override, a CR, a tab. */
const TRICKY = [
  "printf",
  "\x1b[31mred\x1b[0m",
  "harmless\u202egnp.exe",
  "over\rwrite",
  "a\tb",
  "",
  "back\\slash",
];

let idp: IdpHandle;
let browser: Browser;
let alice: Human;
let bob: Human;
let bot: CliUser;
let carol: CliUser;
const cspViolations: string[] = [];
let made = 0;

/** The agent asks for a grant through the real CLI; returns its id (printed on stdout). */
async function request(argv: string[] = ["systemctl", "restart", `nginx-${++made}`], extra: string[] = []) {
  const r = await bot.run([
    "grants",
    "request",
    "--host",
    "web1",
    "--reason",
    "deploy the fix",
    ...extra,
    "--",
    ...argv,
  ]);
  expect(r.code, r.stderr).toBe(0);
  const id = r.stdout.trim();
  expect(id).toMatch(/^[0-9a-f-]{36}$/);
  return id;
}

async function statusOf(id: string): Promise<string> {
  const r = await bot.run(["--json", "grants", "show", id]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout).status;
}

/** A JSON call from inside the page (as its own script makes it: same origin, cookies). */
function pageCall(
  page: Page,
  path: string,
  body: Record<string, unknown>,
): Promise<{ status: number; body: Json }> {
  return page.evaluate(
    async ({ path, body }) => {
      const res = await fetch(path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      return { status: res.status, body: (await res.json().catch(() => ({}))) as Json };
    },
    { path, body },
  );
}

/** An assertion of the page's passkey over the challenge of `optionsPath` (what a stolen-cookie attacker with a passkey prompt could get). */
async function assertionFor(page: Page, optionsPath: string, body: Record<string, unknown>) {
  const r = await pageCall(page, optionsPath, body);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return page.evaluate(
    (options) =>
      (globalThis as unknown as PageGlobals).SimpleWebAuthnBrowser.startAuthentication({
        optionsJSON: options,
      }),
    r.body.options,
  );
}

const csrfOf = (page: Page) => page.getAttribute("#decide", "data-csrf");

/** The page's globals, as the page scripts see them (the tests' tsconfig has no DOM types). */
interface PageGlobals {
  SimpleWebAuthnBrowser: { startAuthentication(o: unknown): Promise<unknown> };
  marker?: string;
}

function watchCsp(page: Page) {
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });
}

beforeAll(async () => {
  idp = await startWebIdp();
  browser = await launchBrowser();
  alice = await humanWithPasskey(browser, idp, ALICE);
  bob = await humanWithPasskey(browser, idp, BOB);
  watchCsp(alice.page);
  watchCsp(bob.page);
  carol = cliUser(CAROL, idp.issuer);
  await addUser(idp.dataDir, CAROL, { publicKey: carol.publicLine });
  bot = cliUser(BOT, idp.issuer);
  await addUser(idp.dataDir, BOT, {
    agent: true,
    owner: ALICE,
    approvers: [CAROL],
    publicKey: bot.publicLine,
  });
  for (const u of [bot, carol]) {
    const r = await u.run(["login", u.email, "--key", u.keyPath]);
    expect(r.code, r.stderr).toBe(0);
  }
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await idp?.stop();
});

describe("the inbox", () => {
  it("without a session, the pages send you to sign in and the JSON says 401", async () => {
    const ctx = await browser.newContext();
    for (const path of [
      "/inbox",
      "/history",
      "/delegations",
      "/grants/00000000-0000-4000-8000-000000000000",
    ]) {
      const res = await ctx.request.get(`${idp.issuer}${path}`, { maxRedirects: 0 });
      expect(res.status(), path).toBe(303);
      expect(res.headers().location).toBe(`/login?return_to=${encodeURIComponent(path)}`);
    }
    const items = await ctx.request.get(`${idp.issuer}/inbox/items`);
    expect(items.status()).toBe(401);
    await ctx.close();
  });

  it("shows a grant the moment the agent asks, without a reload", async () => {
    await alice.page.goto(`${idp.issuer}/inbox`);
    await alice.page.waitForSelector("body[data-live=on]");
    expect(await alice.page.isVisible("#empty")).toBe(true);
    await screenshot(alice.page, "inbox-empty");
    await alice.page.evaluate(() => {
      (globalThis as unknown as PageGlobals).marker = "same page";
    });
    const id = await request(TRICKY);
    const row = alice.page.locator(`li.grant-row[data-id="${id}"]`);
    await row.waitFor({ timeout: 15_000 });
    expect(await alice.page.evaluate(() => (globalThis as unknown as PageGlobals).marker)).toBe("same page");
    expect(await row.locator(".who").textContent()).toBe(BOT);
    expect(await row.locator(".cmd").textContent()).toBe(visibleArgv(TRICKY));
    expect(await row.locator(".warn").textContent()).toContain("shown escaped");
    expect(await alice.page.isHidden("#empty")).toBe(true);
    await request(["systemctl", "reload", "nginx"]);
    await expect.poll(() => alice.page.locator("li.grant-row").count()).toBe(2);
    // Newest first.
    expect(await alice.page.locator("li.grant-row .cmd").first().textContent()).toBe(
      "systemctl reload nginx",
    );
    await screenshot(alice.page, "inbox");
  });

  it("lists nothing for a person who neither owns nor approves the agent", async () => {
    await bob.page.goto(`${idp.issuer}/inbox`);
    expect(await bob.page.locator("li.grant-row").count()).toBe(0);
    expect(await bob.page.isVisible("#empty")).toBe(true);
  });
});

describe("the grant page", () => {
  let tricky: string;

  it("shows the exact argv, escapes and RTL overrides visible and never interpreted", async () => {
    tricky = await request(TRICKY, ["--run-as", "deploy"]);
    await alice.page.goto(`${idp.issuer}/grants/${tricky}`);
    await alice.page.waitForSelector("body[data-ready=yes]");
    const args = await alice.page.locator("#argv .arg").allTextContents();
    expect(args).toEqual(TRICKY.map((a) => (a === "" ? "(empty)" : visible(a))));
    expect(args[1]).toBe("\\x1b[31mred\\x1b[0m");
    expect(args[2]).toBe("harmless\\u202egnp.exe");
    expect(args[3]).toBe("over\\rwrite");
    const text = (await alice.page.textContent("main"))!;
    // The raw control characters are nowhere in the page's text: only their escapes.
    for (const raw of ["\x1b", "\u202e", "\r", "\t"])
      expect(text.includes(raw), JSON.stringify(raw)).toBe(false);
    expect(await alice.page.locator("#argv mark.esc").first().textContent()).toBe("\\x1b");
    expect(await alice.page.textContent("#shell")).toBe(visibleArgv(TRICKY));
    expect(await alice.page.textContent("#warning")).toContain("control or invisible characters");
    expect(await alice.page.textContent("#cmd-hash")).toBe(cmdHash(TRICKY));
    expect(await alice.page.textContent("#run-as")).toBe("deploy");
    expect(await alice.page.textContent("#target")).toBe("web1");
    expect(await alice.page.textContent("#reason")).toBe("deploy the fix");
    expect(await alice.page.textContent("#requester")).toContain(`an agent of ${ALICE}`);
    expect(await alice.page.textContent("#requester")).toContain(`approvers: ${CAROL}`);
    expect(await alice.page.textContent("#requested-type")).toBe("once");
    await screenshot(alice.page, "grant");
  });

  it("approve takes a passkey assertion, and the agent's waiting `apes grants wait` proceeds", async () => {
    const waiting = bot.run(["grants", "wait", tricky, "--timeout", "2m"]);
    await alice.page.check("input[name=grant_type][value=timed]");
    await alice.page.fill("#duration", "45m");
    const credsBefore = (await alice.authenticator.credentials())[0]!.signCount;
    await alice.page.click("#approve");
    await alice.page.waitForSelector("#outcome");
    expect(await alice.page.textContent("#outcome")).toMatch(
      new RegExp(`^Approved by ${ALICE} at .* UTC \\(proof: webauthn\\); until .* UTC$`),
    );
    // The passkey was used for it (a fresh assertion, counted by the authenticator).
    expect((await alice.authenticator.credentials())[0]!.signCount).toBeGreaterThan(credsBefore);
    const w = await waiting;
    expect(w.code, w.stderr).toBe(0);
    const shown = JSON.parse((await bot.run(["--json", "grants", "show", tricky])).stdout);
    expect(shown).toMatchObject({ status: "approved", decided_by: ALICE, approval_proof: "webauthn" });
    expect(shown.request).toMatchObject({ grant_type: "timed", duration: 2700 });
    expect(idp.logs()).toMatch(new RegExp(`"msg":"grant approved".*"grant":"${tricky}".*"proof":"webauthn"`));
    await screenshot(alice.page, "grant-approved");
  });

  it("a session cookie alone approves nothing: no assertion, or one bound to another grant or decision", async () => {
    const target = await request();
    const other = await request();
    await alice.page.goto(`${idp.issuer}/grants/${target}`);
    await alice.page.waitForSelector("body[data-ready=yes]");
    const csrf = await csrfOf(alice.page);
    const approve = `/grants/${target}/approve`;
    // No assertion at all.
    const none = await pageCall(alice.page, approve, { csrf_token: csrf });
    expect(none.status).toBe(403);
    expect(none.body.type).toMatch(/proof_required$/);
    // An assertion made for another grant.
    const forOther = await assertionFor(alice.page, `/grants/${other}/approve/options`, { csrf_token: csrf });
    const r1 = await pageCall(alice.page, approve, { csrf_token: csrf, response: forOther });
    expect(r1.status, JSON.stringify(r1.body)).toBe(403);
    expect(r1.body.type).toMatch(/invalid_proof$/);
    // An assertion made for this grant but another decision (always, sent as once).
    const always = await assertionFor(alice.page, `${approve}/options`, {
      csrf_token: csrf,
      grant_type: "always",
    });
    const r2 = await pageCall(alice.page, approve, {
      csrf_token: csrf,
      grant_type: "once",
      response: always,
    });
    expect(r2.status).toBe(403);
    expect(r2.body.type).toMatch(/invalid_proof$/);
    // ... nor for another duration.
    const t30 = await assertionFor(alice.page, `${approve}/options`, {
      csrf_token: csrf,
      grant_type: "timed",
      duration: "30m",
    });
    const r3 = await pageCall(alice.page, approve, {
      csrf_token: csrf,
      grant_type: "timed",
      duration: "2h",
      response: t30,
    });
    expect(r3.status).toBe(403);
    // An assertion of a login (no binding) is no approval either.
    const login = await assertionFor(alice.page, "/login/options", {});
    const r4 = await pageCall(alice.page, approve, { csrf_token: csrf, response: login });
    expect(r4.status).toBe(403);
    expect(await statusOf(target)).toBe("pending");
    expect(await statusOf(other)).toBe("pending");
    // A person who may not decide it gets no challenge for it (it is not even visible to them).
    await bob.page.goto(`${idp.issuer}/inbox`);
    const bobCsrf = await bob.page.evaluate(async () => {
      const r = await fetch("/delegations");
      return /name="csrf_token" value="([^"]+)"/.exec(await r.text())?.[1];
    });
    const stranger = await pageCall(bob.page, `${approve}/options`, { csrf_token: bobCsrf });
    expect(stranger.status).toBe(404);
    const strangerPage = await bob.page.request.get(`${idp.issuer}/grants/${target}`);
    expect(strangerPage.status()).toBe(404);
    expect((await bob.page.request.get(`${idp.issuer}/grants/${target}/state`)).status()).toBe(404);
    // The honest path still works on the same grant: the refusals spent nothing it needs.
    await alice.page.click("#approve");
    await alice.page.waitForSelector("#outcome");
    expect(await statusOf(target)).toBe("approved");
  });

  it("deny needs no passkey, and shows the outcome", async () => {
    const id = await request();
    const waiting = bot.run(["grants", "wait", id, "--timeout", "2m"]);
    await alice.page.goto(`${idp.issuer}/grants/${id}`);
    await alice.page.waitForSelector("body[data-ready=yes]");
    const before = (await alice.authenticator.credentials())[0]!.signCount;
    await alice.page.click("#deny");
    await alice.page.waitForSelector("#outcome");
    expect(await alice.page.textContent("#outcome")).toMatch(new RegExp(`^Denied by ${ALICE} at `));
    expect((await alice.authenticator.credentials())[0]!.signCount).toBe(before);
    expect((await waiting).code).toBe(77);
    expect(await statusOf(id)).toBe("denied");
    await screenshot(alice.page, "grant-denied");
  });

  it("errors are said in plain words (a bad duration; a grant decided in the meantime)", async () => {
    const id = await request();
    await alice.page.goto(`${idp.issuer}/grants/${id}`);
    await alice.page.waitForSelector("body[data-ready=yes]");
    const csrf = await csrfOf(alice.page);
    await alice.page.check("input[name=grant_type][value=timed]");
    await alice.page.fill("#duration", "soon");
    await alice.page.click("#approve");
    await expect
      .poll(() => alice.page.textContent("#status"))
      .toBe('Not approved: Duration must be seconds or a string like "30m".');
    await screenshot(alice.page, "grant-error");
    // Decided elsewhere: refused with the state that won. The call is made from the inbox, left
    // before the decision: the open grant page reloads itself when the grant is decided, and that
    // navigation would race the test's own.
    await alice.page.goto(`${idp.issuer}/inbox`);
    expect((await carol.run(["grants", "deny", id])).code).toBe(0);
    const r = await pageCall(alice.page, `/grants/${id}/approve/options`, { csrf_token: csrf });
    expect(r.status).toBe(409);
    expect(r.body.detail).toBe("the grant is denied, not pending");
  });

  it("an open grant page shows a decision made elsewhere (the CLI) without a click", async () => {
    const id = await request();
    await alice.page.goto(`${idp.issuer}/grants/${id}`);
    await alice.page.waitForSelector("body[data-ready=yes]");
    const r = await carol.run(["grants", "approve", id]);
    expect(r.code, r.stderr).toBe(0);
    await alice.page.waitForSelector("#outcome", { timeout: 15_000 });
    expect(await alice.page.textContent("#outcome")).toMatch(
      new RegExp(`^Approved by ${CAROL} at .* \\(proof: ed25519\\)$`),
    );
  });

  it("an unknown or malformed grant id is a plain 404 page", async () => {
    for (const id of ["00000000-0000-4000-8000-000000000000", "nope"]) {
      const res = await alice.page.request.get(`${idp.issuer}/grants/${id}`);
      expect(res.status()).toBe(404);
      expect(await res.text()).toContain("no such grant");
    }
  });
});

describe("decisions made elsewhere", () => {
  it("the open inbox drops a grant decided on the command line", async () => {
    const id = await request(["apt-get", "upgrade", "-y"]);
    await alice.page.goto(`${idp.issuer}/inbox`);
    await alice.page.waitForSelector("body[data-live=on]");
    const row = alice.page.locator(`li.grant-row[data-id="${id}"]`);
    await row.waitFor();
    await alice.page.evaluate(() => {
      (globalThis as unknown as PageGlobals).marker = "still here";
    });
    const r = await carol.run(["grants", "deny", id]);
    expect(r.code, r.stderr).toBe(0);
    await row.waitFor({ state: "detached", timeout: 15_000 });
    expect(await alice.page.evaluate(() => (globalThis as unknown as PageGlobals).marker)).toBe("still here");
    // The agent withdrawing its own request does the same.
    const mine = await request(["true"]);
    const row2 = alice.page.locator(`li.grant-row[data-id="${mine}"]`);
    await row2.waitFor({ timeout: 15_000 });
    expect((await bot.run(["grants", "revoke", mine])).code).toBe(0);
    await row2.waitFor({ state: "detached", timeout: 15_000 });
  });
});

describe("delegations", () => {
  it("create, list and revoke, through the IdP's delegation rules", async () => {
    await alice.page.goto(`${idp.issuer}/delegations`);
    expect(await alice.page.locator("#delegations li").count()).toBe(0);
    await alice.page.fill("#delegate", BOT);
    await alice.page.fill("#audience", "troop.example.com");
    await alice.page.fill("#scopes", "nest:read  nest:spawn");
    await alice.page.fill("#expires", "8h");
    await alice.page.click("#new-delegation button[type=submit]");
    await alice.page.waitForURL(`${idp.issuer}/delegations`);
    const row = alice.page.locator("#delegations li").first();
    expect(await row.textContent()).toContain(BOT);
    expect(await row.textContent()).toContain("troop.example.com");
    expect(await row.textContent()).toContain("scopes: nest:read, nest:spawn");
    expect(await row.textContent()).toContain("timed, 8h");
    const id = await row.getAttribute("data-id");
    // The delegate sees the same delegation through the API.
    const token = (bot.authJson() as Json).token as string;
    const listed = await api(idp.url, token).get("/api/delegations?role=delegate");
    expect(listed.status).toBe(200);
    expect(listed.body.data.map((d: Json) => d.id)).toEqual([id]);
    expect(listed.body.data[0].request).toMatchObject({
      delegator: ALICE,
      delegate: BOT,
      audience: "troop.example.com",
      grant_type: "timed",
      duration: 28800,
      scopes: ["nest:read", "nest:spawn"],
    });
    await screenshot(alice.page, "delegations");
    await row.locator("button", { hasText: "Revoke" }).click();
    await alice.page.waitForURL(`${idp.issuer}/delegations`);
    expect(await alice.page.locator(`#delegations li[data-id="${id}"] .badge`).textContent()).toBe("revoked");
    expect(await alice.page.locator(`#delegations li[data-id="${id}"] button`).count()).toBe(0);
    expect((await api(idp.url, token).get(`/api/delegations/${id}`)).body.status).toBe("revoked");
  });

  it("refuses what the API refuses, in words on the page", async () => {
    await alice.page.goto(`${idp.issuer}/delegations`);
    await alice.page.fill("#delegate", ALICE);
    await alice.page.fill("#audience", "x");
    await alice.page.click("#new-delegation button[type=submit]");
    expect(await alice.page.textContent("#error")).toBe(
      "The delegation was not created: cannot delegate to yourself.",
    );
    await alice.page.fill("#delegate", "nobody@example.com");
    await alice.page.fill("#audience", "x");
    await alice.page.click("#new-delegation button[type=submit]");
    expect(await alice.page.textContent("#error")).toContain("is not an active user of this IdP");
    await alice.page.fill("#delegate", BOT);
    await alice.page.fill("#audience", "x");
    await alice.page.fill("#expires", "soon");
    await alice.page.click("#new-delegation button[type=submit]");
    expect(await alice.page.textContent("#error")).toContain("duration must be seconds");
    await screenshot(alice.page, "delegations-error");
  });
});

describe("history", () => {
  it("lists my decisions newest first, in pages", async () => {
    // 21 more decisions (denials through the page's own JSON call), so there is a second page.
    const token = (bot.authJson() as Json).token as string;
    await alice.page.goto(`${idp.issuer}/inbox`);
    const csrf = await alice.page.evaluate(async () => {
      const r = await fetch("/delegations");
      return /name="csrf_token" value="([^"]+)"/.exec(await r.text())?.[1];
    });
    const ids: string[] = [];
    for (let i = 0; i < 21; i++) {
      const g = await api(idp.url, token).post("/api/grants", {
        target_host: "web1",
        audience: "escapes",
        grant_type: "once",
        command: ["echo", `history-${i}`],
      });
      expect(g.status).toBe(201);
      const r = await pageCall(alice.page, `/grants/${g.body.id}/deny`, { csrf_token: csrf });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      ids.push(g.body.id);
    }
    await alice.page.goto(`${idp.issuer}/history`);
    const rows = alice.page.locator("#history li");
    expect(await rows.count()).toBe(20);
    expect(await rows.first().getAttribute("data-id")).toBe(ids[20]);
    expect(await rows.first().locator(".cmd").textContent()).toBe("echo history-20");
    expect(await rows.first().locator(".badge").textContent()).toBe("denied");
    await screenshot(alice.page, "history");
    await alice.page.click("#older");
    const older = await alice.page
      .locator("#history li")
      .evaluateAll((els) => els.map((e) => e.getAttribute("data-id")));
    expect(older[0]).toBe(ids[0]);
    // Before those: the earlier decisions of this file (approved with the passkey, and denied).
    expect(older.length).toBeGreaterThanOrEqual(3);
    expect(await alice.page.locator("#history .badge").allTextContents()).toContain("approved");
  });
});

describe("CSRF and caching", () => {
  it("refuses state changes without the CSRF token, with another session's, cross-site, or without the Strict cookie", async () => {
    const id = await request();
    await alice.page.goto(`${idp.issuer}/grants/${id}`);
    await alice.page.waitForSelector("body[data-ready=yes]");
    const csrf = (await csrfOf(alice.page))!;
    const deny = `/grants/${id}/deny`;
    const none = await pageCall(alice.page, deny, {});
    expect(none.status).toBe(403);
    expect(none.body.detail).toContain("no CSRF token");
    const bobCsrf = await bob.page.evaluate(async () => {
      const r = await fetch("/delegations");
      return /name="csrf_token" value="([^"]+)"/.exec(await r.text())?.[1];
    });
    const foreign = await pageCall(alice.page, deny, { csrf_token: bobCsrf });
    expect(foreign.status).toBe(403);
    expect(foreign.body.detail).toContain("not this session's");
    // Cross-site: the browser says so (Sec-Fetch-Site, Origin), with a valid token and the cookies.
    const cross = await alice.context.request.post(`${idp.issuer}${deny}`, {
      data: { csrf_token: csrf },
      headers: { origin: "http://evil.example", "sec-fetch-site": "cross-site" },
    });
    expect(cross.status()).toBe(403);
    // Only the Lax session cookie (what a cross-site top-level POST would carry), everything else right.
    const session = (await alice.context.cookies()).find((c) => c.name === "__Host-apes-session")!.value;
    const lax = await fetch(`${idp.issuer}${deny}`, {
      method: "POST",
      headers: {
        cookie: `__Host-apes-session=${session}`,
        origin: idp.issuer,
        "content-type": "application/json",
      },
      body: JSON.stringify({ csrf_token: csrf }),
    });
    expect(lax.status).toBe(403);
    expect(((await lax.json()) as Json).detail).toContain("same-site cookie is missing");
    // A cross-site form post of the delegations page (url-encoded): refused too.
    const form = await alice.context.request.post(`${idp.issuer}/delegations`, {
      form: { csrf_token: csrf, delegate: BOT, audience: "evil" },
      headers: { origin: "http://evil.example", "sec-fetch-site": "cross-site" },
    });
    expect(form.status()).toBe(403);
    const revoke = await alice.context.request.post(`${idp.issuer}/delegations/revoke`, {
      form: { id: "x" },
      headers: { origin: idp.issuer, "sec-fetch-site": "same-origin" },
    });
    expect(revoke.status()).toBe(403);
    expect(await revoke.text()).toContain("the form has no CSRF token");
    // The inbox JSON is not for other sites' scripts either.
    const read = await alice.context.request.get(`${idp.issuer}/inbox/items`, {
      headers: { "sec-fetch-site": "cross-site" },
    });
    expect(read.status()).toBe(403);
    expect(await statusOf(id)).toBe("pending");
  });

  it("no page or JSON answer may be cached; every page has the CSP without inline script or style", async () => {
    const id = await request();
    for (const path of ["/inbox", `/grants/${id}`, "/history", "/delegations", "/account"]) {
      const res = await alice.page.request.get(`${idp.issuer}${path}`, { maxRedirects: 0 });
      expect(res.status(), path).toBe(200);
      const h = res.headers();
      expect(h["cache-control"], path).toBe("no-store");
      expect(h["content-security-policy"]).toBe(CONTENT_SECURITY_POLICY);
      const body = await res.text();
      expect(body).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
      expect(body).not.toMatch(/\sstyle=|<style/);
      expect(body).not.toMatch(/\son[a-z]+=/);
    }
    for (const path of ["/inbox/items", `/grants/${id}/state`]) {
      const res = await alice.page.request.get(`${idp.issuer}${path}`);
      expect(res.status(), path).toBe(200);
      expect(res.headers()["cache-control"], path).toBe("no-store");
    }
    expect(cspViolations).toEqual([]);
  });

  it("the navigation links every page, on a phone too", async () => {
    await alice.page.goto(`${idp.issuer}/account`);
    for (const [text, path] of [
      ["History", "/history"],
      ["Delegations", "/delegations"],
      ["Account", "/account"],
      ["Inbox", "/inbox"],
    ]) {
      await alice.page.click(`nav.nav a:text-is("${text}")`);
      await alice.page.waitForURL(`${idp.issuer}${path}`);
      expect(await alice.page.getAttribute(`nav.nav a:text-is("${text}")`, "aria-current")).toBe("page");
    }
    await screenshot(alice.page, "account-nav");
  });
});

describe("an IdP that accepts bearer approvals from old clients (--allow-bearer-approve)", () => {
  it("still approves nothing from a page without a passkey assertion", async () => {
    const old = await startWebIdp({ extraArgs: ["--allow-bearer-approve"] });
    try {
      const dave = await humanWithPasskey(browser, old, "dave@example.com");
      const agent = cliUser("helper+agent@example.com", old.issuer);
      await addUser(old.dataDir, agent.email, {
        agent: true,
        owner: dave.email,
        publicKey: agent.publicLine,
      });
      expect((await agent.run(["login", agent.email, "--key", agent.keyPath])).code).toBe(0);
      const r = await agent.run(["grants", "request", "--host", "web1", "--", "true"]);
      expect(r.code, r.stderr).toBe(0);
      const id = r.stdout.trim();
      await dave.page.goto(`${old.issuer}/grants/${id}`);
      await dave.page.waitForSelector("body[data-ready=yes]");
      const csrf = await csrfOf(dave.page);
      const none = await pageCall(dave.page, `/grants/${id}/approve`, { csrf_token: csrf });
      expect(none.status).toBe(403);
      expect(none.body.type).toMatch(/proof_required$/);
      // The passkey path works there too.
      await dave.page.click("#approve");
      await dave.page.waitForSelector("#outcome");
      expect(await dave.page.textContent("#outcome")).toContain("(proof: webauthn)");
      await dave.context.close();
    } finally {
      await old.stop();
    }
  });
});
