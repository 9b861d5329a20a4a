import cluster, { type Worker } from "node:cluster";
import { isSea } from "node:sea";
import type { Logger } from "./log.ts";

/**
 * A server on several cores: node:cluster, one primary supervising N worker processes that share the
 * listening socket (the primary accepts and hands connections round robin). The primary serves no
 * request; it starts the workers, relays what one worker tells the others (change events: a long
 * poll parked on one worker must hear of an approval on another), restarts a worker that dies, and
 * on stop drains them all. A worker whose primary is gone exits: without the primary nothing holds
 * the data dir's lock any more.
 *
 * Messages (IPC, JSON): worker -> primary {t:"ready", info} once it listens, {t:"relay", body} to pass
 * on; primary -> worker {t:"relay", body} from another worker, {t:"missed"} when a worker died (what it
 * committed may not have been relayed: re-read what is waited on).
 */

/** What a worker is told at start (environment) and what it can say to the others. */
export interface WorkerRole {
  /** 1..count, kept across restarts (worker 1 does the housekeeping). */
  index: number;
  count: number;
  /** Passes `body` to every other worker (their onRelay). */
  relay(body: unknown): void;
  onRelay(handler: (body: unknown) => void): void;
  /** Another worker died: what it committed may not have been relayed. */
  onMissed(handler: () => void): void;
  /** Tells the primary this worker listens (it logs "listening" once every worker has). */
  ready(info: Record<string, unknown>): void;
}

const INDEX_ENV = "APES_WORKER_INDEX";
const COUNT_ENV = "APES_WORKER_COUNT";

/** This process's role when it is a worker of superviseWorkers, else undefined. */
export function workerRole(): WorkerRole | undefined {
  if (cluster.isPrimary || !process.send) return undefined;
  const index = Number(process.env[INDEX_ENV]);
  const count = Number(process.env[COUNT_ENV]);
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(count) || index < 1 || index > count)
    throw new Error(`not a worker of apes: ${INDEX_ENV}/${COUNT_ENV} missing`);
  const relayHandlers: ((body: unknown) => void)[] = [];
  const missedHandlers: (() => void)[] = [];
  process.on("message", (m: { t?: string; body?: unknown }) => {
    if (m?.t === "relay") for (const h of relayHandlers) h(m.body);
    else if (m?.t === "missed") for (const h of missedHandlers) h();
  });
  const send = (m: unknown) => {
    // The channel is gone only when the primary is (the disconnect handler ends this process).
    if (process.connected) process.send!(m, undefined, undefined, () => {});
  };
  return {
    index,
    count,
    relay: (body) => send({ t: "relay", body }),
    onRelay: (h) => relayHandlers.push(h),
    onMissed: (h) => missedHandlers.push(h),
    ready: (info) => send({ t: "ready", info }),
  };
}

/**
 * Called once in a worker: when the primary goes away (killed), `stop` runs (drain, close the
 * store) and the process exits; a second signal while draining is ignored (a supervisor's SIGTERM
 * reaches the whole process group and the primary forwards one too).
 */
export function exitWithPrimary(stop: () => Promise<void>): void {
  const exit = () => void stop().finally(() => process.exit(0));
  if (!process.connected)
    exit(); // it went while this worker was starting
  else process.once("disconnect", exit);
}

/**
 * A worker that failed to start: nothing but the channel to its primary holds it, so it closes the
 * channel (as a planned disconnect: cluster would otherwise exit at once with 0) and exits with
 * `exitCode`, which tells the primary why.
 */
export function leavePrimary(exitCode: number): void {
  process.exitCode = exitCode;
  cluster.worker?.disconnect();
}

export interface Supervisor {
  /** Resolves with the first worker's ready info once every worker listens. */
  ready: Promise<Record<string, unknown>>;
  /**
   * Resolves with an exit code when the workers cannot be kept running (one failed at start: its
   * own exit code; or they keep crashing: 1). Never resolves while they run.
   */
  failed: Promise<number>;
  /** SIGTERM to every worker; resolves once all have exited. */
  stop(): Promise<void>;
}

/** Restarts allowed within RESTART_WINDOW_MS before the primary gives up (the service manager restarts it). */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;

/**
 * In the primary: forks `count` workers running this same command line. `argv` is the command's
 * arguments (without the executable); in a single executable they are passed as they are, from
 * source after the script.
 */
export function superviseWorkers(count: number, log: Logger, argv: readonly string[]): Supervisor {
  if (!cluster.isPrimary) throw new Error("superviseWorkers runs in the primary");
  // cluster.fork runs execPath with [execArgv, exec, args]. A single executable repeats argv[0] as
  // argv[1] itself, so there the first argument stands in for the script and the rest follow.
  cluster.setupPrimary(
    isSea()
      ? { exec: argv[0] ?? "", args: argv.slice(1), execArgv: [] }
      : { exec: process.argv[1] ?? "", args: [...argv] },
  );
  const workers = new Map<number, Worker>(); // index -> worker
  const readyInfo = new Map<number, Record<string, unknown>>();
  const ready = Promise.withResolvers<Record<string, unknown>>();
  const failed = Promise.withResolvers<number>();
  let allReady = false;
  let stopping = false;
  const restarts: number[] = [];

  const others = (index: number) => [...workers].filter(([i]) => i !== index).map(([, w]) => w);
  const send = (w: Worker, m: unknown) => {
    if (w.isConnected()) w.send(m as object, undefined, () => {});
  };

  const fork = (index: number) => {
    const w = cluster.fork({ [INDEX_ENV]: String(index), [COUNT_ENV]: String(count) });
    workers.set(index, w);
    w.on("message", (m: { t?: string; body?: unknown; info?: Record<string, unknown> }) => {
      if (m?.t === "relay") for (const o of others(index)) send(o, { t: "relay", body: m.body });
      else if (m?.t === "ready" && m.info) {
        readyInfo.set(index, m.info);
        // Worker 1 first, alone: a first start creates the signing key and the data dir's secrets once.
        if (index === 1 && readyInfo.size === 1 && !allReady) for (let i = 2; i <= count; i++) fork(i);
        if (!allReady && readyInfo.size === count) {
          allReady = true;
          ready.resolve(readyInfo.get(1)!);
        }
      }
    });
    w.on("exit", (code, signal) => {
      if (workers.get(index) === w) workers.delete(index);
      if (stopping) return;
      if (!allReady) {
        // A worker that cannot start (the port, the config): the others cannot either.
        stopping = true;
        for (const o of workers.values()) o.process.kill("SIGTERM");
        failed.resolve(typeof code === "number" && code !== 0 ? code : 1);
        return;
      }
      log.always("error", "worker died; restarting it", { worker: index, code, signal });
      for (const o of workers.values()) send(o, { t: "missed" });
      const now = Date.now();
      restarts.push(now);
      while (restarts[0]! < now - RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length > MAX_RESTARTS) {
        log.always("error", "workers keep dying; stopping", { restarts: restarts.length });
        stopping = true;
        for (const o of workers.values()) o.process.kill("SIGTERM");
        failed.resolve(1);
        return;
      }
      setTimeout(() => {
        if (!stopping) fork(index);
      }, 100 * restarts.length).unref();
    });
  };
  fork(1);

  return {
    ready: ready.promise,
    failed: failed.promise,
    async stop() {
      stopping = true;
      const exits = [...workers.values()].map(
        (w) =>
          new Promise<void>((resolve) => {
            if (w.process.exitCode !== null || w.process.signalCode !== null) return resolve();
            w.once("exit", () => resolve());
            w.process.kill("SIGTERM");
          }),
      );
      await Promise.all(exits);
    },
  };
}
