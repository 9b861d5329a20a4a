import { sign } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApprovalInput, approvalDigestHex } from "../../protocol/approval.ts";
import { decodeJwt } from "../../protocol/jwt.ts";
import { loadSchemas } from "../../protocol/schemas.ts";
import { signingInput } from "../../protocol/signatures.ts";
import {
  addUser,
  api,
  approvalInputOf,
  type Json,
  loginWithKey,
  ls,
  signApproval,
  startWorld,
  USERS,
  type World,
} from "../helpers/idp.ts";
import { cliUser } from "./cli-helpers.ts";

// An approval is a fresh proof of a credential bound to the grant (docs/signatures.md,
// "Approvals"), against the real IdP (`dist/apes idp serve`) and the real CLI.

const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const schemas = loadSchemas();
const problem = (code: string) => `https://openape.org/errors/${code}`;

function expectProblem(r: { status: number; body: Json; headers: Headers }, status: number, code: string) {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(r.headers.get("content-type")).toMatch(/^application\/problem\+json/);
  schemas.assert("error", r.body);
  expect(r.body.type).toBe(problem(code));
}

let w: World;
beforeAll(async () => {
  w = await startWorld();
});
afterAll(async () => {
  await w?.idp.stop();
});

let made = 0;
/** A new pending grant of bot (alice owns it, bob approves it too); argv ends in a counter, so none is reused. */
async function pending(argv = ["systemctl", "restart", "nginx"]) {
  const r = await w
    .as("bot")
    .post(w.grants, { ...ls([...argv, String(++made)]), grant_type: "once", reason: "deploy" });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body as Json;
}

const approve = (name: keyof typeof USERS, id: string, body: Record<string, unknown>) =>
  w.as(name).post(`${w.grants}/${id}/approve`, body);
const statusOf = async (id: string) => (await w.as("alice").get(`${w.grants}/${id}`)).body.status;

