import { createECDH, createPublicKey, randomBytes, verify } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyWebhook } from "../../protocol/webhook.ts";
import {
  addUser,
  api,
  loginWithKey,
  loopbackCert,
  ls,
  newKey,
  runApes,
  startIdp,
  startWorld,
  storeArgs,
  testStore,
  USERS,
  type World,
} from "../helpers/idp.ts";
import {
  decryptWebPush,
  type HttpReceiver,
  httpReceiver,
  type SmtpServer,
  smtpServer,
} from "../helpers/receivers.ts";

// Notifications from the real IdP (dist/apes idp serve) to real receivers on loopback: what they
// get, signed and without secrets; retries, the dead-letter queue, a restart with undelivered rows.

let world: World;
let dir: string;
let hook: HttpReceiver; // webhooks
let ntfy: HttpReceiver;
let push: HttpReceiver; // a Web Push service
let smtp: SmtpServer;
const SMTP_USER = "apes-relay";
const SMTP_PASS = "relay-pass-Zq81";

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "apes-notify-"));
  const tls = loopbackCert(dir);
  [hook, ntfy, push, smtp] = await Promise.all([
    httpReceiver(),
    httpReceiver(),
    httpReceiver(),
    smtpServer(tls),
  ]);
  writeFileSync(join(dir, "smtp-auth"), `${SMTP_USER}:${SMTP_PASS}\n`, { mode: 0o600 });
  const config = join(dir, "idp.toml");
  writeFileSync(
    config,
    `[notify]
link_base = "https://id.example.com"
allow_local_targets = true
# Long enough that a loaded machine (or PostgreSQL) delivers the other receiver well inside it.
timeout = "3s"
max_attempts = 4
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
  world = await startWorld({ extraArgs: ["--config", config] });
});

afterAll(async () => {
  await world?.idp.stop();
  await Promise.all([hook?.close(), ntfy?.close(), push?.close(), smtp?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const N = "/api/notify";
let path = 0;

/** A webhook subscription of `who` at a fresh path of the receiver; its id and secret. */
async function subscribe(who: "alice" | "bob" | "bot", events?: string[]) {
  const target = `${hook.url}/h${++path}`;
  const r = await world
    .as(who)
    .post(`${N}/subscriptions`, { channel: "webhook", target, ...(events ? { events } : {}) });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return { id: r.body.id as string, secret: r.body.secret as string, path: `/h${path}` };
}

async function request(argv = ["ls", "/root"]) {
  const r = await world
    .as("bot")
    .post(world.grants, { ...ls(argv), grant_type: "once", reason: "nightly cleanup" });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.id as string;
}

const at = (r: HttpReceiver, p: string) => r.received.filter((x) => x.path === p);

async function waitAt(r: HttpReceiver, p: string, count: number, timeoutMs = 20_000) {
  const end = Date.now() + timeoutMs;
  while (at(r, p).length < count) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${count} request(s) at ${p}`);
    await new Promise((res) => setTimeout(res, 25));
  }
  return at(r, p);
}

