import { constants, type Stats } from "node:fs";
import {
  chmod,
  type FileHandle,
  lstat,
  mkdir,
  open,
  readFile,
  rename,
  stat,
  unlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { ClientContext } from "./context.ts";
import { ClientError, type SessionFileRefusal } from "./errors.ts";

/**
 * The session file `<configDir>/auth.json` (0600 in a 0700 directory; the CLI's configDir is
 * `$XDG_CONFIG_HOME/apes`, the Nest's is in its own HOME, same format). Written atomically (temp
 * file + rename) under an O_EXCL lock file, so concurrent apes processes never see a torn file and
 * re-authenticate once: whoever takes the lock re-reads the file and only logs in if still needed.
 */

type StoreContext = Pick<ClientContext, "paths" | "debug">;

export interface StoredSession {
  version: 1;
  idp: string;
  email: string;
  act: "human" | "agent";
  token: string;
  /** Unix seconds. */
  expires_at: number;
  /** Absolute path of the private key used to log in (re-authentication reads it). */
  key_path?: string;
  /** `SHA256:...` of that key, to notice a different key at the same path. */
  key_fingerprint?: string;
  /** Unix seconds of the last key login (diagnostics). */
  authenticated_at?: number;
  /** The token's `iat` (its lifetime sets the renewal margin for short-lived tokens). */
  issued_at?: number;
  /** A browser or device login (client/oauth.ts): renewed with this refresh token (rotated at each use) ... */
  refresh_token?: string;
  /** ... sent with this client_id (the IdP refuses a refresh without it). */
  client_id?: string;
  /** How the session was made: "key" (default), "browser" or "device". */
  method?: "key" | "browser" | "device";
}

export function authFile(ctx: Pick<ClientContext, "paths">): string {
  return join(ctx.paths.configDir, "auth.json");
}

/** auth.json holds a token and a few fields; anything larger is not one apes wrote. */
export const MAX_SESSION_BYTES = 64 * 1024;

/** What lstat/fstat tell about a session file (a subset of fs.Stats, for the pure check). */
export interface FileFacts {
  isFile(): boolean;
  isSymbolicLink(): boolean;
  isDirectory(): boolean;
  mode: number;
  uid: number;
}

/**
 * Why the file at auth.json must not be used (what is wrong, and which kind of wrong), or undefined
 * when it may: a regular file (not a symlink, FIFO, device or directory), owned by `uid`, with no
 * access for group or others (a token others could read may be stolen; one they could write may be
 * planted).
 */
export function sessionFileRefusal(
  file: string,
  st: FileFacts,
  uid: number | undefined,
): { problem: string; kind: SessionFileRefusal } | undefined {
  if (st.isSymbolicLink()) return { problem: `${file} is a symbolic link`, kind: "symlink" };
  if (!st.isFile()) {
    const what = st.isDirectory() ? "a directory" : "not a regular file";
    return { problem: `${file} is ${what}`, kind: "not_file" };
  }
  if (uid !== undefined && st.uid !== uid) {
    return { problem: `${file} belongs to uid ${st.uid}, not to you (uid ${uid})`, kind: "foreign_owner" };
  }
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, "0");
    return {
      problem: `${file} is accessible by others (mode ${mode}): its token may have been read or replaced`,
      kind: "open_mode",
    };
  }
  return undefined;
}

/**
 * Reads auth.json: undefined when absent; a ClientError (session_unreadable, session_broken,
 * session_file_refused) when unreadable, malformed, or not a private regular file of ours. lstat first, so a FIFO or device is never
 * opened; then O_NOFOLLOW | O_NONBLOCK and an fstat of the open file, so one swapped in between
 * cannot redirect or hang the read.
 */
export async function readSession(ctx: Pick<ClientContext, "paths">): Promise<StoredSession | undefined> {
  // Another apes command may replace the file (atomic rename) between our lstat and open: that is a
  // newer session, not an attack (the open file is checked on its own), so look again, a few times.
  for (let attempt = 1; ; attempt++) {
    const session = await readSessionOnce(ctx, attempt < READ_ATTEMPTS);
    if (session !== REPLACED) return session;
  }
}

const READ_ATTEMPTS = 5;
const REPLACED = Symbol("replaced while being read");

async function readSessionOnce(
  ctx: Pick<ClientContext, "paths">,
  mayRetry: boolean,
): Promise<StoredSession | undefined | typeof REPLACED> {
  const file = authFile(ctx);
  const unreadable = (e: unknown) =>
    new ClientError("session_unreadable", `cannot read ${file}: ${(e as Error).message}`, { file });
  const uid = process.getuid?.();
  const refuse = (st: FileFacts) => {
    const why = sessionFileRefusal(file, st, uid);
    if (why) throw new ClientError("session_file_refused", why.problem, { file, refusal: why.kind });
  };
  let before: Stats;
  try {
    before = await lstat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw unreadable(e);
  }
  refuse(before);
  let fh: FileHandle;
  try {
    fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    throw unreadable(e);
  }
  let text: string;
  try {
    const st = await fh.stat();
    if (st.dev !== before.dev || st.ino !== before.ino) {
      if (mayRetry) return REPLACED;
      throw unreadable(new Error("it changed while being read"));
    }
    refuse(st);
    if (st.size > MAX_SESSION_BYTES) throw brokenSession(file, `larger than ${MAX_SESSION_BYTES / 1024} KiB`);
    text = await fh.readFile("utf8");
  } catch (e) {
    throw e instanceof ClientError ? e : unreadable(e);
  } finally {
    await fh.close();
  }
  return parseSession(text, file);
}

