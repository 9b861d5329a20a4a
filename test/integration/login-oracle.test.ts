import { randomBytes, randomUUID, sign } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addUser, api, discovery, type IdpHandle, loginSignature, newKey, startIdp } from "../helpers/idp.ts";
import { type CliUser, cliUser } from "./cli-helpers.ts";

/**
 * `apes login` against a hostile IdP that relays to the real `apes idp serve` where the same key is
 * registered (docs/signatures.md). The hostile IdP hands the CLI, as its "challenge", the real IdP's
 * login challenge or the signing input of a client-assertion JWT, and tries to turn the signature
 * into a session or an access token at the real IdP. None of it may work.
 */

type Mode =
  /** Relay the real IdP's login challenge and the signature back to it. */
  | "relay-login"
  /** Same, but claim the real IdP's issuer in the hostile discovery document. */
  | "claim-real-issuer"
  /** Hand out a client-assertion signing input for the real token endpoint. */
  | "assertion"
  /** A well-behaved login that answers with another identity. */
  | "other-identity";

interface Hostile {
  url: string;
  mode: Mode;
  /** Advertise the real IdP's signature formats (else: none, like an older raw-only IdP). */
  advertiseFormats: boolean;
  /** What the real IdP answered to the relayed authenticate / client-assertion request. */
  relayed: { status: number; body: Record<string, unknown> }[];
  /** Authenticate requests the CLI sent to the hostile IdP. */
  signed: number;
  close(): Promise<void>;
}

const OTHER_IDENTITY = "mallory\u001b[2J\u202e@example.com";

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
}

const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

