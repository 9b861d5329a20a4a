import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLOSE } from "../../protocol/troop.ts";
import { loginWithKey, startWorld, USERS, type World } from "../helpers/idp.ts";
import { connectNest, startTroop, type TroopHandle, troopToken } from "../helpers/troop.ts";

/**
 * Token lifetimes on the nest socket, against an IdP issuing 4-second tokens: an expired token is
 * refused at the upgrade, a reauth frame with a fresh token before reauth_by keeps the socket past
 * the first token's exp, and without one the socket is closed with CLOSE.tokenExpired. A token of
 * another IdP is refused by a troop configured for this one. (The troop runs with --clock-skew 0s.)
 */
describe("apes troop serve: expiry and reauth", () => {
  let w: World;
  let other: World;
  let troop: TroopHandle;
  const fresh = async () =>
    troopToken(w.idp.url, await loginWithKey(w.idp.url, USERS.bot, w.keys.bot.privateKey));
  beforeAll(async () => {
    [w, other] = await Promise.all([startWorld({ tokenTtl: "4s" }), startWorld()]);
    troop = await startTroop(w.idp.issuer);
  });
  afterAll(async () => {
    await troop?.stop();
    await Promise.all([w?.idp.stop(), other?.idp.stop()]);
  });

  it("refuses a token of another IdP (other issuer, other keys)", async () => {
    const foreign = await troopToken(other.idp.url, other.tokens.bot);
    expect(await connectNest(troop.wsUrl, foreign)).toMatchObject({ ok: false, status: 401 });
  });

  it("refuses an expired token at the upgrade", async () => {
    const token = await fresh();
    const exp = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()).exp as number;
    await new Promise((r) => setTimeout(r, Math.max(0, exp * 1000 - Date.now()) + 1100));
    const r = await connectNest(troop.wsUrl, token);
    expect(r).toMatchObject({ ok: false, status: 401 });
    if (!r.ok) expect(r.body).toMatch(/expired/);
  });

  it("reauth before reauth_by keeps the socket; without it the socket closes at exp", async () => {
    const r = await connectNest(troop.wsUrl, await fresh());
    if (!r.ok) throw new Error(`refused: ${r.status}`);
    const nest = r.nest;
    const hello = await nest.next("hello");
    // A token issued later than the first one, so it expires later.
    await new Promise((r2) => setTimeout(r2, 1500));
    nest.send({ type: "reauth", token: await fresh() });
    const ok = await nest.next("reauth_ok");
    expect(ok.reauth_by).toBeGreaterThan(hello.reauth_by);
    // Past the first token's exp the socket is still open ...
    await new Promise((r2) => setTimeout(r2, Math.max(0, hello.reauth_by * 1000 - Date.now()) + 300));
    expect(nest.ws.readyState).toBe(nest.ws.OPEN);
    // ... and without another reauth it is closed at the second token's exp.
    const closed = await nest.closed;
    expect(closed.code).toBe(CLOSE.tokenExpired);
    expect(Date.now()).toBeGreaterThanOrEqual(ok.reauth_by * 1000 - 100);
  });

  it("a reauth frame with another identity's token or garbage closes with CLOSE.reauthRefused", async () => {
    for (const bad of [
      await troopToken(w.idp.url, await loginWithKey(w.idp.url, USERS.bot2, w.keys.bot2.privateKey)),
      "not.a.token",
    ]) {
      const r = await connectNest(troop.wsUrl, await fresh());
      if (!r.ok) throw new Error(`refused: ${r.status}`);
      await r.nest.next("hello");
      r.nest.send({ type: "reauth", token: bad });
      expect((await r.nest.closed).code).toBe(CLOSE.reauthRefused);
    }
  });
});
