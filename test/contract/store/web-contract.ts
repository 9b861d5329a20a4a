import { expect, it } from "vitest";
import type { PasskeyRecord, Store } from "../../../idp/store/types.ts";

/**
 * The contract of the browser records (WebStore in idp/store/types.ts): passkeys, invites, web
 * sessions. Run inside storeContract (contract.ts) for every store; `fresh` opens a new, empty one
 * and `connect` another handle on its data.
 */
export function webStoreContract(fresh: () => Promise<{ s: Store; connect(): Promise<Store> }>): void {
  const passkey = (
    credentialId: string,
    email: string,
    extra: Partial<PasskeyRecord> = {},
  ): PasskeyRecord => ({
    credentialId,
    email,
    publicKey: "pQECAyYgASFYIA",
    counter: 0,
    transports: ["internal"],
    deviceType: "singleDevice",
    backedUp: false,
    createdAt: 10,
    ...extra,
  });

  it("passkeys: several per user, listed oldest first, credential ids unique over all users", async () => {
    const { s } = await fresh();
    expect(await s.addPasskey(passkey("c2", "alice@x", { createdAt: 20, transports: ["usb", "nfc"] }))).toBe(
      true,
    );
    expect(await s.addPasskey(passkey("c1", "alice@x", { deviceType: "multiDevice", backedUp: true }))).toBe(
      true,
    );
    expect(await s.addPasskey(passkey("c1", "bob@x"))).toBe(false);
    expect((await s.listPasskeys("alice@x")).map((p) => p.credentialId)).toEqual(["c1", "c2"]);
    expect(await s.listPasskeys("bob@x")).toEqual([]);
    expect(await s.getPasskey("c1")).toEqual(
      passkey("c1", "alice@x", { deviceType: "multiDevice", backedUp: true }),
    );
    expect((await s.getPasskey("c2"))?.transports).toEqual(["usb", "nfc"]);
    expect(await s.getPasskey("nope")).toBeUndefined();
  });

  it("passkeys: a use is recorded only from the counter it was verified against", async () => {
    const { s } = await fresh();
    await s.addPasskey(passkey("c1", "alice@x", { counter: 3 }));
    expect(await s.recordPasskeyUse("c1", { fromCounter: 2, counter: 5, backedUp: true, usedAt: 50 })).toBe(
      false,
    );
    expect(await s.recordPasskeyUse("c1", { fromCounter: 3, counter: 5, backedUp: true, usedAt: 50 })).toBe(
      true,
    );
    // The second of two uses verified against the same counter loses.
    expect(await s.recordPasskeyUse("c1", { fromCounter: 3, counter: 4, backedUp: false, usedAt: 51 })).toBe(
      false,
    );
    expect(await s.getPasskey("c1")).toMatchObject({ counter: 5, backedUp: true, lastUsedAt: 50 });
    expect(await s.recordPasskeyUse("none", { fromCounter: 0, counter: 1, backedUp: false, usedAt: 1 })).toBe(
      false,
    );
  });

  it("passkeys: removed only by their owner", async () => {
    const { s } = await fresh();
    await s.addPasskey(passkey("c1", "alice@x"));
    expect(await s.removePasskey("bob@x", "c1")).toBe(false);
    expect(await s.getPasskey("c1")).toBeDefined();
    expect(await s.removePasskey("alice@x", "c1")).toBe(true);
    expect(await s.removePasskey("alice@x", "c1")).toBe(false);
    expect(await s.getPasskey("c1")).toBeUndefined();
  });

  it("invites: redeemed once, never after expiry; getInvite shows only live ones", async () => {
    const { s } = await fresh();
    await s.addInvite({ id: "i1", email: "alice@x", createdAt: 10, expiresAt: 100 });
    await s.addInvite({ id: "i2", email: "bob@x", createdAt: 10, expiresAt: 100 });
    expect(await s.getInvite("i1", 50)).toEqual({
      id: "i1",
      email: "alice@x",
      createdAt: 10,
      expiresAt: 100,
    });
    expect(await s.getInvite("i1", 100)).toBeUndefined();
    expect(await s.redeemInvite("i2", 100)).toBeUndefined(); // expired
    expect(await s.redeemInvite("i1", 60)).toMatchObject({ email: "alice@x", usedAt: 60 });
    expect(await s.redeemInvite("i1", 61)).toBeUndefined(); // spent
    expect(await s.getInvite("i1", 61)).toBeUndefined();
    expect(await s.redeemInvite("unknown", 61)).toBeUndefined();
  });

  it("invites: of concurrent redemptions exactly one wins, also seen by another handle", async () => {
    const { s, connect } = await fresh();
    await s.addInvite({ id: "i1", email: "alice@x", createdAt: 10, expiresAt: 100 });
    const results = await Promise.all([s.redeemInvite("i1", 50), s.redeemInvite("i1", 50)]);
    expect(results.filter((r) => r !== undefined)).toHaveLength(1);
    await s.addInvite({ id: "i2", email: "alice@x", createdAt: 10, expiresAt: 100 });
    await s.lifecycle?.flush?.();
    const other = await connect();
    expect(await other.redeemInvite("i1", 51)).toBeUndefined();
    expect(await other.redeemInvite("i2", 51)).toBeDefined();
    expect(await s.redeemInvite("i2", 52)).toBeUndefined();
  });

  it("web sessions: live until expiry, ended one by one or all of a user", async () => {
    const { s } = await fresh();
    await s.addWebSession({ id: "w1", email: "alice@x", createdAt: 10, expiresAt: 100 });
    await s.addWebSession({ id: "w2", email: "alice@x", createdAt: 10, expiresAt: 100 });
    await s.addWebSession({ id: "w3", email: "bob@x", createdAt: 10, expiresAt: 100 });
    expect(await s.getWebSession("w1", 99)).toEqual({
      id: "w1",
      email: "alice@x",
      createdAt: 10,
      expiresAt: 100,
    });
    expect(await s.getWebSession("w1", 100)).toBeUndefined();
    expect(await s.endWebSession("w1")).toBe(true);
    expect(await s.endWebSession("w1")).toBe(false);
    expect(await s.getWebSession("w1", 50)).toBeUndefined();
    await s.addWebSession({ id: "w4", email: "alice@x", createdAt: 10, expiresAt: 100 });
    expect(await s.endWebSessionsOf("alice@x")).toBe(2);
    expect(await s.getWebSession("w2", 50)).toBeUndefined();
    expect(await s.getWebSession("w3", 50)).toBeDefined();
  });

  it("web: an end in another process (the offline disable) is seen at once", async () => {
    const { s, connect } = await fresh();
    await s.addWebSession({ id: "w1", email: "alice@x", createdAt: 10, expiresAt: 100 });
    await s.lifecycle?.flush?.();
    const other = await connect();
    expect(await other.endWebSessionsOf("alice@x")).toBe(1);
    expect(await s.getWebSession("w1", 50)).toBeUndefined();
  });

  it("web: expired sessions and invites are purged, live ones kept", async () => {
    const { s } = await fresh();
    await s.addWebSession({ id: "w1", email: "a@x", createdAt: 1, expiresAt: 10 });
    await s.addWebSession({ id: "w2", email: "a@x", createdAt: 1, expiresAt: 30 });
    await s.addInvite({ id: "i1", email: "a@x", createdAt: 1, expiresAt: 10 });
    await s.addInvite({ id: "i2", email: "a@x", createdAt: 1, expiresAt: 30 });
    await s.purgeExpiredWeb(10);
    expect(await s.getWebSession("w1", 5)).toBeUndefined();
    expect(await s.getWebSession("w2", 5)).toBeDefined();
    expect(await s.getInvite("i1", 5)).toBeUndefined();
    expect(await s.getInvite("i2", 5)).toBeDefined();
  });
}
