import { spawn } from "node:child_process";
import { createPrivateKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type VerifyGrantOptions, verifyAuthzJwt } from "../../client/verify-grant.ts";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { signJwt } from "../../protocol/jwt.ts";
import { loadSchemas } from "../../protocol/schemas.ts";
import {
  addUser,
  apesBin,
  api,
  approveWithProof,
  type IdpHandle,
  loginWithKey,
  newKey,
  startIdp,
} from "../helpers/idp.ts";
import { jwtClaims } from "./cli-helpers.ts";

// The target side of the grant flow against a real IdP: the mission's example body, the
// AuthZ-JWT it yields, and the negative matrix of `apes grants verify` (the real binary) and of
// the module it is a thin command over (client/verify-grant.ts).

const EXAMPLE_BODY =
  '{"requester":"agent@example.com","target":"prod-server","grant_type":"once","permissions":["deploy"],"reason":"Deploy hotfix #123"}';
const schemas = loadSchemas();

let idp: IdpHandle;
let grants: string;
const agentKey = newKey("agent");
const aliceKey = newKey("alice");
let agentToken: string;
let aliceToken: string;
const home = mkdtempSync(join(tmpdir(), "apes-verify-home-"));

beforeAll(async () => {
  idp = await startIdp();
  await addUser(idp.dataDir, "alice@example.com", { publicKey: aliceKey.publicLine });
  await addUser(idp.dataDir, "agent@example.com", {
    agent: true,
    owner: "alice@example.com",
    publicKey: agentKey.publicLine,
  });
  agentToken = await loginWithKey(idp.url, "agent@example.com", agentKey.privateKey);
  aliceToken = await loginWithKey(idp.url, "alice@example.com", aliceKey.privateKey);
  grants = (await api(idp.url).get("/.well-known/openid-configuration")).body.openape_grants_endpoint;
});

afterAll(async () => {
  await idp?.stop();
});

/** Agent asks (body as given), alice approves, the agent fetches the AuthZ-JWT. */
async function approvedToken(body: string | Record<string, unknown>): Promise<{ id: string; jwt: string }> {
  const created = await api(idp.url, agentToken).post(grants, body);
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const id = created.body.id as string;
  expect((await approveWithProof(idp.url, aliceToken, id, aliceKey.privateKey)).status).toBe(200);
  const t = await api(idp.url, agentToken).post(`${grants}/${id}/token`);
  expect(t.status).toBe(200);
  return { id, jwt: t.body.authz_jwt };
}

const permissionGrant = (permissions: string[], extra: Record<string, unknown> = {}) =>
  approvedToken({ target: "prod-server", grant_type: "once", permissions, ...extra });

/** The IdP's current signing key, read from its store: a genuinely signed token with chosen claims. */
function idpSigningKey(): { kid: string; privateKey: string } {
  const db = new DatabaseSync(join(idp.dataDir, "idp.sqlite"), { readOnly: true });
  try {
    const row = db
      .prepare("SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC")
      .get() as { kid: string; private_key: string };
    return { kid: row.kid, privateKey: row.private_key };
  } finally {
    db.close();
  }
}

function resign(
  claims: Record<string, unknown>,
  key: { kid: string; privateKey: KeyObject | string },
): string {
  const privateKey = typeof key.privateKey === "string" ? createPrivateKey(key.privateKey) : key.privateKey;
  return signJwt(claims, { kid: key.kid, privateKey });
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

/** Runs the real `apes grants verify` with the token on stdin. */
function verifyCli(
  args: string[],
  stdin: string,
  userHome = home,
): Promise<{ code: number; stdout: string; stderr: string; json?: Record<string, unknown> }> {
  return new Promise((resolve) => {
    const p = spawn(apesBin(), ["grants", "verify", ...args], {
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HOME: userHome,
        XDG_CONFIG_HOME: join(userHome, "cfg"),
        XDG_CACHE_HOME: join(userHome, "cache"),
      },
    });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (c) => {
      stdout += c;
    });
    p.stderr.on("data", (c) => {
      stderr += c;
    });
    const timer = setTimeout(() => p.kill("SIGKILL"), 20_000);
    p.on("exit", (code) => {
      clearTimeout(timer);
      let json: Record<string, unknown> | undefined;
      try {
        json = JSON.parse(stdout);
      } catch {
        // not --json
      }
      resolve({ code: code ?? 1, stdout, stderr, ...(json ? { json } : {}) });
    });
    p.stdin.on("error", () => {}); // EPIPE when apes stops reading an oversized token: expected
    p.stdin.end(stdin);
  });
}