async function hostileIdp(real: IdpHandle): Promise<Hostile> {
  const realDoc = await discovery(real.url);
  const realApi = api(real.url);
  const h: Hostile = {
    url: "",
    mode: "relay-login",
    advertiseFormats: true,
    relayed: [],
    signed: 0,
    close: () => new Promise((r) => server.close(() => r())),
  };
  const send = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  const server: Server = createServer(async (req, res) => {
    const path = req.url ?? "/";
    if (req.method === "GET" && path === "/.well-known/openid-configuration") {
      const doc: Record<string, unknown> = {
        issuer: h.mode === "claim-real-issuer" ? realDoc.issuer : h.url,
        jwks_uri: `${h.url}/.well-known/jwks.json`,
        token_endpoint: `${h.url}/token`,
        ddisa_version: "1.0",
        ddisa_auth_methods_supported: ["ed25519"],
        ddisa_auth_challenge_endpoint: `${h.url}/challenge`,
        ddisa_auth_authenticate_endpoint: `${h.url}/authenticate`,
      };
      for (const [k, v] of Object.entries(realDoc)) {
        if (h.advertiseFormats && k.endsWith("_signature_formats_supported")) doc[k] = v;
      }
      return send(res, 200, doc);
    }
    const body = await readJson(req);
    const id = String(body.id);
    if (path === "/challenge") {
      if (h.mode === "assertion") {
        const now = Math.floor(Date.now() / 1000);
        const header = b64url({ alg: "EdDSA", typ: "JWT", kid: "user-key" });
        const payload = b64url({
          iss: id,
          sub: id,
          aud: realDoc.token_endpoint,
          iat: now,
          exp: now + 120,
          jti: randomUUID(),
        });
        return send(res, 200, { challenge: `${header}.${payload}` });
      }
      if (h.mode === "other-identity") return send(res, 200, { challenge: randomBytes(32).toString("hex") });
      const r = await realApi.post(realDoc.ddisa_auth_challenge_endpoint!, { id });
      return send(res, r.status, r.body);
    }
    if (path === "/authenticate") {
      h.signed++;
      if (h.mode === "assertion") {
        const sig = Buffer.from(String(body.signature), "base64").toString("base64url");
        const r = await realApi.post(
          realDoc.token_endpoint!,
          new URLSearchParams({
            grant_type: "client_credentials",
            client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            client_assertion: `${body.challenge}.${sig}`,
          }).toString(),
          { "content-type": "application/x-www-form-urlencoded" },
        );
        h.relayed.push({ status: r.status, body: r.body });
        return send(res, 401, { type: "about:blank", title: "no", status: 401, detail: "try again" });
      }
      if (h.mode === "other-identity") {
        const now = Math.floor(Date.now() / 1000);
        const token = `${b64url({ alg: "EdDSA" })}.${b64url({ sub: OTHER_IDENTITY, iat: now, exp: now + 600, act: "human" })}.c2ln`;
        return send(res, 200, {
          token,
          id: OTHER_IDENTITY,
          email: OTHER_IDENTITY,
          act: "human",
          expires_in: 600,
        });
      }
      const r = await realApi.post(realDoc.ddisa_auth_authenticate_endpoint!, body);
      h.relayed.push({ status: r.status, body: r.body });
      return send(res, r.status, r.body);
    }
    send(res, 404, {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  h.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return h;
}

let real: IdpHandle;
let hostile: Hostile;
let alice: CliUser;

beforeAll(async () => {
  real = await startIdp();
  hostile = await hostileIdp(real);
  alice = cliUser("alice@example.com", hostile.url);
  // The same key at the real IdP (likely: ~/.ssh/id_ed25519 registered at both).
  await addUser(real.dataDir, alice.email, { publicKey: alice.publicLine });
});

afterAll(async () => {
  await hostile?.close();
  await real?.stop();
});

/** A new hostile discovery document each time: drop the CLI's cached copy (it keeps one for 5 min). */
function setMode(mode: Mode, advertiseFormats = true) {
  rmSync(join(alice.home, ".cache/apes/discovery"), { recursive: true, force: true });
  hostile.mode = mode;
  hostile.advertiseFormats = advertiseFormats;
  hostile.relayed = [];
  hostile.signed = 0;
}

const login = (extraEnv: Record<string, string> = {}) =>
  alice.run(["login", alice.email, "--idp", hostile.url], extraEnv);

function rawOptIn(u: CliUser) {
  mkdirSync(join(u.home, ".config/apes"), { recursive: true, mode: 0o700 });
  writeFileSync(join(u.home, ".config/apes/config.toml"), "allow_raw_login_signature = true\n");
}

describe("a hostile IdP relaying to the real one", () => {
  it("the user still logs in at the real IdP directly", async () => {
    const r = await alice.run(["login", alice.email, "--idp", real.url]);
    expect(r.code, r.stderr).toBe(0);
  });

  it("cannot turn the real IdP's login challenge into a session there", async () => {
    setMode("relay-login");
    const r = await login();
    expect(hostile.relayed.map((x) => x.status)).toEqual([401]);
    expect(hostile.relayed[0]!.body.token).toBeUndefined();
    expect(r.code).toBe(77);
  });

  it("cannot make the CLI sign for the real issuer by claiming it in discovery", async () => {
    setMode("claim-real-issuer");
    const r = await login();
    expect(r.code).toBe(69);
    expect(r.stderr).toContain("issuer");
    expect(hostile.signed).toBe(0);
    expect(hostile.relayed).toEqual([]);
  });

  it("cannot obtain a client-assertion signature for the real token endpoint", async () => {
    setMode("assertion");
    const r = await login();
    expect(hostile.relayed).toEqual([]);
    expect(hostile.signed).toBe(0);
    expect(r.code).toBe(69);
    expect(r.stderr).toContain("challenge");
  });

  it("an IdP that advertises only the raw form is refused with 78 unless the user opts in", async () => {
    setMode("relay-login", false);
    const r = await login();
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("allow_raw_login_signature");
    expect(hostile.signed).toBe(0);
  });

  it("with the raw opt-in the CLI warns, and our IdP still refuses the relayed raw signature", async () => {
    const u = cliUser(alice.email, hostile.url);
    copyFileSync(alice.keyPath, u.keyPath);
    rawOptIn(u);
    setMode("relay-login", false);
    const r = await u.run(["login", alice.email, "--idp", hostile.url]);
    expect(r.stderr).toContain("warning");
    expect(hostile.relayed.length).toBe(1);
    expect(hostile.relayed[0]!.status).toBe(401);
    expect(r.code).not.toBe(0);
    // And even in raw mode the login path never signs a JWT signing input.
    setMode("assertion", false);
    const a = await u.run(["login", alice.email, "--idp", hostile.url]);
    expect(a.code).not.toBe(0);
    expect(hostile.signed).toBe(0);
    expect(hostile.relayed).toEqual([]);
  });

  it("an answer naming another identity fails the login, shown escaped, and stores nothing", async () => {
    const u = cliUser(alice.email, hostile.url);
    copyFileSync(alice.keyPath, u.keyPath);
    setMode("other-identity");
    const r = await u.run(["login", alice.email, "--idp", hostile.url]);
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("mallory\\x1b[2J\\u202e@example.com");
    expect(r.stderr).not.toContain("\u001b");
    expect(r.stderr).not.toContain("\u202e");
    expect(existsSync(join(u.home, ".config/apes/auth.json"))).toBe(false);
  });
});

describe("idp serve --allow-raw-login-signatures (compatibility mode)", () => {
  let compat: IdpHandle;
  const legacy = newKey("legacy");
  beforeAll(async () => {
    compat = await startIdp({ extraArgs: ["--allow-raw-login-signatures"] });
    await addUser(compat.dataDir, "legacy@example.com", { publicKey: legacy.publicLine });
  });
  afterAll(async () => {
    await compat?.stop();
  });

  it("is off by default: discovery offers only the domain-separated form", async () => {
    expect((await discovery(real.url)).apes_auth_signature_formats_supported).toEqual(["apes-signature-v1"]);
  });

  it("warns at start, advertises raw, and accepts both forms, warning on each raw use", async () => {
    expect(compat.logs()).toMatch(/"level":"warn","msg":"raw login signatures accepted/);
    const d = await discovery(compat.url);
    expect(d.apes_auth_signature_formats_supported).toEqual(["apes-signature-v1", "raw"]);
    const post = (u: string, b: unknown) => api(compat.url).post(u, b);
    const raw = (c: string) => sign(null, Buffer.from(c), legacy.privateKey).toString("base64");
    for (const signature of [
      raw,
      (c: string) => loginSignature(d, "legacy@example.com", c, legacy.privateKey),
    ]) {
      const { challenge } = (await post(d.ddisa_auth_challenge_endpoint!, { id: "legacy@example.com" })).body;
      const r = await post(d.ddisa_auth_authenticate_endpoint!, {
        id: "legacy@example.com",
        challenge,
        signature: signature(challenge),
      });
      expect(r.status).toBe(200);
    }
    const warnings = compat.logs().match(/"msg":"login with a raw challenge signature/g) ?? [];
    expect(warnings).toHaveLength(1);
  });
});
