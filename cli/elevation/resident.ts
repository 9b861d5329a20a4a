import { spawn } from "node:child_process";
import type { Socket } from "node:net";
import { Readable } from "node:stream";
import { keepConnectionsWarm, warmFetch } from "../../client/http.ts";
import { READY_LINE } from "../../protocol/elevation.ts";
import { FrameError, FrameReader, serveResident } from "../../protocol/resident.ts";
import { type Context, createContext, type Output } from "../context.ts";
import { reportFailure, usageError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { requesterGlobals } from "./grammar.ts";
import { requesterArgs } from "./request-action.ts";

/**
 * The caller's warm requester (docs/elevation.md section 2): `apes __request --serve PATH --idle MS`,
 * started detached by a one-shot requester the shim gave `--resident PATH`, with that requester's
 * environment. It serves the same user's later elevations on PATH (in $XDG_RUNTIME_DIR/apes or
 * /tmp/apes-<uid>, 0700; the name carries a digest of the environment the requester reads and of
 * the executable, computed by the shim's child: native/warm.c), so they skip a Node start-up, and
 * the session, the TLS context and a kept-alive connection to the IdP are already there.
 *
 * It runs as the caller and can do nothing the caller's own `apes __request` could not: the verifier
 * checks what it delivers exactly as before. The shim's child (the caller's ids for good) relays:
 *   request, one line:  {"argv": ["__request", "--result-fd", "3", OPTION..., "--", CMD...], "tty": B}
 *   answer, frames:     `<fd> <n>\n` + n bytes for fd 1, 2 or 3 (the result pipe); `close 3\n`;
 *                       last `exit <status>\n`.
 * A client that goes away (Ctrl-C kills the child) aborts its request as SIGINT aborts a one-shot
 * requester: a grant it created is revoked.
 */

/** The request line: the argv is bounded by the shim (256 KiB of command), JSON may escape it. */
const MAX_REQUEST_LINE = 2 * 1024 * 1024;
/** The child writes its request right after connecting. */
const REQUEST_LINE_MS = 5000;
/** Progress frames beyond this much unsent output are dropped (a stopped client: Ctrl-Z); results never. */
const MAX_PENDING_OUTPUT = 256 * 1024;
/** Elevations of one user at once: more are refused (the child then runs its own requester). */
const MAX_CONNECTIONS = 16;

/** `__request --serve PATH --idle MS`: serves until idle, the socket is gone, or the executable changed. */
export async function serveWarmRequester(argv: readonly string[]): Promise<number> {
  const [, serve, path, idle, ms] = argv;
  if (
    serve !== "--serve" ||
    !path?.startsWith("/") ||
    idle !== "--idle" ||
    !/^\d{1,10}$/.test(ms ?? "") ||
    argv.length !== 5
  )
    throw usageError("usage: apes __request --serve PATH --idle MS");
  keepConnectionsWarm();
  const env = { ...process.env };
  const resident = await serveResident({
    socketPath: path,
    idleMs: Math.max(1000, Number(ms)),
    maxConnections: MAX_CONNECTIONS,
    onConnection: (socket) => serveOne(socket, env),
  });
  await resident.ended;
  return ExitCode.OK;
}

/**
 * Starts the warm requester for `path` (detached, its own session, no stdio) unless the caller's
 * config turns it off; one already serving there makes this one exit at once.
 */
export function startWarmRequester(path: string, keepWarmMs: number): void {
  if (keepWarmMs <= 0) return;
  const child = spawn(process.execPath, ["__request", "--serve", path, "--idle", String(keepWarmMs)], {
    detached: true,
    stdio: "ignore",
    cwd: "/",
    env: process.env,
  });
  child.on("error", () => {}); // best effort: the next elevation starts its own requester again
  child.unref();
}

async function serveOne(socket: Socket, env: NodeJS.ProcessEnv): Promise<void> {
  const reader = new FrameReader(socket);
  let argv: string[];
  let tty: boolean;
  try {
    const request = JSON.parse(
      await reader.readLine(MAX_REQUEST_LINE, performance.now() + REQUEST_LINE_MS),
    ) as {
      argv?: unknown;
      tty?: unknown;
    };
    if (
      !Array.isArray(request.argv) ||
      !request.argv.every((a) => typeof a === "string") ||
      request.argv[0] !== "__request"
    )
      return;
    argv = request.argv as string[];
    tty = request.tty === true;
  } catch (e) {
    if (e instanceof FrameError || e instanceof SyntaxError) return;
    throw e;
  }
  const frames = new Frames(socket);
  const controller = new AbortController();
  // The child shuts its side on Ctrl-C (SIGINT, SIGTERM, SIGHUP), or is gone: a requester's signal.
  const interrupted = () => controller.abort(new Error("interrupted"));
  socket.on("end", interrupted);
  socket.on("close", interrupted);
  const out = (fd: 1 | 2, isTTY: boolean): Output => ({ write: (s: string) => frames.output(fd, s), isTTY });
  const io = { stdout: out(1, false), stderr: out(2, tty), stdin: Readable.from([]) };
  let code: number;
  try {
    code = await runOne(argv, io, env, frames, controller.signal);
  } catch (e) {
    code = reportFailure(e, io.stderr, () => env.APES_DEBUG === "1");
  }
  await frames.end(code); // the server destroys the socket once this returns: flushed first
}

async function runOne(
  argv: readonly string[],
  io: Context["io"],
  env: NodeJS.ProcessEnv,
  frames: Frames,
  signal: AbortSignal,
): Promise<number> {
  const { fdText, rest, req, resident } = requesterArgs(argv);
  if (resident !== undefined) throw usageError("--resident is for a one-shot requester");
  if (fdText !== "3") throw usageError("the warm requester delivers on fd 3 only");
  const http = warmFetch();
  const ctx = createContext(requesterGlobals(rest, env), { io, env, ...(http ? { http } : {}) });
  ctx.debug(`served by the warm requester (pid ${process.pid})`);
  const { runRequester } = await import("./request.ts");
  return runRequester(ctx, req, {
    resultFd: 3,
    signal,
    deps: {
      checkFd: () => {}, // the child's fd 3 is the shim's pipe, checked there
      ready: () => frames.result(READY_LINE),
      deliver: (_fd, token) => frames.result(token, true),
    },
  });
}

/** The answer's frames on the socket; progress is dropped rather than buffered without bound. */
class Frames {
  private readonly socket: Socket;

  constructor(socket: Socket) {
    this.socket = socket;
  }

  output(fd: 1 | 2, text: string): void {
    if (this.socket.destroyed || this.socket.writableLength > MAX_PENDING_OUTPUT) return;
    this.frame(fd, text);
  }

  result(text: string, last = false): void {
    if (this.socket.destroyed) return;
    this.frame(3, text);
    if (last) this.socket.write("close 3\n");
  }

  end(code: number): Promise<void> {
    if (this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.socket.end(`exit ${code}\n`, () => resolve()));
  }

  private frame(fd: number, text: string): void {
    const bytes = Buffer.from(text, "utf8");
    this.socket.write(`${fd} ${bytes.length}\n`);
    this.socket.write(bytes);
  }
}
