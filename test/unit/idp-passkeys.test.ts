import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Idp } from "../../idp/context.ts";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import type { Store } from "../../idp/store/types.ts";
import { type WebContext, webContext } from "../../idp/web/context.ts";
import { SIGN_IN_FAILED, startAssertion, verifyAssertion } from "../../idp/web/passkeys.ts";
import { ProblemError } from "../../protocol/problem.ts";
import { jsonLogger } from "../../server/log.ts";
import { type SoftPasskey, softPasskey } from "../helpers/soft-passkey.ts";

/**
 * The passkey seam other parts build on (startAssertion / verifyAssertion, idp/web/passkeys.ts),
 * in process against a real SQLite store with a software authenticator: what an assertion proves,
 * for which binding, and every way it is refused.
 */

const ORIGIN = "https://id.example.com";
const RP = { origin: ORIGIN, rpId: "id.example.com" };
const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const bytes = (s: string) => new TextEncoder().encode(s);
const LOGIN = new Uint8Array(0);

let store: Store;
let web: WebContext;
let now: number;
let logs: string[];
let alice: SoftPasskey;

beforeEach(async () => {
  store = openSqliteStore(join(mkdtempSync(join(tmpdir(), "apes-passkeys-")), "d"));
  now = 1_000_000;
  logs = [];
  const idp = {
    store,
    issuer: ORIGIN,
    now: () => now,
    log: jsonLogger("debug", (l) => logs.push(l)),
  } as unknown as Idp;
  web = webContext(idp, randomBytes(32));
  await store.addUser({ email: ALICE, kind: "human", createdAt: 1 });
  await store.addUser({ email: BOB, kind: "human", createdAt: 1 });
  alice = softPasskey(RP);
  await store.addPasskey(alice.record(ALICE));
});
afterEach(async () => {
  await store.close();
});

async function refused(p: Promise<unknown>, reason: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ProblemError);
  expect((e as ProblemError).status).toBe(401);
  expect((e as ProblemError).message).toBe(SIGN_IN_FAILED);
  expect(logs.join("")).toMatch(reason);
}

