import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  addUser,
  api,
  type IdpHandle,
  loginWithKey,
  newKey,
  runApes,
  startIdp,
  USERS,
} from "../helpers/idp.ts";

const partOf = (jwt: string, i: 0 | 1) => JSON.parse(Buffer.from(jwt.split(".")[i]!, "base64url").toString());
const TTL = 8;

describe("idp: a retired signing key lives exactly as long as its last token", () => {
  let idp: IdpHandle;
  const bot = newKey("bot");
  beforeAll(async () => {
    idp = await startIdp({ tokenTtl: `${TTL}s` });
    await addUser(idp.dataDir, USERS.alice);
    await addUser(idp.dataDir, USERS.bot, { agent: true, owner: USERS.alice, publicKey: bot.publicLine });
  });
  afterAll(async () => {
    await idp?.stop();
  });

  const jwksKids = async () =>
    (await api(idp.url).get("/.well-known/jwks.json")).body.keys.map((k: { kid: string }) => k.kid);

  it("publishes the old kid until the last old-key token expired, then refuses it as unknown", async () => {
    const old = await loginWithKey(idp.url, USERS.bot, bot.privateKey);
    const oldKid = partOf(old, 0).kid as string;
    const oldExp = partOf(old, 1).exp as number;
    const rotated = await runApes(["--json", "idp", "keys", "rotate", "--data", idp.dataDir]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const newKid = JSON.parse(rotated.stdout).kid as string;

    // Before the old token's exp: both keys are published and the old token works.
    expect(await jwksKids()).toEqual(expect.arrayContaining([oldKid, newKid]));
    expect((await api(idp.url, old).get("/api/me")).status).toBe(200);
    const fresh = await loginWithKey(idp.url, USERS.bot, bot.privateKey);
    expect(partOf(fresh, 0).kid).toBe(newKid);

    // Bounded wait (the old behaviour kept the key an hour longer): the old kid disappears.
    const deadline = Date.now() + (TTL + 30) * 1000;
    while ((await jwksKids()).includes(oldKid) && Date.now() < deadline) await sleep(250);
    expect(await jwksKids()).toEqual([newKid]);
    // Not before its last token expired.
    expect(Date.now() / 1000).toBeGreaterThanOrEqual(oldExp);
    // An old-key token is now refused for its key, not only for its age.
    const verdict = await api(idp.url).post("/api/grants/verify", { token: old });
    expect(verdict.body).toMatchObject({ valid: false, error: "unknown_kid" });
    expect((await api(idp.url, old).get("/api/me")).status).toBe(401);
    const again = await loginWithKey(idp.url, USERS.bot, bot.privateKey);
    expect((await api(idp.url, again).get("/api/me")).status).toBe(200);
  });
});
