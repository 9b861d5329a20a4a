import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addUser, api, discovery, type IdpHandle, loginSignature, newKey, startIdp } from "../helpers/idp.ts";

/**
 * Login challenges cannot be evicted by a third party: an unauthenticated flood of challenge requests
 * for the victim's id, interleaved with the victim's own logins, makes none of them fail. Rate limits
 * are off so that this tests the challenges alone (the limiter is tested on its own).
 */

const VICTIM = "victim@example.com";
const FLOOD_TOTAL = 5000;
const FLOOD_CLIENTS = 6;
const LOGINS = 100;
/** Flood requests the victim lets pass between receiving its challenge and answering it. */
const FLOOD_BETWEEN = 40;

let idp: IdpHandle;
let doc: Record<string, string>;
const key = newKey(VICTIM);

beforeAll(async () => {
  // Eviction is what this tests, not the rate limits (idp-limits.test.ts tests those): all of them off.
  idp = await startIdp({
    extraArgs: ["--rate-limit", "off", "--login-rate-limit", "off", "--connection-rate", "off"],
  });
  await addUser(idp.dataDir, VICTIM, { publicKey: key.publicLine });
  doc = await discovery(idp.url);
});

afterAll(async () => {
  await idp?.stop();
});

const client = () => api(idp.url);

async function askChallenge(c = client()): Promise<string> {
  const r = await c.post(doc.ddisa_auth_challenge_endpoint!, { id: VICTIM });
  if (r.status !== 200) throw new Error(`challenge: ${r.status}`);
  return r.body.challenge as string;
}

function authenticate(challenge: string, c = client()) {
  return c.post(doc.ddisa_auth_authenticate_endpoint!, {
    id: VICTIM,
    challenge,
    signature: loginSignature(doc, VICTIM, challenge, key.privateKey),
  });
}

describe("challenge flood", () => {
  it(`${FLOOD_TOTAL} challenge requests for the victim's id cannot fail any of ${LOGINS} logins`, async () => {
    let sent = 0;
    let floodDone = false;
    const flood = async () => {
      const c = client();
      while (sent < FLOOD_TOTAL) {
        sent++;
        await c.post(doc.ddisa_auth_challenge_endpoint!, { id: VICTIM });
      }
    };
    const flooding = Promise.all(Array.from({ length: FLOOD_CLIENTS }, flood)).then(() => {
      floodDone = true;
    });
    const failures: number[] = [];
    for (let i = 0; i < LOGINS; i++) {
      const challenge = await askChallenge();
      // Let the flood run between the victim's challenge and its answer (bounded by the flood's end).
      const mark = sent;
      while (!floodDone && sent < mark + FLOOD_BETWEEN) await sleep(1);
      const r = await authenticate(challenge);
      if (r.status !== 200) failures.push(r.status);
    }
    await flooding;
    expect(sent).toBeGreaterThanOrEqual(FLOOD_TOTAL);
    expect(failures).toEqual([]);
  }, 120_000);

  it("a signed challenge is single use: of 30 parallel replays exactly one succeeds", async () => {
    const challenge = await askChallenge();
    const signature = loginSignature(doc, VICTIM, challenge, key.privateKey);
    const results = await Promise.all(
      Array.from({ length: 30 }, () =>
        client().post(doc.ddisa_auth_authenticate_endpoint!, { id: VICTIM, challenge, signature }),
      ),
    );
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
    expect(results.filter((r) => r.status === 401)).toHaveLength(29);
  });

  it("a challenge survives a restart of the IdP, and stays spent across it", async () => {
    const before = await askChallenge();
    const spent = await askChallenge();
    expect((await authenticate(spent)).status).toBe(200);
    const signature = loginSignature(doc, VICTIM, spent, key.privateKey);
    await idp.restart();
    doc = await discovery(idp.url);
    expect((await authenticate(before)).status).toBe(200);
    const replay = await client().post(doc.ddisa_auth_authenticate_endpoint!, {
      id: VICTIM,
      challenge: spent,
      signature,
    });
    expect(replay.status).toBe(401);
  });
});