describe("approve needs a proof over the stored grant", () => {
  it("discovery advertises the proof types the IdP verifies", () => {
    expect(w.discovery.apes_approval_proofs_supported).toEqual(["ed25519"]);
  });

  it("an Ed25519 proof by the approver's key approves, and the grant records it", async () => {
    const g = await pending();
    const r = await approve("alice", g.id, { proof: w.proof("alice", g) });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    schemas.assert("grant", r.body);
    expect(r.body).toMatchObject({ status: "approved", decided_by: USERS.alice, approval_proof: "ed25519" });
    expect((await w.as("bot").get(`${w.grants}/${g.id}`)).body.approval_proof).toBe("ed25519");
    const line = w.idp
      .logs()
      .split("\n")
      .find((l) => l.includes('"grant approved"') && l.includes(g.id));
    expect(JSON.parse(line!)).toMatchObject({ grant: g.id, by: USERS.alice, proof: "ed25519" });
    // Without key_fingerprint too.
    const g2 = await pending(["true"]);
    const { key_fingerprint: _, ...bare } = w.proof("alice", g2);
    expect((await approve("alice", g2.id, { proof: bare })).status).toBe(200);
  });

  it("without a proof: 403 proof_required with what to do, and the grant stays pending", async () => {
    const g = await pending();
    const r = await approve("alice", g.id, {});
    expectProblem(r, 403, "proof_required");
    expect(r.body.detail).toContain("approval needs a proof");
    expect(r.body.detail).toContain("update apes, or the IdP operator may allow bearer approvals");
    expectProblem(await approve("alice", g.id, { grant_type: "always" }), 403, "proof_required");
    expect(await statusOf(g.id)).toBe("pending");
    // Deny needs none.
    expect((await w.as("alice").post(`${w.grants}/${g.id}/deny`)).body.status).toBe("denied");
  });

  it("refuses a proof made for anything but this grant, request, decision and approval", async () => {
    const g = await pending(["rm", "-rf", "/tmp/x"]);
    const other = await pending(["true"]);
    const base = approvalInputOf(w.discovery.issuer!, g);
    const signed = (input: ApprovalInput) => signApproval(input, USERS.alice, w.keys.alice.privateKey);
    const tampered = (change: (r: Json) => void) => {
      const request = structuredClone(g.request);
      change(request);
      return signed({ ...base, request });
    };
    const bad: [string, Json, Record<string, unknown>?][] = [
      ["another grant", w.proof("alice", other)],
      ["another grant id, same request", signed({ ...base, grantId: other.id })],
      ["another IdP", signed({ ...base, issuer: "https://id.example.com" })],
      ["another decision", signed({ ...base, decision: "deny" as "approve" })],
      ["another grant type (always, approving once)", signed({ ...base, grantType: "always" })],
      [
        "another duration",
        signed({ ...base, grantType: "timed", duration: 1800 }),
        { grant_type: "timed", duration: 3600 },
      ],
      ["the requested type, approving as always", signed(base), { grant_type: "always" }],
      ["a tampered argv", tampered((r) => (r.command[2] = "/tmp/y"))],
      ["argv split differently", tampered((r) => r.command.splice(1, 2, "-rf /tmp/x"))],
      ["another run_as", tampered((r) => (r.run_as = "nobody"))],
      ["another reason", tampered((r) => (r.reason = "cleanup"))],
      ["another target host", tampered((r) => (r.target_host = "web2"))],
      ["a request field added", tampered((r) => (r.permissions = ["x"]))],
      ["another approver named", signApproval(base, USERS.bob, w.keys.alice.privateKey)],
      ["another user's key (bob's)", signApproval(base, USERS.alice, w.keys.bob.privateKey)],
      ["the agent's key", signApproval(base, USERS.alice, w.keys.bot.privateKey)],
    ];
    for (const [name, proof, choice] of bad) {
      const r = await approve("alice", g.id, { ...(choice ?? {}), proof });
      expect(r.status, name).toBe(403);
      expect(r.body.type, `${name}: ${JSON.stringify(r.body)}`).toBe(problem("invalid_proof"));
    }
    // A login signature over the digest (purpose login) is not an approval.
    const login = sign(
      null,
      signingInput("login", base.issuer, USERS.alice, approvalDigestHex(base)),
      w.keys.alice.privateKey,
    ).toString("base64");
    expectProblem(
      await approve("alice", g.id, { proof: { type: "ed25519", signature: login } }),
      403,
      "invalid_proof",
    );
    // A fingerprint naming another key than the registered one.
    const wrongKey = { ...w.proof("alice", g), key_fingerprint: w.proof("bob", g).key_fingerprint };
    expectProblem(await approve("alice", g.id, { proof: wrongKey }), 403, "invalid_proof");
    expect(await statusOf(g.id)).toBe("pending");
    // The right proof still works after all of that.
    expect((await approve("alice", g.id, { proof: w.proof("alice", g) })).status).toBe(200);
  });

  it("bob's proof approves with bob's token, not with alice's", async () => {
    const g = await pending();
    const bobs = w.proof("bob", g);
    expectProblem(await approve("alice", g.id, { proof: bobs }), 403, "invalid_proof");
    const r = await approve("bob", g.id, { proof: bobs });
    expect(r.body).toMatchObject({ status: "approved", decided_by: USERS.bob, approval_proof: "ed25519" });
  });

  it("the approver's choice is covered: timed 30m approves only with a proof for timed 30m", async () => {
    const g = await pending();
    const r = await approve("alice", g.id, {
      grant_type: "timed",
      duration: "30m",
      proof: w.proof("alice", g, { grant_type: "timed", duration: 1800 }),
    });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.request).toMatchObject({ grant_type: "timed", duration: 1800 });
    expect(r.body.expires_at).toBe(r.body.decided_at + 1800);
  });

  it("malformed proofs are 400s", async () => {
    const g = await pending();
    const good = w.proof("alice", g);
    const malformed: unknown[] = [
      "sig",
      [good],
      { type: "rsa", signature: good.signature },
      { ...good, extra: 1 },
      { type: "ed25519", signature: "not base64!" },
      { type: "ed25519", signature: good.signature.slice(4) },
      { ...good, key_fingerprint: 7 },
      { type: "webauthn", response: "x" },
    ];
    for (const proof of malformed)
      expectProblem(await approve("alice", g.id, { proof }), 400, "invalid_request");
    // A proof has no place on deny.
    expectProblem(
      await w.as("alice").post(`${w.grants}/${g.id}/deny`, { proof: good }),
      400,
      "invalid_request",
    );
    expect(await statusOf(g.id)).toBe("pending");
  });

  it("a webauthn proof is refused until the IdP verifies passkeys", async () => {
    const g = await pending();
    const r = await approve("alice", g.id, {
      proof: { type: "webauthn", response: { id: "x", rawId: "x", type: "public-key", response: {} } },
    });
    expectProblem(r, 403, "invalid_proof");
    expect(r.body.detail).toContain("webauthn proofs need a passkey");
  });

  it("an agent's token never approves, even with a valid proof of its own key", async () => {
    const g = await pending();
    expectProblem(await approve("bot", g.id, { proof: w.proof("bot", g) }), 403, "forbidden");
    // Nor another agent's grant it could see (it sees none), nor a human's.
    const dave = (await w.as("dave").post(w.grants, { ...ls(["id"]), grant_type: "once" })).body;
    expectProblem(await approve("bot", dave.id, { proof: w.proof("bot", dave) }), 404, "not_found");
    expect(await statusOf(g.id)).toBe("pending");
  });

  it("a delegated token never approves, even with the delegator's valid proof", async () => {
    const d = await w.as("alice").post(w.delegations, {
      delegate: USERS.bob,
      audience: "apes-cli",
      grant_type: "always",
    });
    expect(d.status, JSON.stringify(d.body)).toBe(201);
    const t = await api(w.idp.url).post(
      w.discovery.token_endpoint!,
      new URLSearchParams({
        grant_type: EXCHANGE,
        actor_token: w.tokens.bob,
        delegation_grant_id: d.body.id,
        audience: "apes-cli",
      }).toString(),
      { "content-type": "application/x-www-form-urlencoded" },
    );
    expect(t.status, JSON.stringify(t.body)).toBe(200);
    const delegated = t.body.access_token as string;
    expect(decodeJwt(delegated).payload).toMatchObject({ sub: USERS.alice, act: { sub: USERS.bob } });
    const g = await pending();
    for (const proof of [w.proof("alice", g), w.proof("bob", g)]) {
      const r = await api(w.idp.url, delegated).post(`${w.grants}/${g.id}/approve`, { proof });
      expectProblem(r, 403, "forbidden");
    }
    const batch = await api(w.idp.url, delegated).post(`${w.grants}/batch`, {
      operations: [{ id: g.id, action: "approve", proof: w.proof("alice", g) }],
    });
    expect(batch.body.results[0]).toMatchObject({ success: false, error: "forbidden" });
    expect(await statusOf(g.id)).toBe("pending");
  });

  it("batch: each approve needs its own proof, checked like the single call", async () => {
    const a = await pending(["a"]);
    const b = await pending(["b"]);
    const c = await pending(["c"]);
    const d = await pending(["d"]);
    const r = await w.as("alice").post(`${w.grants}/batch`, {
      operations: [
        { id: a.id, action: "approve", proof: w.proof("alice", a) },
        { id: b.id, action: "approve" },
        { id: c.id, action: "approve", proof: w.proof("alice", a) },
        { id: d.id, action: "deny" },
      ],
    });
    expect(r.status).toBe(200);
    expect(r.body.results).toEqual([
      { id: a.id, success: true, status: "approved" },
      expect.objectContaining({ id: b.id, success: false, error: "proof_required" }),
      expect.objectContaining({ id: c.id, success: false, error: "invalid_proof" }),
      { id: d.id, success: true, status: "denied" },
    ]);
    expect((await w.as("alice").get(`${w.grants}/${a.id}`)).body.approval_proof).toBe("ed25519");
    expect(await statusOf(b.id)).toBe("pending");
    expect(await statusOf(c.id)).toBe("pending");
  });
});

