import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  addUser,
  api,
  discovery,
  type IdpHandle,
  loginWithKey,
  newKey,
  runApes,
  startIdp,
} from "../helpers/idp.ts";

// Look-alike identities: an RTL-override email, a dotless ı and "café" in two normal forms used to
// be three different users. Now every identity the IdP stores, looks up or compares goes through
// protocol/names.ts: one user, or a refusal that says why.

const CAFE_NFC = "caf\u00e9@example.com";
const CAFE_NFD = "cafe\u0301@example.com";
const claimsOf = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString("utf8"));

describe("look-alike identities are one user or refused", () => {
  const dir = join(mkdtempSync(join(tmpdir(), "apes-idp-names-")), "d");
  const cafe = newKey("cafe");
  const bob = newKey("bob");
  let idp: IdpHandle;
  const usersAdd = (...args: string[]) => runApes(["idp", "users", "add", ...args, "--data", dir]);

  beforeAll(async () => {
    await addUser(dir, CAFE_NFC, { publicKey: cafe.publicLine });
    await addUser(dir, "Bob@Example.COM", { publicKey: bob.publicLine });
    idp = await startIdp({ dataDir: dir });
  });
  afterAll(async () => {
    await idp?.stop();
  });

  it("users add: the other normal form of café is the same user; case does not make a new one", async () => {
    const nfd = await usersAdd(CAFE_NFD, "--human");
    expect(nfd.code, nfd.stderr).toBe(1);
    expect(nfd.stderr).toContain(`${CAFE_NFC} already exists`);
    expect((await usersAdd("BOB@example.com", "--human")).code).toBe(1);
    const list = await runApes(["--json", "idp", "users", "list", "--data", dir]);
    expect(JSON.parse(list.stdout).map((u: { email: string }) => u.email)).toEqual([
      "bob@example.com",
      CAFE_NFC,
    ]);
  });

  it("users add refuses bidi overrides, a dotless ı and mixed scripts, saying why (exit 2)", async () => {
    for (const [email, why] of [
      ["alice@example.com\u202e", "bidi"],
      ["\u202emoc.elpmaxe@ecila", "bidi"],
      ["al\u0131ce@example.com", "dotless"],
      ["p\u0430ypal@example.com", "scripts"],
      ["ali\u200dce@example.com", "invisible"],
    ] as const) {
      const r = await usersAdd(email, "--human");
      expect(r.code, `${email}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toContain(why);
      expect(r.stderr).not.toMatch(/[\u202e\u200d]/);
    }
    expect((await usersAdd("x@example.com", "--human", "--approver", "b\u0131b@example.com")).code).toBe(2);
  });

  it("login with any spelling of the same identity gives its one normalised subject", async () => {
    for (const spelling of [CAFE_NFC, CAFE_NFD, "CAFE\u0301@EXAMPLE.COM"]) {
      const token = await loginWithKey(idp.url, spelling, cafe.privateKey);
      expect(claimsOf(token).sub).toBe(CAFE_NFC);
    }
    expect(claimsOf(await loginWithKey(idp.url, "BOB@example.com", bob.privateKey)).sub).toBe(
      "bob@example.com",
    );
    // The client will not even sign a message for such an id (docs/signatures.md) ...
    await expect(loginWithKey(idp.url, `${CAFE_NFC}\u202e`, cafe.privateKey)).rejects.toThrow(
      /cannot be part of a signed message/,
    );
    // ... and the IdP refuses it whatever is sent.
    const d = await discovery(idp.url);
    const challenge = await fetch(d.ddisa_auth_challenge_endpoint!, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ id: `${CAFE_NFC}\u202e` }),
    }).then((r) => r.json() as Promise<{ challenge: string }>);
    const refused = await fetch(d.ddisa_auth_authenticate_endpoint!, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        id: `${CAFE_NFC}\u202e`,
        challenge: challenge.challenge,
        signature: "A".repeat(86) + "==",
      }),
    });
    expect([400, 401]).toContain(refused.status);
  });

  it("delegate, requester and delegator fields are normalised or refused (400 naming the field)", async () => {
    const d = await discovery(idp.url);
    const token = await loginWithKey(idp.url, CAFE_NFD, cafe.privateKey);
    const as = api(idp.url, token);
    const made = await as.post(d.openape_delegations_endpoint!, {
      delegator: "CAFE\u0301@example.com",
      delegate: "BOB@EXAMPLE.com",
      audience: "sp.example",
    });
    expect(made.status, JSON.stringify(made.body)).toBe(201);
    expect(made.body.request).toMatchObject({ delegator: CAFE_NFC, delegate: "bob@example.com" });
    const spoof = await as.post(d.openape_delegations_endpoint!, {
      delegate: "bob@example.com\u202e",
      audience: "sp",
    });
    expect(spoof.status).toBe(400);
    expect(spoof.body.detail).toMatch(/^delegate contains control, bidi or invisible characters/);
    const mixed = await as.post(d.openape_delegations_endpoint!, {
      delegate: "b\u043eb@example.com",
      audience: "sp",
    });
    expect(mixed.status).toBe(400);
    expect(mixed.body.detail).toMatch(/^delegate mixes letters of different scripts/);

    const grant = await as.post(d.openape_grants_endpoint!, {
      requester: CAFE_NFD,
      grant_type: "once",
      target_host: "h",
      command: ["ls"],
    });
    expect(grant.status, JSON.stringify(grant.body)).toBe(201);
    expect(grant.body.request.requester).toBe(CAFE_NFC);
    const listed = await as.get(`${d.openape_grants_endpoint}?requester=${encodeURIComponent(CAFE_NFD)}`);
    expect(listed.body.data.map((g: { id: string }) => g.id)).toContain(grant.body.id);
    const bad = await as.get(`${d.openape_grants_endpoint}?requester=${encodeURIComponent("x@y\u202e")}`);
    expect(bad.status).toBe(400);
  });
});
