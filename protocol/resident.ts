import { lstatSync, mkdirSync, statSync, unlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { dirname } from "node:path";

/**
 * A resident helper on a unix socket: the long-lived halves of an elevation (the verifier service,
 * a caller's warm requester; docs/elevation.md) that keep a warm runtime, kept-alive connections and
 * caches, so an elevation does not pay a Node start-up for each. One process per socket path; it
 * ends by itself, so nothing stale keeps answering:
 *   - idle (no connection open) for `idleMs`;
 *   - its socket file removed or replaced (another server took the path, or the directory is gone);
 *   - the executable it runs from changed on disk (an upgrade: the next start runs the new code).
 * Clients check who listens (native/sock.c `sock_connect_owned`: directory and socket owned by the
 * expected user, mode 0700, SO_PEERCRED) and wait for its greeting; this side creates the directory 0700 and refuses one that
 * is a symlink, someone else's, or open to group or others.
 */

/** The first line on every connection (native/sock.c `sock_greeted` reads it): served, or not. */
export const GREETING_READY = "ready\n";
export const GREETING_BUSY = "busy\n";

export interface ResidentOptions {
  /** Absolute path of the socket; its directory is created 0700 when missing. */
  socketPath: string;
  /** Ends after this long with no connection open. */
  idleMs: number;
  /** Connections beyond this are greeted GREETING_BUSY and closed (the client uses its one-shot path). */
  maxConnections: number;
  /** Serves one connection; the socket is destroyed when it settles. */
  onConnection(socket: Socket): Promise<void>;
  /** How often the socket file and the executable are looked at (default 1000 ms). */
  checkEveryMs?: number;
  /** The file whose change ends the server (default process.execPath). */
  executable?: string;
}

export interface Resident {
  /** Why it ended: "idle", "socket_gone", "executable_changed", or the reason given to close(). */
  readonly ended: Promise<string>;
  /** Stops accepting, lets open connections finish, removes the socket if it is still its own. */
  close(reason: string): void;
}

/** The server cannot start: the directory is not safe, or another server answers on the path. */
export class ResidentError extends Error {
  readonly code: "unsafe_directory" | "already_running" | "listen_failed";
  constructor(message: string, code: ResidentError["code"]) {
    super(message);
    this.code = code;
  }
}

export async function serveResident(options: ResidentOptions): Promise<Resident> {
  const { socketPath } = options;
  ensurePrivateDirectory(dirname(socketPath));
  const active = new Set<Socket>();
  let lastActivity = performance.now();
  // Half-open: a client may shut its side to say "stop" and still read the answer (native/warm.c).
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => {}); // a client that goes away mid-answer is its own problem
    // The greeting says whether this one will be served, before the client sends anything: a client
    // told "busy" (or that gets no greeting) uses its one-shot path, with nothing done twice.
    if (active.size >= options.maxConnections) {
      socket.end(GREETING_BUSY);
      return;
    }
    active.add(socket);
    lastActivity = performance.now();
    socket.write(GREETING_READY);
    options
      .onConnection(socket)
      .catch(() => {})
      .finally(() => {
        socket.destroy();
        active.delete(socket);
        lastActivity = performance.now();
      });
  });
  await listenOn(server, socketPath);
  const ownIno = lstatSync(socketPath).ino;
  const executable = options.executable ?? process.execPath;
  const exeId = fileIdentity(executable);

  let settle!: (why: string) => void;
  const ended = new Promise<string>((resolve) => {
    settle = resolve;
  });
  let closing = false;
  const close = (reason: string) => {
    if (closing) return;
    closing = true;
    clearInterval(timer);
    server.close(() => settle(reason));
    if (socketIno(socketPath) === ownIno) {
      try {
        unlinkSync(socketPath);
      } catch {
        // gone already
      }
    }
  };
  const timer = setInterval(() => {
    if (socketIno(socketPath) !== ownIno) return close("socket_gone");
    // Gone already at the start (removed between its exec and here) counts as changed too.
    if (exeId === undefined || fileIdentity(executable) !== exeId) return close("executable_changed");
    if (active.size === 0 && performance.now() - lastActivity >= options.idleMs) close("idle");
  }, options.checkEveryMs ?? 1000);
  timer.unref();
  // The interval is unref'd; the listening server keeps the process alive until close().
  return { ended, close };
}

