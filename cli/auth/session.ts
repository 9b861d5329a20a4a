import type { Context } from "../context.ts";
import { CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { keyLogin } from "./key-login.ts";
import { defaultKeyCandidates, type LoadedKey, loadPrivateKey } from "./keys.ts";
import { readSession, type StoredSession, withSessionLock, writeSession } from "./store.ts";

/**
 * A usable session: any command that needs a token calls freshSession(ctx). When less than
 * REFRESH_MARGIN_S remain it re-authenticates with the recorded key, or renews a browser or device
 * session with its refresh token (under the auth.json lock, so ten concurrent commands log in once
 * and a rotated refresh token is never spent twice). Failure is an explicit CliError with the next step:
 *   not logged in -> 77, IdP unreachable -> 69, broken auth.json or a moved/replaced key -> 78.
 */

export interface Session {
  idp: string;
  email: string;
  act: "human" | "agent";
  token: string;
  /** Unix seconds. */
  expiresAt: number;
  keyPath?: string;
  keyFingerprint?: string;
}

export const REFRESH_MARGIN_S = 60;

export function toSession(s: StoredSession): Session {
  return {
    idp: s.idp,
    email: s.email,
    act: s.act,
    token: s.token,
    expiresAt: s.expires_at,
    keyPath: s.key_path,
    keyFingerprint: s.key_fingerprint,
  };
}

export function notLoggedIn(): CliError {
  return new CliError("not logged in", {
    exitCode: ExitCode.NOPERM,
    hint: "run `apes login <email>` (with `--key PATH` for a key outside the default locations)",
  });
}

/**
 * Pure: does this session need a new token at `nowS`? Less than 60 s left; for tokens that live
 * less than two minutes (test IdPs with `--token-ttl 10s`) half their lifetime, so a token that was
 * just issued is used rather than renewed again at once.
 */
export function needsRefresh(s: { expires_at: number; issued_at?: number }, nowS: number): boolean {
  const lifetime = s.issued_at !== undefined ? s.expires_at - s.issued_at : Number.POSITIVE_INFINITY;
  const margin = Math.min(REFRESH_MARGIN_S, Math.max(1, Math.floor(lifetime / 2)));
  return s.expires_at - nowS < margin;
}

export async function freshSession(ctx: Context, options: { force?: boolean } = {}): Promise<Session> {
  const nowS = () => Math.floor(ctx.clock.now() / 1000);
  const first = await readSession(ctx);
  if (!first) throw notLoggedIn();
  if (!options.force && !needsRefresh(first, nowS())) return toSession(first);
  const renewedBySomeoneElse = (s: StoredSession) =>
    !needsRefresh(s, nowS()) && (!options.force || s.token !== first.token);
  return withSessionLock(
    ctx,
    async () => {
      // Someone else may have renewed while we waited for the lock.
      const current = await readSession(ctx);
      if (!current) throw notLoggedIn();
      if (renewedBySomeoneElse(current)) return toSession(current);
      return toSession(await reauthenticate(ctx, current));
    },
    async () => {
      const current = await readSession(ctx);
      return current && renewedBySomeoneElse(current) ? toSession(current) : undefined;
    },
  );
}

async function reauthenticate(ctx: Context, s: StoredSession): Promise<StoredSession> {
  if (s.refresh_token !== undefined) {
    // A browser or device session: its refresh token (rotated, so written back before anyone else
    // reads it: we hold the lock).
    const { refreshSession } = await import("./oauth.ts");
    const next = await refreshSession(ctx, s);
    await writeSession(ctx, next);
    return next;
  }
  const fix = `apes login ${s.email} --key <path>`;
  if (!s.key_path) {
    throw new CliError(`the session of ${s.email} has expired and has no key to renew it with`, {
      exitCode: ExitCode.NOPERM,
      hint: `log in again: \`apes login ${s.email}\``,
    });
  }
  const fixWithPath = `apes login ${s.email} --key ${s.key_path}`;
  let loaded: LoadedKey;
  try {
    loaded = await loadPrivateKey(ctx, s.key_path, { fixCommand: fix });
  } catch (e) {
    // A moved HOME or migrated service user: point at the same key if it sits in a default place.
    const found = await findKeyByFingerprint(ctx, s.key_fingerprint, s.key_path);
    if (found && e instanceof CliError) {
      throw new CliError(`${e.message}; the same key (${s.key_fingerprint}) is at ${found}`, {
        exitCode: ExitCode.CONFIG,
        hint: `log in with it to record the new path: \`apes login ${s.email} --key ${found}\``,
      });
    }
    throw e;
  }
  if (s.key_fingerprint && loaded.fingerprint !== s.key_fingerprint) {
    throw new CliError(
      `the key at ${s.key_path} is not the one this session was created with (${loaded.fingerprint}, expected ${s.key_fingerprint})`,
      {
        exitCode: ExitCode.CONFIG,
        hint: `if the new key is registered for ${s.email}, log in with it: \`${fixWithPath}\``,
      },
    );
  }
  ctx.debug(`session: renewing the token of ${s.email} with ${s.key_path}`);
  let result: Awaited<ReturnType<typeof keyLogin>>;
  try {
    result = await keyLogin(ctx, s.idp, s.email, loaded.key);
  } catch (e) {
    if (e instanceof CliError && e.exitCode === ExitCode.NOPERM) {
      throw new CliError(`the session of ${s.email} could not be renewed: ${e.message}`, {
        exitCode: ExitCode.NOPERM,
        hint: e.hint ?? `log in again: \`${fixWithPath}\``,
      });
    }
    throw e;
  }
  const next: StoredSession = {
    ...s,
    token: result.token,
    expires_at: result.expiresAt,
    issued_at: result.issuedAt,
    act: result.act,
    key_fingerprint: loaded.fingerprint,
    authenticated_at: Math.floor(ctx.clock.now() / 1000),
  };
  await writeSession(ctx, next);
  return next;
}

async function findKeyByFingerprint(
  ctx: Context,
  fp: string | undefined,
  except: string,
): Promise<string | undefined> {
  if (!fp) return undefined;
  const { readFile } = await import("node:fs/promises");
  const { fingerprint, parsePrivateKey } = await import("../../protocol/keys.ts");
  for (const candidate of defaultKeyCandidates(ctx)) {
    if (candidate === except) continue;
    try {
      if (fingerprint(parsePrivateKey(await readFile(candidate, "utf8"))) === fp) return candidate;
    } catch {
      // not there or not a usable key: keep looking
    }
  }
  return undefined;
}