describe("the mission's example body", () => {
  it("is accepted byte for byte and yields the AuthZ-JWT of the grant flow, schema-valid", async () => {
    const created = await api(idp.url, agentToken).post(grants, EXAMPLE_BODY);
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    schemas.assert("grant", created.body);
    expect(created.body.request).toEqual({
      requester: "agent@example.com",
      target_host: "prod-server",
      audience: "prod-server",
      grant_type: "once",
      permissions: ["deploy"],
      reason: "Deploy hotfix #123",
    });
    const id = created.body.id;
    expect((await approveWithProof(idp.url, aliceToken, id, aliceKey.privateKey)).status).toBe(200);
    const t = await api(idp.url, agentToken).post(`${grants}/${id}/token`);
    expect(t.status).toBe(200);
    const claims = jwtClaims(t.body.authz_jwt);
    schemas.assert("authz-jwt-claims", claims);
    expect(claims).toMatchObject({
      sub: "agent@example.com",
      act: "agent",
      aud: "prod-server",
      target_host: "prod-server",
      grant_type: "once",
      permissions: ["deploy"],
      decided_by: "alice@example.com",
      grant_id: id,
    });
    expect(claims.exp).toBe((claims.iat as number) + 300);
    expect(claims.command).toBeUndefined();
  });

  it("a human's own grant says act human", async () => {
    const created = await api(idp.url, aliceToken).post(grants, {
      target: "prod-server",
      grant_type: "once",
      permissions: ["deploy"],
    });
    expect(created.status).toBe(201);
    await approveWithProof(idp.url, aliceToken, created.body.id, aliceKey.privateKey);
    const t = await api(idp.url, aliceToken).post(`${grants}/${created.body.id}/token`);
    expect(jwtClaims(t.body.authz_jwt)).toMatchObject({ sub: "alice@example.com", act: "human" });
  });

  it("refuses target and target_host naming different systems, and the reserved session audience", async () => {
    const both = await api(idp.url, agentToken).post(grants, {
      target: "prod-server",
      target_host: "staging",
      grant_type: "once",
      permissions: ["deploy"],
    });
    expect(both.status).toBe(400);
    expect(both.body.detail).toContain("target and target_host");
    const reserved = await api(idp.url, agentToken).post(grants, {
      target: "apes-cli",
      grant_type: "once",
      permissions: ["deploy"],
    });
    expect(reserved.status).toBe(400);
  });
});

