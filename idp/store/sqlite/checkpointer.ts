import { Worker } from "node:worker_threads";

const WORKER = `
const { parentPort, workerData } = require("node:worker_threads");
const { DatabaseSync } = require("node:sqlite");
const db = new DatabaseSync(workerData.file, { timeout: 5000 });
const run = () => { try { db.exec("PRAGMA wal_checkpoint(PASSIVE)"); } catch {} };
const timer = setInterval(run, workerData.intervalMs);
parentPort.on("message", () => { clearInterval(timer); run(); db.close(); parentPort.close(); });
`;

/**
 * Checkpoints the WAL of `file` every `intervalMs` from a worker thread with its own connection:
 * copying pages and syncing the files then never stalls the server's event loop (a PASSIVE
 * checkpoint does not block writers). When the worker fails (e.g. no file descriptor left for its
 * connection), `onError` hears why and `checkpointHere` runs on this thread instead: the WAL must
 * not grow without bound. Returns a function that stops it (after one last checkpoint).
 */
export function startCheckpointer(
  file: string,
  intervalMs: number,
  checkpointHere: () => void,
  onError: (e: Error) => void,
): () => Promise<void> {
  const worker = new Worker(WORKER, { eval: true, workerData: { file, intervalMs } });
  worker.unref();
  let fallback: NodeJS.Timeout | undefined;
  const exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()));
  worker.on("error", (e) => {
    onError(e);
    if (fallback) return;
    fallback = setInterval(() => {
      try {
        checkpointHere();
      } catch {
        // busy or closing: the next tick tries again
      }
    }, intervalMs);
    fallback.unref();
  });
  return async () => {
    clearInterval(fallback);
    worker.postMessage("stop");
    const t = setTimeout(() => void worker.terminate(), 2000);
    await exited;
    clearTimeout(t);
  };
}