function brokenSession(file: string, what: string): ClientError {
  return new ClientError("session_broken", `${file} is broken: ${what}`, { file });
}

export function parseSession(text: string, file: string): StoredSession {
  const broken = (what: string) => brokenSession(file, what);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw broken("not valid JSON");
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw broken("not a JSON object");
  const s = v as Record<string, unknown>;
  if (s.version !== 1) throw broken(`unknown version ${JSON.stringify(s.version)}`);
  for (const k of ["idp", "email", "token"] as const) {
    if (typeof s[k] !== "string" || s[k] === "") throw broken(`"${k}" missing`);
  }
  if (s.act !== "human" && s.act !== "agent") throw broken('"act" must be "human" or "agent"');
  if (typeof s.expires_at !== "number" || !Number.isFinite(s.expires_at))
    throw broken('"expires_at" missing');
  if (s.issued_at !== undefined && typeof s.issued_at !== "number")
    throw broken('"issued_at" must be a number');
  for (const k of ["key_path", "key_fingerprint", "refresh_token", "client_id"] as const) {
    if (s[k] !== undefined && typeof s[k] !== "string") throw broken(`"${k}" must be a string`);
  }
  if (s.method !== undefined && s.method !== "key" && s.method !== "browser" && s.method !== "device")
    throw broken('"method" must be "key", "browser" or "device"');
  if (s.refresh_token !== undefined && s.client_id === undefined)
    throw broken('"refresh_token" needs "client_id"');
  return s as unknown as StoredSession;
}

export async function writeSession(ctx: Pick<ClientContext, "paths">, session: StoredSession): Promise<void> {
  const dir = ctx.paths.configDir;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // mkdir's mode only applies to new directories: tighten an existing one we own.
  await chmod(dir, 0o700).catch(() => undefined);
  const file = authFile(ctx);
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await writeFile(tmp, `${JSON.stringify(session, null, 2)}\n`, { mode: 0o600, flag: "wx" });
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw new ClientError("session_write_failed", `cannot write ${file}: ${(e as Error).message}`, {
      file,
      dir,
    });
  }
}

export async function removeSession(ctx: Pick<ClientContext, "paths">): Promise<boolean> {
  try {
    await unlink(authFile(ctx));
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw e;
  }
}

/** A lock file without a pid this old is abandoned. */
export const LOCK_STALE_MS = 30_000;
/** A live holder this old is hung (a login takes at most a few request timeouts). */
export const LOCK_HUNG_MS = 120_000;
/** How long a caller waits for the lock before giving up (lock_busy). */
export const LOCK_WAIT_MS = 60_000;

/**
 * Runs `fn` holding `auth.json.lock` (O_EXCL create, holder pid inside). A lock whose process is
 * gone is taken over at once; one without a pid after LOCK_STALE_MS; a live holder after LOCK_HUNG_MS.
 */
export async function withSessionLock<T>(
  ctx: StoreContext,
  fn: () => Promise<T>,
  /** Checked while waiting: a value ends the wait without taking the lock (someone else did the work). */
  shortcut?: () => Promise<T | undefined>,
): Promise<T> {
  const dir = ctx.paths.configDir;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const lock = `${authFile(ctx)}.lock`;
  const deadline = Date.now() + LOCK_WAIT_MS;
  let delay = 10;
  for (;;) {
    try {
      const fh = await open(lock, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
      try {
        await fh.writeFile(`${process.pid}\n`);
      } finally {
        await fh.close();
      }
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new ClientError("lock_create_failed", `cannot create ${lock}: ${(e as Error).message}`, {
          lock,
          dir,
        });
      }
    }
    if (await isStaleLock(lock)) {
      ctx.debug(`session: removing stale lock ${lock}`);
      await unlink(lock).catch(() => undefined);
      continue;
    }
    if (Date.now() > deadline) {
      throw new ClientError("lock_busy", `another apes process holds ${lock}`, { lock });
    }
    await sleep(delay + Math.floor(Math.random() * delay));
    delay = Math.min(delay * 2, 100);
    if (shortcut) {
      const done = await shortcut().catch(() => undefined);
      if (done !== undefined) return done;
    }
  }
  try {
    return await fn();
  } finally {
    await unlink(lock).catch(() => undefined);
  }
}

async function isStaleLock(lock: string): Promise<boolean> {
  try {
    const [text, st] = await Promise.all([readFile(lock, "utf8"), stat(lock)]);
    const age = Date.now() - st.mtimeMs;
    const pid = Number(text.trim());
    // No pid yet: a holder between create and write, or one that crashed right there.
    if (!Number.isInteger(pid) || pid <= 0) return age > LOCK_STALE_MS;
    if (pid === process.pid) return age > LOCK_HUNG_MS;
    try {
      process.kill(pid, 0);
    } catch (e) {
      // ESRCH: the holder is gone. EPERM: alive but another user's; treat as alive.
      if ((e as NodeJS.ErrnoException).code === "ESRCH") return true;
    }
    // Alive (or a pid from another namespace): only a holder hung far beyond a login's timeouts.
    return age > LOCK_HUNG_MS;
  } catch {
    // Vanished between the failed create and now: retry right away.
    return false;
  }
}