async function deliveries(status?: string) {
  const r = await runApes([
    "--json",
    "idp",
    "notifications",
    "list",
    "--data",
    world.idp.dataDir,
    ...(status ? [`--${status}`] : []),
  ]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as {
    id: number;
    key: string;
    status: string;
    attempts: number;
    last_error: string | null;
  }[];
}

async function until<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("webhooks", () => {
  it("the owner and the approver each get one signed webhook with what to look at, and no secret", async () => {
    const a = await subscribe("alice");
    const b = await subscribe("bob");
    const id = await request(["systemctl", "restart", "nginx"]);
    const [ra] = await waitAt(hook, a.path, 1);
    const [rb] = await waitAt(hook, b.path, 1);
    const now = Math.floor(Date.now() / 1000);
    for (const [r, s] of [
      [ra!, a],
      [rb!, b],
    ] as const) {
      const check = verifyWebhook(s.secret, r.headers as Record<string, string>, r.body, now);
      expect(check).toMatchObject({ ok: true, id: `${id}.pending.${s.id}` });
      // Signed with the other subscription's secret, or a byte changed: refused.
      expect(
        verifyWebhook(s === a ? b.secret : a.secret, r.headers as Record<string, string>, r.body, now).ok,
      ).toBe(false);
      expect(
        verifyWebhook(
          s.secret,
          r.headers as Record<string, string>,
          Buffer.concat([r.body, Buffer.from(" ")]),
          now,
        ).ok,
      ).toBe(false);
      // Replayed later than the window: refused.
      expect(verifyWebhook(s.secret, r.headers as Record<string, string>, r.body, now + 301)).toEqual({
        ok: false,
        reason: "timestamp outside the replay window",
      });
      const event = JSON.parse(r.body.toString("utf8"));
      expect(event).toMatchObject({
        type: "grant.pending",
        id: `${id}.pending.${s.id}`,
        data: {
          event: "grant.pending",
          grant_id: id,
          requester: USERS.bot,
          target_host: "web1",
          command: "systemctl restart nginx",
          reason: "nightly cleanup",
          status: "pending",
          link: `https://id.example.com/grants/${id}`,
        },
      });
      const text = r.body.toString("utf8");
      for (const t of Object.values(world.tokens)) expect(text).not.toContain(t);
      expect(text).not.toContain(a.secret);
      expect(text).not.toContain(b.secret);
    }
    // Nobody else: the requester itself is not told of its own pending grant, dave and carol never.
    const logs = world.idp.logs();
    for (const t of Object.values(world.tokens)) expect(logs).not.toContain(t);
    expect(logs).not.toContain(a.secret.slice(6));
    expect(logs).not.toContain(b.secret.slice(6));
  });

  it("the requester hears of the decision; subscriptions see only the events they chose", async () => {
    const mine = await subscribe("bot", ["decided"]);
    const alicePendingOnly = await subscribe("alice", ["pending"]);
    const id = await request();
    await waitAt(hook, alicePendingOnly.path, 1);
    expect((await world.approve("alice", id)).status).toBe(200);
    const [r] = await waitAt(hook, mine.path, 1);
    expect(JSON.parse(r!.body.toString("utf8")).data).toMatchObject({
      event: "grant.decided",
      grant_id: id,
      status: "approved",
      decided_by: USERS.alice,
    });
    expect(at(hook, mine.path)).toHaveLength(1); // not told of its own pending grant
    expect(at(hook, alicePendingOnly.path)).toHaveLength(1); // not of the decision
  });

  it("a receiver that answers 500 and then recovers gets it on a retry, same id", async () => {
    const s = await subscribe("alice", ["pending"]);
    hook.script.set(s.path, [500, 503]);
    const id = await request();
    const got = await waitAt(hook, s.path, 3);
    expect(got.map((r) => r.headers["webhook-id"])).toEqual(Array(3).fill(`${id}.pending.${s.id}`));
    const row = await until("delivered", async () =>
      (await deliveries()).find((d) => d.key === `${id}.pending.${s.id}` && d.status === "delivered"),
    );
    expect(row.attempts).toBe(3);
  });

  it("a receiver that is down gets it once it is back", async () => {
    const s = await subscribe("alice", ["pending"]);
    await hook.down();
    try {
      const id = await request();
      await until("a failed attempt", async () => {
        const d = (await deliveries()).find((x) => x.key === `${id}.pending.${s.id}`);
        return d && d.attempts >= 1 ? d : undefined;
      });
      expect(at(hook, s.path)).toHaveLength(0);
    } finally {
      await hook.up();
    }
    // Backoff is capped at 200 ms here, and max_attempts 4: it may already be dead, then retry it.
    const row = await until("delivered or dead", async () =>
      (await deliveries()).find((d) => d.key.endsWith(s.id) && d.status !== "pending"),
    );
    if (row.status === "dead")
      expect(
        (await runApes(["idp", "notifications", "retry", String(row.id), "--data", world.idp.dataDir])).code,
      ).toBe(0);
    await waitAt(hook, s.path, 1);
  });

  it("a receiver that always fails ends in the dead-letter queue; retry delivers it", async () => {
    const s = await subscribe("alice", ["pending"]);
    hook.script.set(s.path, [500, 500, 500, 500]);
    const id = await request();
    const key = `${id}.pending.${s.id}`;
    const dead = await until("dead", async () => (await deliveries("dead")).find((d) => d.key === key));
    expect(dead).toMatchObject({ attempts: 4, last_error: "HTTP 500 (gave up after 4 attempts)" });
    expect(at(hook, s.path)).toHaveLength(4);
    // The owner sees it too.
    const mine = await world.as("alice").get(`${N}/deliveries?status=dead`);
    expect(mine.body.data.map((d: { key: string }) => d.key)).toContain(key);
    expect(
      (await world.as("bob").get(`${N}/deliveries?status=dead`)).body.data.map((d: { key: string }) => d.key),
    ).not.toContain(key);
    const retry = await runApes([
      "--json",
      "idp",
      "notifications",
      "retry",
      String(dead.id),
      "--data",
      world.idp.dataDir,
    ]);
    expect(retry.code, retry.stderr).toBe(0);
    expect(JSON.parse(retry.stdout)).toEqual({ retried: [dead.id], not_dead: [] });
    await waitAt(hook, s.path, 5);
    await until("delivered", async () =>
      (await deliveries()).find((d) => d.key === key && d.status === "delivered"),
    );
    // Not dead any more: a second retry is refused.
    expect(
      (await runApes(["idp", "notifications", "retry", String(dead.id), "--data", world.idp.dataDir])).code,
    ).not.toBe(0);
  });

  it("410 Gone removes the subscription", async () => {
    const s = await subscribe("alice", ["pending"]);
    hook.script.set(s.path, [410]);
    await request();
    await waitAt(hook, s.path, 1);
    await until("removed", async () => {
      const list = (await world.as("alice").get(`${N}/subscriptions`)).body.data as { id: string }[];
      return list.some((x) => x.id === s.id) ? undefined : true;
    });
  });

  it("a receiver that hangs does not hold up grant creation", async () => {
    const s = await subscribe("alice", ["pending"]);
    hook.script.set(s.path, ["hang"]);
    await request();
    await waitAt(hook, s.path, 1);
    expect(hook.hanging()).toBe(1);
    // Another grant is created (and answered) while that delivery still hangs.
    await request();
    expect(hook.hanging()).toBe(1);
    // The deadline (3 s) ends it; the retry is delivered.
    await waitAt(hook, s.path, 3);
  });
});

describe("a receiver that hangs holds one delivery slot, not all of them", () => {
  it("another subscription is delivered while every row of the hanging one waits", async () => {
    const slow = await subscribe("alice", ["pending"]);
    hook.script.set(slow.path, Array(10).fill("hang"));
    // More rows for the hanging receiver than there are slots (4), all due before the next one.
    for (let i = 0; i < 5; i++) await request(["echo", String(i)]);
    await waitAt(hook, slow.path, 1);
    const fast = await subscribe("bob", ["pending"]);
    const before = hook.abandoned();
    await request(["echo", "fast"]);
    await waitAt(hook, fast.path, 1);
    // Delivered before the IdP gave up on any hanging request (3 s deadline): no slot was needed back.
    expect(hook.abandoned()).toBe(before);
    expect(at(hook, slow.path)).toHaveLength(1);
    for (const s of [slow, fast])
      expect((await world.as(s === slow ? "alice" : "bob").delete(`${N}/subscriptions/${s.id}`)).status).toBe(
        204,
      );
  });
});

describe("a restart loses nothing", () => {
  it("rows written before a SIGKILL are delivered by the next start", async () => {
    const s = await subscribe("alice", ["pending"]);
    await hook.down();
    let id: string;
    try {
      id = await request();
      // Answered means committed: the row is in the outbox now. Kill before it can be delivered.
      await world.idp.kill("SIGKILL");
    } finally {
      await hook.up();
    }
    expect(at(hook, s.path)).toHaveLength(0);
    await world.idp.restart();
    await world.relogin();
    const [r] = await waitAt(hook, s.path, 1);
    expect(r!.headers["webhook-id"]).toBe(`${id}.pending.${s.id}`);
  });
});

describe("ntfy, mail and Web Push", () => {
  it("ntfy: a POST to the configured server's topic with title, text and click link", async () => {
    const r = await world
      .as("alice")
      .post(`${N}/subscriptions`, { channel: "ntfy", target: "alice-approvals" });
    expect(r.status).toBe(201);
    expect(r.body.secret).toBeUndefined();
    const id = await request(["rm", "-rf", "/tmp/x"]);
    const [got] = await waitAt(ntfy, "/alice-approvals", 1);
    expect(got!.headers.title).toBe("apes: bot@example.com asks for approval on web1");
    expect(got!.headers.click).toBe(`https://id.example.com/grants/${id}`);
    const text = got!.body.toString("utf8");
    expect(text).toContain("command: rm -rf /tmp/x");
    expect(text).toContain(`review it: https://id.example.com/grants/${id}`);
    for (const t of Object.values(world.tokens)) expect(text).not.toContain(t);
  });

  it("mail: over STARTTLS with AUTH, to the user's own address, a summary and a link (no approve link)", async () => {
    const r = await world.as("bob").post(`${N}/subscriptions`, { channel: "email" });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect(r.body.target).toBe(USERS.bob);
    const before = smtp.mails.length;
    const id = await request(["apt-get", "upgrade"]);
    const mails = await smtp.waitFor(before + 1);
    // Quoted-printable (RFC 2045): soft line breaks and =XX escapes.
    const qp = (t: string) =>
      t.replace(/=\n/g, "").replace(/=([0-9A-F]{2})/g, (_, h) => String.fromCharCode(Number.parseInt(h, 16)));
    const unfold = (t: string) => t.replace(/\n[ \t]+/g, " ");
    const mail = mails.map((m) => ({ ...m, data: unfold(qp(m.data)) })).find((m) => m.data.includes(id))!;
    expect(mail).toMatchObject({
      from: "apes@id.example.com",
      to: [USERS.bob],
      tls: true,
      auth: { user: SMTP_USER, pass: SMTP_PASS },
    });
    expect(mail.data).toContain("Subject: apes: bot@example.com asks for approval on web1");
    expect(mail.data).toContain("command: apt-get upgrade");
    expect(mail.data).toContain(`https://id.example.com/grants/${id}`);
    expect(mail.data).toContain(`Message-ID: <${id}.pending.${r.body.id}@apes.invalid>`);
    expect(mail.data).not.toMatch(/approve\?|\/approve/);
    expect(world.idp.logs()).not.toContain(SMTP_PASS);
  });

  it("mail only to one's own address", async () => {
    const r = await world.as("bob").post(`${N}/subscriptions`, { channel: "email", target: USERS.alice });
    expect(r.status).toBe(403);
  });

  it("Web Push: VAPID-signed, RFC 8291 encrypted; the subscriber's keys decrypt it", async () => {
    const vapid = await world.as("alice").get(`${N}/vapid`);
    expect(vapid.status).toBe(200);
    // The browser's side: a P-256 key pair and an auth secret.
    const ecdh = createECDH("prime256v1");
    const p256dh = ecdh.generateKeys();
    const auth = randomBytes(16);
    const r = await world.as("alice").post(`${N}/subscriptions`, {
      channel: "webpush",
      target: `${push.url}/push/alice-1`,
      keys: { p256dh: p256dh.toString("base64url"), auth: auth.toString("base64url") },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const id = await request(["reboot"]);
    const got = (await waitAt(push, "/push/alice-1", 1)).find(() => true)!;
    expect(got.headers["content-encoding"]).toBe("aes128gcm");
    expect(got.body.toString("utf8")).not.toContain("reboot");
    const plain = decryptWebPush(got.body, ecdh, auth);
    const msg = JSON.parse(plain.toString("utf8"));
    expect(msg).toMatchObject({
      title: "apes: bot@example.com asks for approval on web1",
      url: `https://id.example.com/grants/${id}`,
      grant_id: id,
    });
    expect(msg.body).toContain("command: reboot");
    // VAPID (RFC 8292): a JWT for the push service's origin, signed by the key the IdP publishes.
    const m = /^vapid t=([^,]+), k=(.+)$/.exec(String(got.headers.authorization));
    expect(m?.[2]).toBe(vapid.body.public_key);
    const [h, p, sig] = m![1]!.split(".");
    expect(JSON.parse(Buffer.from(p!, "base64url").toString())).toMatchObject({
      aud: push.url,
      sub: "mailto:admin@example.com",
    });
    const raw = Buffer.from(m![2]!, "base64url");
    const key = createPublicKey({
      key: {
        kty: "EC",
        crv: "P-256",
        x: raw.subarray(1, 33).toString("base64url"),
        y: raw.subarray(33).toString("base64url"),
      },
      format: "jwk",
    });
    expect(
      verify(
        "sha256",
        Buffer.from(`${h}.${p}`),
        { key, dsaEncoding: "ieee-p1363" },
        Buffer.from(sig!, "base64url"),
      ),
    ).toBe(true);
    // 404 from the push service: the subscription is gone.
    push.script.set("/push/alice-1", [404]);
    await request();
    await waitAt(push, "/push/alice-1", 2);
    await until("removed", async () => {
      const list = (await world.as("alice").get(`${N}/subscriptions`)).body.data as { channel: string }[];
      return list.some((x) => x.channel === "webpush") ? undefined : true;
    });
  });
});

describe("subscriptions are checked", () => {
  it.each([
    ["plain http off loopback", { channel: "webhook", target: "http://hooks.example.com/x" }],
    ["credentials in the URL", { channel: "webhook", target: "https://user:pw@hooks.example.com/x" }],
    ["too long", { channel: "webhook", target: `https://hooks.example.com/${"a".repeat(2100)}` }],
    ["not http(s)", { channel: "webhook", target: "file:///etc/passwd" }],
    ["not a topic", { channel: "ntfy", target: "../admin" }],
    ["unknown channel", { channel: "sms", target: "+1" }],
    ["unknown event", { channel: "webhook", target: "https://hooks.example.com/x", events: ["all"] }],
    [
      "short keys",
      { channel: "webpush", target: "https://push.example.com/x", keys: { p256dh: "AAAA", auth: "AAAA" } },
    ],
    ["an unknown field", { channel: "webhook", target: "https://hooks.example.com/x", secret: "mine" }],
  ] as [string, Record<string, unknown>][])("refused (400): %s", async (_what, body) => {
    expect((await world.as("dave").post(`${N}/subscriptions`, body)).status).toBe(400);
  });

  it("others' subscriptions cannot be removed or tested; unauthenticated calls are refused", async () => {
    const s = await subscribe("alice", ["pending"]);
    expect((await world.as("bob").delete(`${N}/subscriptions/${s.id}`)).status).toBe(404);
    expect((await world.as("bob").post(`${N}/subscriptions/${s.id}/test`)).status).toBe(404);
    expect(
      (await world.as("bob").get(`${N}/subscriptions`)).body.data.map((x: { id: string }) => x.id),
    ).not.toContain(s.id);
    expect(
      (await world.as("alice").get(`${N}/subscriptions`)).body.data.find(
        (x: { id: string }) => x.id === s.id,
      ),
    ).not.toHaveProperty("secret");
    const anon = await fetch(`${world.idp.url}${N}/subscriptions`);
    expect(anon.status).toBe(401);
    expect((await world.as("alice").delete(`${N}/subscriptions/${s.id}`)).status).toBe(204);
  });

  it("by default, no target on this machine or a local network (the IdP is nobody's proxy)", async () => {
    const key = newKey("eve");
    const other = await startIdp({ dataDir: join(dir, "default") });
    try {
      await addUser(other.dataDir, "eve@example.com", { publicKey: key.publicLine });
      const eve = api(other.url, await loginWithKey(other.url, "eve@example.com", key.privateKey));
      for (const target of [
        `${hook.url}/x`,
        "https://127.0.0.1/x",
        "https://localhost:8443/x",
        "https://10.1.2.3/x",
        "https://192.168.0.1/x",
        "https://169.254.169.254/latest",
        "https://[::1]/x",
        "https://[fd00::1]/x",
        "https://[::ffff:127.0.0.1]/x",
      ]) {
        const r = await eve.post(`${N}/subscriptions`, { channel: "webhook", target });
        expect(r.status, target).toBe(400);
      }
      expect(
        (await eve.post(`${N}/subscriptions`, { channel: "webhook", target: "https://hooks.example.com/x" }))
          .status,
      ).toBe(201);
    } finally {
      await other.stop();
    }
  });

  it("a config with an unknown key refuses to start (exit 78)", async () => {
    const bad = join(dir, "bad.toml");
    writeFileSync(bad, "[notify]\nretries = 3\n");
    const r = await runApes([
      "idp",
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--data",
      join(dir, "other"),
      "--config",
      bad,
    ]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('unknown key "notify.retries"');
  });

  it("the VAPID key pair is kept 0600 in the data dir (PostgreSQL: sealed in the database)", async () => {
    const file = join(world.idp.dataDir, "vapid.json");
    if (testStore() === "postgres") {
      // One pair for every instance, sealed with the key file: the database alone does not reveal it.
      expect(existsSync(file)).toBe(false);
      const c = new pg.Client({ connectionString: storeArgs(world.idp.dataDir)[1]! });
      await c.connect();
      try {
        const { rows } = await c.query("SELECT value FROM settings WHERE name = 'setting:vapid'");
        expect(rows).toHaveLength(1);
        expect(rows[0].value).not.toContain("publicKey");
      } finally {
        await c.end();
      }
      return;
    }
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(file, "utf8"))).toHaveProperty("publicKey");
  });
});

describe("a disabled account", () => {
  it("hears nothing more (last: bob stays disabled)", async () => {
    const a = await subscribe("alice", ["pending"]);
    const b = await subscribe("bob", ["pending"]);
    const off = await runApes(["idp", "users", "disable", USERS.bob, "--data", world.idp.dataDir]);
    expect(off.code, off.stderr).toBe(0);
    const first = await request(["echo", "after-disable"]);
    const [got] = await waitAt(hook, a.path, 1);
    expect(JSON.parse(got!.body.toString("utf8")).data.grant_id).toBe(first);
    // A later grant reaches alice too; bob's subscription got neither.
    await request(["echo", "again"]);
    await waitAt(hook, a.path, 2);
    expect(at(hook, b.path)).toHaveLength(0);
  });
});