describe("apes grants approve signs the approval with the session's key", () => {
  const erin = "erin@example.com";
  let user: ReturnType<typeof cliUser>;
  let erinToken: string;
  beforeAll(async () => {
    user = cliUser(erin, w.idp.url);
    // The admin command works beside the running server.
    await addUser(w.idp.dataDir, erin, { publicKey: user.publicLine });
    const login = await user.run(["login", erin, "--key", user.keyPath]);
    expect(login.code, login.stderr).toBe(0);
    erinToken = await loginWithKey(w.idp.url, erin, user.privateKey);
  });

  const ownGrant = async (argv: string[]) => {
    const r = await api(w.idp.url, erinToken).post(w.grants, { ...ls(argv), grant_type: "once" });
    expect(r.status).toBe(201);
    return r.body.id as string;
  };

  it("approves with an ed25519 proof (once, and as timed with a duration)", async () => {
    const id = await ownGrant(["uptime"]);
    const r = await user.run(["--json", "grants", "approve", id]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ id, status: "approved", approval_proof: "ed25519" });
    const id2 = await ownGrant(["uptime", "-p"]);
    const t = await user.run(["--json", "grants", "approve", id2, "--approval", "timed", "--duration", "1h"]);
    expect(t.code, t.stderr).toBe(0);
    expect(JSON.parse(t.stdout)).toMatchObject({
      request: { grant_type: "timed", duration: 3600 },
      approval_proof: "ed25519",
    });
  });

  it("a session without a key (a browser login) cannot approve here: exit 77, pointing at the browser", async () => {
    const id = await ownGrant(["hostname"]);
    const keyless = user.authJson();
    delete keyless.key_path;
    delete keyless.key_fingerprint;
    const file = join(user.env.XDG_CONFIG_HOME!, "apes", "auth.json");
    writeFileSync(file, JSON.stringify(keyless), { mode: 0o600 });
    const r = await user.run(["grants", "approve", id]);
    expect(r.code, r.stderr).toBe(77);
    expect(r.stderr).toContain("logged in without a key");
    expect(r.stderr).toContain("in the browser");
    expect(
      await api(w.idp.url, erinToken)
        .get(`${w.grants}/${id}`)
        .then((x) => x.body.status),
    ).toBe("pending");
    const again = await user.run(["login", erin, "--key", user.keyPath]);
    expect(again.code, again.stderr).toBe(0);
  });
});

