import type { Context, Fetch } from "../context.ts";
import { CliError, usageError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { elevationFromRaw } from "./grammar.ts";

/**
 * The action of `apes __request --result-fd N [elevation options] -- CMD...` (docs/elevation.md
 * section 2): parses the fixed argv, ties SIGINT/SIGTERM/SIGHUP and a broken stdout/stderr to one
 * abort signal and runs the requester (./request.ts).
 */

/**
 * `__request --result-fd N [--resident PATH] [elevation options] -- CMD...` split up: the fd as text,
 * the warm requester's socket the shim's child asks this one to start (native/warm.c), and the
 * elevation. Throws a usage error.
 */
export function requesterArgs(raw: readonly string[]): {
  fdText: string;
  resident?: string;
  rest: string[];
  req: ReturnType<typeof elevationFromRaw>;
} {
  if (raw[0] !== "__request") throw usageError("__request must come first");
  let rest = raw.slice(1);
  let fdText: string | undefined;
  if (rest[0] === "--result-fd") {
    fdText = rest[1];
    rest = rest.slice(2);
  } else if (rest[0]?.startsWith("--result-fd=")) {
    fdText = rest[0].slice("--result-fd=".length);
    rest = rest.slice(1);
  }
  if (!fdText || !/^\d{1,4}$/.test(fdText)) throw usageError("__request needs --result-fd N first");
  let resident: string | undefined;
  if (rest[0] === "--resident") {
    resident = rest[1];
    rest = rest.slice(2);
    if (!resident?.startsWith("/") || resident.includes("\0"))
      throw usageError("--resident needs an absolute path");
  }
  return { fdText, rest, req: elevationFromRaw(rest), ...(resident ? { resident } : {}) };
}

/** `raw` is the whole argv, starting with `__request`. */
export async function requestAction(base: Context, raw: readonly string[]): Promise<void> {
  const { fdText, req, resident } = requesterArgs(raw);
  // The runtime's fetch loads Node's bundled undici on first use (~30 ms); the requester runs once
  // per elevation, so it talks HTTP through client/http.ts's node:http(s) client instead.
  const { nodeFetch } = await import("../../client/http.ts");
  const ctx: Context = { ...base, http: ((input, init) => nodeFetch(input, init)) as Fetch };
  const controller = new AbortController();
  const onSignal = () => controller.abort(new Error("interrupted"));
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.on(s, onSignal);
  // A stdout or stderr that breaks (EPIPE, EBADF) ends the run like a signal does, so the grant it
  // created is revoked, instead of main.ts's exit (or crash) leaving it pending.
  const restore = [process.stdout, process.stderr].map((stream) => {
    const previous = stream.listeners("error") as ((e: Error) => void)[];
    const onError = (e: Error) =>
      controller.abort(new CliError(`cannot write progress: ${e.message}`, { exitCode: ExitCode.ERROR }));
    stream.removeAllListeners("error").on("error", onError);
    return () => {
      stream.off("error", onError);
      for (const l of previous) stream.on("error", l);
    };
  });
  try {
    const { runRequester } = await import("./request.ts");
    await runRequester(ctx, req, { resultFd: Number(fdText), signal: controller.signal });
  } finally {
    for (const s of signals) process.off(s, onSignal);
    for (const r of restore) r();
    // After the result is out: the next elevation of this caller finds a warm requester.
    if (resident) await startWarm(base, resident);
  }
}

async function startWarm(ctx: Context, path: string): Promise<void> {
  try {
    const { keepWarmMs } = await ctx.config();
    const { startWarmRequester } = await import("./resident.ts");
    startWarmRequester(path, keepWarmMs);
  } catch {
    // a config error was reported already, or will be by the next command: nothing to warm
  }
}
