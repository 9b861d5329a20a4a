import { type KeyObject, sign, verify } from "node:crypto";
import { availableParallelism } from "node:os";

/**
 * Ed25519 off the event loop while other requests wait for it: node:crypto's callback form runs the
 * signature on libuv's thread pool, so the loop handles other requests while another core signs or
 * verifies. A lone request keeps it inline: the hop to the pool and back only adds latency when
 * nothing else could use the loop meanwhile (bench/BENCHMARKS.md, "Signatures off the event loop"),
 * and so does a process confined to one CPU.
 * Same operations, same answers, either way.
 */

/** Requests being handled on this process's event loop (the request pipeline counts them). */
let handling = 0;

export function requestStarted(): void {
  handling++;
}

export function requestEnded(): void {
  handling--;
}

export function requestsInFlight(): number {
  return handling;
}

/** CPUs this process may run on (its affinity included), read once. */
const CPUS = availableParallelism();

/**
 * To the pool only while another request is in flight and there is another CPU to sign on: confined
 * to one CPU, the hop costs CPU and gains nothing (bench/BENCHMARKS.md, "Every core").
 */
export function offloads(inFlight: number, cpus: number): boolean {
  return inFlight > 1 && cpus > 1;
}

const othersWaiting = () => offloads(requestsInFlight(), CPUS);

export function ed25519Sign(data: Buffer, key: KeyObject): Promise<Buffer> {
  if (!othersWaiting()) return Promise.resolve(sign(null, data, key));
  return new Promise((resolve, reject) =>
    sign(null, data, key, (e, signature) => (e ? reject(e) : resolve(signature))),
  );
}

/** True when `signature` is `key`'s over `data`, as verify() answers. */
export function ed25519Verify(data: Buffer, key: KeyObject, signature: Buffer): Promise<boolean> {
  if (!othersWaiting()) return Promise.resolve(verify(null, data, key, signature));
  return new Promise((resolve, reject) =>
    verify(null, data, key, signature, (e, ok) => (e ? reject(e) : resolve(ok))),
  );
}
