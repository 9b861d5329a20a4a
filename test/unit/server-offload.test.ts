import { execFileSync } from "node:child_process";
import { generateKeyPairSync, pbkdf2, sign, verify } from "node:crypto";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ed25519Sign, ed25519Verify, offloads, requestEnded, requestStarted } from "../../server/offload.ts";

/** Signatures off the event loop: the same answers inline and in the pool, and the pool only when others wait. */

const { publicKey, privateKey } = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519").publicKey;
const data = Buffer.from("apes-signature-v1\nlogin\nhttps://idp.test\nalice@example.com\nchallenge");

/** Runs `fn` as if `n` requests were being handled. */
async function handling<T>(n: number, fn: () => Promise<T>): Promise<T> {
  for (let i = 0; i < n; i++) requestStarted();
  try {
    return await fn();
  } finally {
    for (let i = 0; i < n; i++) requestEnded();
  }
}

/** Occupies every thread of libuv's pool (and queues more) for a while; resolves when the first job ends. */
function busyPool(): Promise<void> {
  let first: () => void;
  const ended = new Promise<void>((r) => {
    first = r;
  });
  for (let i = 0; i < 16; i++) pbkdf2("x", "salt", 400_000, 32, "sha256", () => first());
  return ended;
}

describe("ed25519 off the event loop", () => {
  for (const inFlight of [1, 3]) {
    it(`answers as node:crypto does (${inFlight} request(s) in flight)`, async () => {
      await handling(inFlight, async () => {
        const signature = await ed25519Sign(data, privateKey);
        expect(signature.equals(sign(null, data, privateKey))).toBe(true); // Ed25519 is deterministic
        expect(await ed25519Verify(data, publicKey, signature)).toBe(true);
        expect(verify(null, data, publicKey, signature)).toBe(true);
        // Refusals: another key, other data, a changed byte, a short or empty signature.
        expect(await ed25519Verify(data, other, signature)).toBe(false);
        expect(await ed25519Verify(Buffer.from("other"), publicKey, signature)).toBe(false);
        const changed = Buffer.from(signature);
        changed[10]! ^= 1;
        expect(await ed25519Verify(data, publicKey, changed)).toBe(false);
        expect(await ed25519Verify(data, publicKey, signature.subarray(0, 63))).toBe(false);
        expect(await ed25519Verify(data, publicKey, Buffer.alloc(0))).toBe(false);
      });
    });
  }

  it("offloads only with another request in flight and another CPU", () => {
    expect(offloads(1, 8)).toBe(false);
    expect(offloads(0, 8)).toBe(false);
    expect(offloads(2, 1)).toBe(false);
    expect(offloads(50, 1)).toBe(false);
    expect(offloads(2, 2)).toBe(true);
    expect(offloads(50, 32)).toBe(true);
  });

  it("a process confined to one CPU keeps them inline, busy or not (taskset)", () => {
    // The order check below, in a process taskset confines to CPU 0: there, even with others in
    // flight, the signature is made before the pool's first job ends.
    const script = `
      import { pbkdf2, generateKeyPairSync } from "node:crypto";
      import { ed25519Sign, requestStarted } from ${JSON.stringify(join(import.meta.dirname, "../../server/offload.ts"))};
      const key = generateKeyPairSync("ed25519").privateKey;
      const order = [];
      let first;
      const ended = new Promise((r) => { first = r; }).then(() => order.push("pool job"));
      for (let i = 0; i < 16; i++) pbkdf2("x", "salt", 400000, 32, "sha256", () => first());
      requestStarted(); requestStarted();
      await ed25519Sign(Buffer.from("x"), key).then(() => order.push("with others"));
      await ended;
      console.log(JSON.stringify(order));`;
    const out = execFileSync("taskset", ["-c", "0", process.execPath, "--input-type=module", "-e", script], {
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(JSON.parse(out)).toEqual(["with others", "pool job"]);
  });

  it("stays inline for a lone request and goes to the thread pool while others are in flight", async () => {
    const order: string[] = [];
    const firstPoolJob = busyPool().then(() => order.push("pool job"));
    // Alone: answered without the pool, so before any of the pool's long jobs ends.
    await handling(1, async () => {
      await ed25519Verify(data, publicKey, sign(null, data, privateKey)).then(() => order.push("alone"));
    });
    // With others in flight: queued behind the pool's jobs, so answered only after one of them ends.
    await handling(2, async () => {
      await ed25519Sign(data, privateKey).then(() => order.push("with others"));
    });
    await firstPoolJob;
    expect(order).toEqual(["alone", "pool job", "with others"]);
  }, 60_000);
});