describe("apes grants verify and verifyAuthzJwt: the negative matrix", () => {
  let valid: { id: string; jwt: string };
  let commandGrant: { id: string; jwt: string };
  const argv = ["systemctl", "restart", "nginx"];
  const base = (): VerifyGrantOptions => ({ issuers: [idp.issuer], audience: "prod-server" });
  const cliBase = () => ["--issuer", idp.issuer, "--audience", "prod-server"];

  beforeAll(async () => {
    valid = await permissionGrant(["deploy", "restart"]);
    commandGrant = await approvedToken({
      target_host: "web1",
      audience: "web1",
      grant_type: "once",
      command: argv,
    });
  });

  it("accepts a valid token (exit 0, --json {valid, claims})", async () => {
    const r = await verifyCli(["--json", ...cliBase(), "--permission", "deploy"], `${valid.jwt}\n`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ valid: true, claims: { grant_id: valid.id, act: "agent" } });
    expect(r.json).not.toHaveProperty("reason");
    const m = await verifyAuthzJwt(valid.jwt, { ...base(), permissions: ["deploy", "restart"] });
    expect(m).toMatchObject({ valid: true, claims: { grant_id: valid.id } });
    // From a file too.
    const file = join(home, "token");
    writeFileSync(file, valid.jwt, { mode: 0o600 });
    expect((await verifyCli([...cliBase(), "--token-file", file], "")).code).toBe(0);
  });

  it("refuses each bad token with its one reason code, the CLI and the module alike", async () => {
    const claims = jwtClaims(valid.jwt);
    const [h, p] = valid.jwt.split(".");
    const foreign = generateKeyPairSync("ed25519").privateKey;
    const now = Math.floor(Date.now() / 1000);
    const tampered = `${h}.${b64({ ...claims, permissions: ["deploy", "root"] })}.${valid.jwt.split(".")[2]}`;
    const cases: {
      name: string;
      jwt: string;
      cli?: string[];
      options?: Partial<VerifyGrantOptions>;
      reason: string;
      exit?: number;
    }[] = [
      {
        name: "wrong audience",
        jwt: valid.jwt,
        cli: ["--audience", "staging"],
        options: { audience: "staging" },
        reason: "audience_not_allowed",
      },
      {
        name: "missing permission",
        jwt: valid.jwt,
        cli: ["--permission", "deploy", "--permission", "rollback"],
        options: { permissions: ["deploy", "rollback"] },
        reason: "permission_missing",
      },
      {
        name: "another host",
        jwt: valid.jwt,
        cli: ["--host", "staging"],
        options: { host: "staging" },
        reason: "host_mismatch",
      },
      {
        name: "expired (genuinely signed)",
        jwt: resign({ ...claims, iat: now - 1000, exp: now - 400 }, idpSigningKey()),
        reason: "token_expired",
      },
      {
        name: "issued in the future",
        jwt: resign({ ...claims, iat: now + 600, exp: now + 900 }, idpSigningKey()),
        reason: "token_not_yet_valid",
      },
      {
        name: "foreign issuer",
        jwt: resign({ ...claims, iss: "https://evil.example" }, { kid: "k1", privateKey: foreign }),
        reason: "issuer_not_allowed",
      },
      {
        name: "our issuer, a foreign key",
        jwt: resign(claims, { kid: "k1", privateKey: foreign }),
        reason: "signature_invalid",
      },
      {
        name: "foreign key under the IdP's kid",
        jwt: resign(claims, { kid: idpSigningKey().kid, privateKey: foreign }),
        reason: "signature_invalid",
      },
      { name: "tampered payload", jwt: tampered, reason: "signature_invalid" },
      {
        name: "alg none, no signature",
        jwt: `${b64({ alg: "none", typ: "JWT" })}.${p}.`,
        reason: "token_malformed",
      },
      {
        name: "alg none with a signature",
        jwt: `${b64({ alg: "none", typ: "JWT", kid: idpSigningKey().kid })}.${p}.${valid.jwt.split(".")[2]}`,
        reason: "signature_invalid",
      },
      {
        name: "alg HS256",
        jwt: `${b64({ alg: "HS256", typ: "JWT", kid: idpSigningKey().kid })}.${p}.${valid.jwt.split(".")[2]}`,
        reason: "signature_invalid",
      },
      { name: "a session token", jwt: agentToken, reason: "token_malformed" },
      { name: "not a JWT", jwt: "hello", reason: "token_malformed" },
      {
        name: "command differs in one argument",
        jwt: commandGrant.jwt,
        cli: ["--audience", "web1", "--", "systemctl", "restart", "apache2"],
        options: { audience: "web1", command: ["systemctl", "restart", "apache2"] },
        reason: "command_mismatch",
      },
      {
        name: "command one argument longer",
        jwt: commandGrant.jwt,
        cli: ["--audience", "web1", "--", ...argv, "--force"],
        options: { audience: "web1", command: [...argv, "--force"] },
        reason: "command_mismatch",
      },
      {
        name: "a command check on a permission grant",
        jwt: valid.jwt,
        cli: ["--", ...argv],
        options: { command: argv },
        reason: "command_mismatch",
      },
      {
        name: "IdP unreachable",
        jwt: resign({ ...claims, iss: "http://127.0.0.1:9" }, { kid: "k1", privateKey: foreign }),
        cli: ["--issuer", "http://127.0.0.1:9"],
        options: { issuers: ["http://127.0.0.1:9"] },
        reason: "jwks_unavailable",
        exit: 69,
      },
    ];
    for (const c of cases) {
      const m = await verifyAuthzJwt(c.jwt, { ...base(), ...c.options });
      expect(m.valid, c.name).toBe(false);
      expect(!m.valid && m.reason, c.name).toBe(c.reason);
      const r = await verifyCli(["--json", ...cliBase(), ...(c.cli ?? [])], c.jwt);
      expect(r.code, `${c.name}: ${r.stderr}`).toBe(c.exit ?? 77);
      expect(r.json, c.name).toMatchObject({ valid: false, reason: c.reason });
      expect(r.stderr, c.name).toContain(`invalid grant token: ${c.reason}`);
    }
    // The exact command passes, its cmd_hash included.
    expect(jwtClaims(commandGrant.jwt).cmd_hash).toBe(cmdHash(argv));
    const ok = await verifyCli(
      ["--issuer", idp.issuer, "--audience", "web1", "--host", "web1", "--", ...argv],
      commandGrant.jwt,
    );
    expect(ok.code, ok.stderr).toBe(0);
  });

  it("caches the issuer's keys across runs (one discovery fetch per cache period)", async () => {
    const fresh = mkdtempSync(join(tmpdir(), "apes-verify-cache-"));
    const discoveries = () =>
      idp
        .logs()
        .split("\n")
        .filter(
          (l) => l.includes('"msg":"request"') && l.includes('"path":"/.well-known/openid-configuration"'),
        ).length;
    const before = discoveries();
    for (let i = 0; i < 3; i++) expect((await verifyCli(cliBase(), valid.jwt, fresh)).code).toBe(0);
    expect(discoveries() - before).toBe(1);
  });

  it("never takes the token from argv", async () => {
    for (const args of [
      [...cliBase(), valid.jwt],
      [...cliBase(), "--token-file", valid.jwt],
      [...cliBase(), "-", valid.jwt],
    ]) {
      const r = await verifyCli(args, "");
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toContain("refusing a token on the command line");
    }
    // Any three-part token with a JSON header, not only one that starts with "eyJ".
    const spaced = `${Buffer.from('{ "alg": "EdDSA" }').toString("base64url")}.${valid.jwt.split(".").slice(1).join(".")}`;
    expect((await verifyCli([...cliBase(), spaced], "")).code).toBe(2);
    // A command argument that merely has dots is a command, checked against the grant.
    const tar = await verifyCli(["--json", ...cliBase(), "--", "tar", "xf", "a.tar.gz"], valid.jwt);
    expect(tar.code).toBe(77);
    expect(tar.json).toMatchObject({ reason: "command_mismatch" });
    expect((await verifyCli(cliBase(), "")).code).toBe(2); // nothing on stdin
    const huge = await verifyCli(cliBase(), "a".repeat(70_000));
    expect(huge.code).toBe(2);
    expect(huge.stderr).toContain("larger than 65536 bytes");
    expect((await verifyCli(["--issuer", idp.issuer], valid.jwt)).code).toBe(2); // no --audience
    expect((await verifyCli(["--audience", "prod-server"], valid.jwt)).code).toBe(2); // no issuer at all
    expect(
      (await verifyCli(["--audience", "prod-server", "--issuer", "http://id.example"], valid.jwt)).code,
    ).toBe(2);
  });

  it("--consume spends a once-grant once: the replay is refused", async () => {
    const g = await permissionGrant(["deploy"]);
    const first = await verifyCli([...cliBase(), "--permission", "deploy", "--consume"], g.jwt);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain("consumed");
    const replay = await verifyCli(["--json", ...cliBase(), "--permission", "deploy", "--consume"], g.jwt);
    expect(replay.code).toBe(77);
    expect(replay.json).toMatchObject({ valid: false, reason: "grant_not_usable" });
    expect(String(replay.json?.detail)).toContain("already_consumed");
    const again = await verifyAuthzJwt(g.jwt, { ...base(), consume: true });
    expect(again).toMatchObject({ valid: false, reason: "grant_not_usable" });
    // Without --consume the signature and claims still check out: spending is what makes it single use.
    expect((await verifyAuthzJwt(g.jwt, base())).valid).toBe(true);
  });

  it("of N concurrent consumes exactly one succeeds (module and CLI)", async () => {
    const g = await permissionGrant(["deploy"]);
    const results = await Promise.all(
      Array.from({ length: 12 }, () => verifyAuthzJwt(g.jwt, { ...base(), consume: true })),
    );
    expect(results.filter((r) => r.valid)).toHaveLength(1);
    expect(results.filter((r) => !r.valid && r.reason === "grant_not_usable")).toHaveLength(11);

    const g2 = await permissionGrant(["deploy"]);
    const runs = await Promise.all(
      Array.from({ length: 6 }, () => verifyCli([...cliBase(), "--consume"], g2.jwt)),
    );
    expect(runs.map((r) => r.code).sort()).toEqual([0, 77, 77, 77, 77, 77]);
  });
});
