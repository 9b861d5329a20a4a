// Would worker threads for Ed25519 help the IdP? The main thread's CPU per operation done inline
// (node:crypto sign + verify, as one lifecycle does one of each) against the main thread's CPU per
// operation handed to a worker thread (postMessage there and back, 50 in flight, as 50 clients
// would keep them). process.threadCpuUsage() counts the calling thread only, so the offloaded
// work itself is not in the second figure. Run with the pinned node:
// `node bench/idp-workers/crypto-offload.ts`.
import { generateKeyPairSync, sign, verify } from "node:crypto";
import { Worker } from "node:worker_threads";

const N = Number(process.argv.find((a) => a.startsWith("--ops="))?.slice(6) ?? 20_000);
const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const message = Buffer.alloc(300, 7); // about an AuthZ-JWT's signing input
const signature = sign(null, message, privateKey);

const us = (u: { user: number; system: number }) => u.user + u.system;

function inline(): number {
  const t = process.threadCpuUsage();
  for (let i = 0; i < N; i++) {
    sign(null, message, privateKey);
    verify(null, message, publicKey, signature);
  }
  return us(process.threadCpuUsage(t)) / N;
}

async function offloaded(): Promise<number> {
  const worker = new Worker(
    `const { parentPort, workerData } = require("node:worker_threads");
     const { createPrivateKey, createPublicKey, sign, verify } = require("node:crypto");
     const priv = createPrivateKey(workerData.priv); const pub = createPublicKey(workerData.pub);
     parentPort.on("message", ({ id, message, signature }) => {
       const s = sign(null, message, priv);
       parentPort.postMessage({ id, s, ok: verify(null, message, pub, signature) });
     });`,
    {
      eval: true,
      workerData: {
        priv: privateKey.export({ format: "pem", type: "pkcs8" }),
        pub: publicKey.export({ format: "pem", type: "spki" }),
      },
    },
  );
  const pending = new Map<number, () => void>();
  worker.on("message", (m: { id: number }) => pending.get(m.id)!());
  const call = (id: number) =>
    new Promise<void>((resolve) => {
      pending.set(id, resolve);
      worker.postMessage({ id, message, signature });
    });
  await call(-1); // warm
  const t = process.threadCpuUsage();
  let next = 0;
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (next < N) await call(next++);
    }),
  );
  const perOp = us(process.threadCpuUsage(t)) / N;
  await worker.terminate();
  return perOp;
}

for (let round = 0; round < 3; round++) {
  const a = inline();
  const b = await offloaded();
  console.log(
    `round ${round + 1}: main-thread CPU per sign+verify: inline ${a.toFixed(1)} us, handed to a worker thread ${b.toFixed(1)} us (${((100 * b) / a).toFixed(0)} %)`,
  );
}