describe("startAssertion / verifyAssertion", () => {
  it("a login assertion names the passkey's user; the counter and last use are recorded", async () => {
    const options = await startAssertion(web, { binding: LOGIN });
    expect(options.userVerification).toBe("required");
    expect(options.allowCredentials ?? []).toEqual([]); // login: nothing about accounts revealed
    expect(options.rpId).toBe("id.example.com");
    const result = await verifyAssertion(web, alice.assert(options), { binding: LOGIN });
    expect(result).toEqual({ email: ALICE, credentialId: alice.credentialId });
    expect(await store.getPasskey(alice.credentialId)).toMatchObject({ counter: 1, lastUsedAt: now });
  });

  it("an assertion verifies only for the binding its challenge was made for", async () => {
    const approve = bytes("grant 42\nsha256:abc\napprove");
    const options = await startAssertion(web, { binding: approve, email: ALICE });
    const response = alice.assert(options);
    await refused(
      verifyAssertion(web, response, { binding: bytes("grant 42\nsha256:abc\ndeny") }),
      /verification failed/,
    );
    await refused(verifyAssertion(web, response, { binding: LOGIN }), /verification failed/);
    // A failed try does not burn the challenge: the right binding still verifies.
    expect(await verifyAssertion(web, response, { binding: approve, email: ALICE })).toMatchObject({
      email: ALICE,
    });
  });

  it("with an email, only that user's passkeys are offered and accepted", async () => {
    const bobKey = softPasskey(RP);
    await store.addPasskey(bobKey.record(BOB));
    const options = await startAssertion(web, { binding: LOGIN, email: ALICE });
    expect(options.allowCredentials?.map((c) => c.id)).toEqual([alice.credentialId]);
    await refused(
      verifyAssertion(web, bobKey.assert(options), { binding: LOGIN, email: ALICE }),
      /another user/,
    );
  });

  it("a user handle must name the credential's own account", async () => {
    const handle = (email: string) =>
      createHash("sha256").update(`apes-webauthn-user\0${email}`).digest("base64url");
    const options = await startAssertion(web, { binding: LOGIN });
    await refused(
      verifyAssertion(web, alice.assert(options, { userHandle: handle(BOB) }), { binding: LOGIN }),
      /user handle of another account/,
    );
    const again = await startAssertion(web, { binding: LOGIN });
    expect(
      await verifyAssertion(web, alice.assert(again, { userHandle: handle(ALICE) }), { binding: LOGIN }),
    ).toMatchObject({
      email: ALICE,
    });
  });

  it("a challenge is single use", async () => {
    const noCounter = softPasskey(RP, false); // counter 0 forever: only the spent challenge stops a replay
    await store.addPasskey(noCounter.record(BOB));
    const options = await startAssertion(web, { binding: LOGIN });
    const response = noCounter.assert(options);
    await verifyAssertion(web, response, { binding: LOGIN });
    await refused(verifyAssertion(web, response, { binding: LOGIN }), /challenge already used/);
  });

  it("a challenge expires after 5 minutes", async () => {
    const options = await startAssertion(web, { binding: LOGIN });
    now += 300;
    await refused(verifyAssertion(web, alice.assert(options), { binding: LOGIN }), /verification failed/);
  });

  it("a sign counter that does not increase (a cloned authenticator) is refused and logged", async () => {
    await verifyAssertion(web, alice.assert(await startAssertion(web, { binding: LOGIN })), {
      binding: LOGIN,
    });
    await verifyAssertion(web, alice.assert(await startAssertion(web, { binding: LOGIN })), {
      binding: LOGIN,
    });
    const clone = alice.assert(await startAssertion(web, { binding: LOGIN }), { counter: 2 });
    await refused(
      verifyAssertion(web, clone, { binding: LOGIN }),
      /passkey counter regression.*"stored":2,"received":2/,
    );
    expect((await store.getPasskey(alice.credentialId))?.counter).toBe(2);
  });

  it.each([
    ["another origin", { origin: "https://evil.example" }],
    ["another RP ID", { rpId: "evil.example" }],
    ["no user verification", { userVerified: false }],
    ["a registration's client data", { type: "webauthn.create" }],
  ])("refuses an assertion with %s", async (_what, o) => {
    const options = await startAssertion(web, { binding: LOGIN });
    await refused(verifyAssertion(web, alice.assert(options, o), { binding: LOGIN }), /verification failed/);
  });

  it("refuses an unknown credential, a removed one, and one of a disabled user", async () => {
    const stranger = softPasskey(RP);
    await refused(
      verifyAssertion(web, stranger.assert(await startAssertion(web, { binding: LOGIN })), {
        binding: LOGIN,
      }),
      /unknown credential/,
    );
    await store.setDisabled(ALICE, true, 1);
    await refused(
      verifyAssertion(web, alice.assert(await startAssertion(web, { binding: LOGIN })), { binding: LOGIN }),
      /user disabled/,
    );
    await store.setDisabled(ALICE, false, 1);
    await store.removePasskey(ALICE, alice.credentialId);
    await refused(
      verifyAssertion(web, alice.assert(await startAssertion(web, { binding: LOGIN })), { binding: LOGIN }),
      /unknown credential/,
    );
  });

  it.each([
    ["nothing", undefined],
    ["a string", "x"],
    ["no response part", { id: "abc", rawId: "abc", type: "public-key" }],
    ["a huge id", { id: "a".repeat(5000), rawId: "a".repeat(5000), type: "public-key", response: {} }],
    ["rawId unlike id", { id: "abc", rawId: "abd", type: "public-key", response: {} }],
  ])("refuses a malformed response: %s", async (_what, response) => {
    await refused(verifyAssertion(web, response, { binding: LOGIN }), /malformed response/);
  });
});
