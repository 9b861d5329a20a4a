import { constants } from "node:fs";
import { chmod, mkdir, open, readFile, rename, stat, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Context } from "../context.ts";
import { CliError, configError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";

/**
 * The session file `$XDG_CONFIG_HOME/apes/auth.json` (0600 in a 0700 directory). Written atomically
 * (temp file + rename) under an O_EXCL lock file, so concurrent apes processes never see a torn file
 * and re-authenticate once: whoever takes the lock re-reads the file and only logs in if still needed.
 */

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
}

export function authFile(ctx: Context): string {
  return join(ctx.paths.configDir, "auth.json");
}

/** Reads auth.json: undefined when absent; a CliError (78) when unreadable or malformed. */
export async function readSession(ctx: Context): Promise<StoredSession | undefined> {
  const file = authFile(ctx);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    throw configError(
      `cannot read ${file}: ${(e as Error).message}`,
      "fix its permissions, or `apes logout` and log in again",
    );
  }
  return parseSession(text, file);
}

export function parseSession(text: string, file: string): StoredSession {
  const broken = (what: string) =>
    configError(
      `${file} is broken: ${what}`,
      "remove it with `apes logout`, then log in again with `apes login <email>`",
    );
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
  for (const k of ["key_path", "key_fingerprint"] as const) {
    if (s[k] !== undefined && typeof s[k] !== "string") throw broken(`"${k}" must be a string`);
  }
  return s as unknown as StoredSession;
}

export async function writeSession(ctx: Context, session: StoredSession): Promise<void> {
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
    throw new CliError(`cannot write ${file}: ${(e as Error).message}`, {
      exitCode: ExitCode.CONFIG,
      hint: `check that ${dir} is writable by you`,
    });
  }
}

export async function removeSession(ctx: Context): Promise<boolean> {
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
/** How long a command waits for the lock before giving up (75). */
export const LOCK_WAIT_MS = 60_000;

/**
 * Runs `fn` holding `auth.json.lock` (O_EXCL create, holder pid inside). A lock whose process is
 * gone is taken over at once; one without a pid after LOCK_STALE_MS; a live holder after LOCK_HUNG_MS.
 */
export async function withSessionLock<T>(
  ctx: Context,
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
        throw new CliError(`cannot create ${lock}: ${(e as Error).message}`, {
          exitCode: ExitCode.CONFIG,
          hint: `check that ${dir} is writable by you`,
        });
      }
    }
    if (await isStaleLock(lock)) {
      ctx.debug(`session: removing stale lock ${lock}`);
      await unlink(lock).catch(() => undefined);
      continue;
    }
    if (Date.now() > deadline) {
      throw new CliError(`another apes process holds ${lock}`, {
        exitCode: ExitCode.TEMPFAIL,
        hint: "try again; if no apes process is running, remove the lock file",
      });
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