/** The directory of the socket: made 0700 when missing; else a real directory of ours, 0700. */
function ensurePrivateDirectory(dir: string): void {
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST")
      throw new ResidentError(`cannot create ${dir}: ${(e as Error).message}`, "unsafe_directory");
  }
  const st = lstatSync(dir);
  const uid = process.getuid?.();
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0)
    throw new ResidentError(
      `${dir} must be a directory of uid ${uid} with mode 0700 (no symlink)`,
      "unsafe_directory",
    );
}

/** Binds the path; a socket file nobody answers on is stale and replaced, a live one is refused. */
async function listenOn(server: Server, path: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(path, () => {
          server.off("error", reject);
          resolve();
        });
      });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EADDRINUSE" || attempt > 0)
        throw new ResidentError(`cannot listen on ${path}: ${(e as Error).message}`, "listen_failed");
      if (await answers(path))
        throw new ResidentError(`another server already answers on ${path}`, "already_running");
      const st = lstatSync(path);
      if (!st.isSocket()) throw new ResidentError(`${path} exists and is not a socket`, "listen_failed");
      unlinkSync(path);
    }
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createConnection(path);
    const done = (alive: boolean) => {
      probe.destroy();
      resolve(alive);
    };
    probe.once("connect", () => done(true));
    probe.once("error", () => done(false));
    probe.setTimeout(1000, () => done(false));
  });
}

function socketIno(path: string): number | undefined {
  try {
    return lstatSync(path).ino;
  } catch {
    return undefined;
  }
}

function fileIdentity(path: string): string | undefined {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return undefined;
  }
}

/** A bounded read on a socket failed: too long, not in time, or the peer closed first. */
export class FrameError extends Error {
  readonly code: "too_long" | "timeout" | "closed";
  constructor(message: string, code: FrameError["code"]) {
    super(message);
    this.code = code;
  }
}

/**
 * Reads a socket as lines and counted byte runs, each bounded in size and by an absolute deadline
 * (performance.now() time). Bytes past what was asked for stay buffered for the next read.
 */
export class FrameReader {
  private buffered: Buffer = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | undefined;

  constructor(socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
      this.wake?.();
    });
    const end = () => {
      this.ended = true;
      this.wake?.();
    };
    socket.on("end", end);
    socket.on("close", end);
  }

  /** One line without its "\n", at most maxBytes before it. */
  async readLine(maxBytes: number, deadline: number): Promise<string> {
    for (;;) {
      const nl = this.buffered.indexOf(10);
      if (nl >= 0 && nl <= maxBytes) {
        const line = this.buffered.subarray(0, nl).toString("utf8");
        this.buffered = this.buffered.subarray(nl + 1);
        return line;
      }
      if (nl > maxBytes || (nl < 0 && this.buffered.length > maxBytes))
        throw new FrameError(`a line longer than ${maxBytes} bytes`, "too_long");
      await this.more(deadline);
    }
  }

  /** Exactly n bytes. */
  async readBytes(n: number, deadline: number): Promise<Buffer> {
    while (this.buffered.length < n) await this.more(deadline);
    const out = this.buffered.subarray(0, n);
    this.buffered = this.buffered.subarray(n);
    return out;
  }

  private more(deadline: number): Promise<void> {
    if (this.ended) return Promise.reject(new FrameError("the peer closed the connection", "closed"));
    const left = deadline - performance.now();
    if (left <= 0) return Promise.reject(new FrameError("not in time", "timeout"));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        reject(new FrameError("not in time", "timeout"));
      }, left);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }
}
