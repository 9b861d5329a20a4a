import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSchemas } from "../../protocol/schemas.ts";
import {
  addUser,
  api,
  discovery,
  type IdpHandle,
  loginSignature,
  loginWithKey,
  newKey,
  runApes,
  startIdp,
} from "../helpers/idp.ts";

const schemas = loadSchemas();

describe("idp serve: discovery, jwks, login, users", () => {
  let idp: IdpHandle;
  const alice = newKey("alice");
  const bot = newKey("bot");

  beforeAll(async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), "apes-idp-basics-")), "data");
    await addUser(dataDir, "alice@example.com", { publicKey: alice.publicLine, admin: true });
    await addUser(dataDir, "bot@example.com", {
      agent: true,
      owner: "alice@example.com",
      publicKey: bot.publicLine,
    });
    idp = await startIdp({ dataDir });
  });
  afterAll(async () => {
    await idp?.stop();
  });

  it("logs a listening line with url and issuer", () => {
    const line = idp
      .logs()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .find((l) => l.msg === "listening");
    expect(line).toMatchObject({ level: "info", url: idp.url, issuer: idp.url });
  });

  it("serves a discovery document with every endpoint, valid against the schema", async () => {
    const d = await discovery(idp.url);
    schemas.assert("openid-configuration-extensions", d);
    expect(d.issuer).toBe(idp.issuer);
    for (const k of [
      "jwks_uri",
      "token_endpoint",
      "ddisa_auth_challenge_endpoint",
      "ddisa_auth_authenticate_endpoint",
      "ddisa_agent_challenge_endpoint",
      "ddisa_agent_authenticate_endpoint",
      "openape_grants_endpoint",
      "openape_delegations_endpoint",
    ]) {
      expect(d[k], k).toMatch(/^http:\/\/127\.0\.0\.1:\d+\//);
    }
    expect(d.openape_grant_types_supported).toEqual(["once", "timed", "always"]);
    expect(d.openape_grant_categories_supported).toEqual(["command", "delegation"]);
  });

  it("publishes an Ed25519 JWKS", async () => {
    const d = await discovery(idp.url);
    const jwks = (await (await fetch(d.jwks_uri!)).json()) as { keys: Record<string, string>[] };
    schemas.assert("jwks", jwks);
    expect(jwks.keys.length).toBe(1);
    expect(jwks.keys[0]).toMatchObject({ kty: "OKP", crv: "Ed25519", alg: "EdDSA", use: "sig" });
    expect(jwks.keys[0]!.x).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it("logs a human and an agent in with their keys", async () => {
    const token = await loginWithKey(idp.url, "alice@example.com", alice.privateKey);
    const [h, p] = token
      .split(".")
      .slice(0, 2)
      .map((s) => JSON.parse(Buffer.from(s, "base64url").toString()));
    expect(h).toMatchObject({ alg: "EdDSA" });
    expect(typeof h.kid).toBe("string");
    expect(p).toMatchObject({ iss: idp.issuer, sub: "alice@example.com", aud: "apes-cli", act: "human" });
    schemas.assert("session-token-claims", p);
    expect(p.exp - p.iat).toBe(3600);
    const botToken = await loginWithKey(idp.url, "bot@example.com", bot.privateKey);
    const me = await api(idp.url, botToken).get("/api/me");
    expect(me.status).toBe(200);
    expect(me.body).toMatchObject({ email: "bot@example.com", kind: "agent", owner: "alice@example.com" });
  });

  it("refuses a login signed with the wrong key", async () => {
    await expect(loginWithKey(idp.url, "alice@example.com", bot.privateKey)).rejects.toThrow(/401/);
  });

  it("lists users as JSON", async () => {
    const r = await runApes(["--json", "idp", "users", "list", "--data", idp.dataDir]);
    expect(r.code).toBe(0);
    const users = JSON.parse(r.stdout) as { email: string }[];
    expect(users.map((u) => u.email)).toEqual(["alice@example.com", "bot@example.com"]);
  });
});

describe("idp serve --issuer", () => {
  let idp: IdpHandle | undefined;
  afterAll(async () => {
    await idp?.stop();
  });

  it("advertises every endpoint under the configured issuer and signs with it", async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), "apes-idp-issuer-")), "data");
    const k = newKey();
    await addUser(dataDir, "i@example.com", { publicKey: k.publicLine });
    idp = await startIdp({ dataDir, issuer: "https://id.example.test/" });
    expect(idp.issuer).toBe("https://id.example.test/");
    const d = await discovery(idp.url);
    schemas.assert("openid-configuration-extensions", d);
    expect(d.issuer).toBe("https://id.example.test/");
    expect(d.openape_grants_endpoint).toBe("https://id.example.test/api/grants");
    // Log in against the real address, with the advertised paths.
    const local = (u: string) => idp!.url + new URL(u).pathname;
    const post = (u: string, body: unknown) =>
      fetch(local(u), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const { challenge } = (await (
      await post(d.ddisa_auth_challenge_endpoint!, { id: "i@example.com" })
    ).json()) as {
      challenge: string;
    };
    const signature = loginSignature(d, "i@example.com", challenge, k.privateKey);
    const r = await post(d.ddisa_auth_authenticate_endpoint!, { id: "i@example.com", challenge, signature });
    const { token } = (await r.json()) as { token: string };
    expect(JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()).iss).toBe(
      "https://id.example.test/",
    );
    expect((await api(idp.url, token).get("/api/me")).status).toBe(200);
  });
});