describe("idp serve --allow-bearer-approve (older clients)", () => {
  let old: World;
  beforeAll(async () => {
    old = await startWorld({ extraArgs: ["--allow-bearer-approve"] });
  });
  afterAll(async () => {
    await old?.idp.stop();
  });

  it("warns at start, accepts an approve without a proof, records and logs it as bearer", async () => {
    expect(old.idp.logs()).toContain("--allow-bearer-approve");
    const warning = old.idp
      .logs()
      .split("\n")
      .find((l) => l.includes("approvals without a proof accepted"));
    expect(JSON.parse(warning!)).toMatchObject({ level: "warn" });
    const g = (await old.as("bot").post(old.grants, { ...ls(["id"]), grant_type: "once" })).body;
    const r = await old.as("alice").post(`${old.grants}/${g.id}/approve`, {});
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body).toMatchObject({ status: "approved", approval_proof: "bearer" });
    schemas.assert("grant", r.body);
    expect(old.idp.logs()).toContain("grant approved without a proof");
  });

  it("still checks a proof that is sent, and still refuses agents and delegated tokens", async () => {
    const g = (await old.as("bot").post(old.grants, { ...ls(["id", "-u"]), grant_type: "once" })).body;
    const bobs = signApproval(
      approvalInputOf(old.discovery.issuer!, g),
      USERS.alice,
      old.keys.bob.privateKey,
    );
    expectProblem(
      await old.as("alice").post(`${old.grants}/${g.id}/approve`, { proof: bobs }),
      403,
      "invalid_proof",
    );
    expectProblem(await old.as("bot").post(`${old.grants}/${g.id}/approve`, {}), 403, "forbidden");
    const ok = await old.approve("alice", g.id);
    expect(ok.body).toMatchObject({ status: "approved", approval_proof: "ed25519" });
  });
});
