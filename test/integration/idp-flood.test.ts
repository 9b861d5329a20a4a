import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent, fetch as undiciFetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chunkFlood, watchRss } from "../helpers/flood.ts";
import {
  addUser,
  api,
  type FetchLike,
  type IdpHandle,
  loginWithKey,
  newKey,
  startIdp,
} from "../helpers/idp.ts";

/**
 * 150 connections sending bodies as 1-byte chunks to the unauthenticated challenge endpoint (the
 * login rate limit is off, so nothing else stops them): the IdP refuses chunked bodies (411), its
 * memory stays bounded and another client keeps being served. Latency under the same load:
 * bench/idp-flood.
 */
const RSS_BOUND_MIB = 300;

describe("idp under a flood of 1-byte body chunks", () => {
  let idp: IdpHandle;
  const alice = newKey("alice");
  beforeAll(async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), "apes-idp-flood-")), "data");
    await addUser(dataDir, "alice@example.com", { publicKey: alice.publicLine });
    idp = await startIdp({ dataDir, extraArgs: ["--login-rate-limit", "off", "--rate-limit", "off"] });
  });
  afterAll(async () => {
    await idp?.stop();
  });

  it(`stays under ${RSS_BOUND_MIB} MiB RSS and keeps serving another client`, async () => {
    // The other client has its own address (the attackers' one is over its connection limits).
    const dispatcher = new Agent({ localAddress: "127.0.0.2" });
    const other = ((url: string, init?: RequestInit) =>
      undiciFetch(url, { ...init, dispatcher } as Parameters<typeof undiciFetch>[1])) as unknown as FetchLike;
    const token = await loginWithKey(idp.url, "alice@example.com", alice.privateKey, other);
    const rss = watchRss(idp.pid);
    const flood = chunkFlood({ url: idp.url, path: "/api/auth/challenge", connections: 150, seconds: 6 });
    let attacking = true;
    void flood.then(() => {
      attacking = false;
    });
    const statuses: number[] = [];
    while (attacking && statuses.length < 2000) {
      statuses.push((await api(idp.url, token, other).get("/api/me")).status);
    }
    const result = await flood;
    const maxRss = rss.stop();
    // The attack was answered, not just left hanging: chunked bodies refused, connections closed.
    expect(result.statuses["411"] ?? 0, JSON.stringify(result)).toBeGreaterThan(0);
    expect(result.connections).toBeGreaterThan(150);
    expect(maxRss).toBeLessThan(RSS_BOUND_MIB);
    // The other client was served throughout, every time.
    expect(statuses.length).toBeGreaterThan(0);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect((await api(idp.url, token, other).get("/api/me")).status).toBe(200);
    await dispatcher.close();
  }, 60_000);
});
