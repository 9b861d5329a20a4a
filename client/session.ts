import type { ClientContext } from "./context.ts";
import { ClientError, isRefusal } from "./errors.ts";
import { type KeyLoginResult, keyLogin } from "./key-login.ts";
import { defaultKeyCandidates, type LoadedKey, loadPrivateKey } from "./keys.ts";
import { readSession, type StoredSession, withSessionLock, writeSession } from "./session-store.ts";

/**
 * A usable session: any call that needs a token calls freshSession(ctx). When less than
 * REFRESH_MARGIN_S remain it re-authenticates with the recorded key, or renews a browser or device
 * session with its refresh token (under the auth.json lock, so ten concurrent processes log in once
 * and a rotated refresh token is never spent twice). Failure is a ClientError: no_session, session_no_key,
 * renewal_failed (refused), session_ended (a refresh token the IdP no longer takes), key_moved,
 * key_mismatch, a key or session file error, or the HTTP failure that stopped the renewal
 * (idp_unreachable ...).
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

export function notLoggedIn(): ClientError<"no_session"> {
  return new ClientError("no_session", "not logged in", {});
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

export async function freshSession(ctx: ClientContext, options: { force?: boolean } = {}): Promise<Session> {
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

/**
 * Logs in with a loaded key and records the session (auth.json, under its lock): what `apes login`
 * does, and what the Nest does on its first start with its own key and HOME. Later calls renew it
 * through freshSession.
 */
export async function logInWithKey(
  ctx: ClientContext,
  idp: string,
  email: string,
  loaded: LoadedKey,
): Promise<{ session: StoredSession; login: KeyLoginResult }> {
  const login = await keyLogin(ctx, idp, email, loaded.key);
  const session: StoredSession = {
    version: 1,
    idp,
    email: login.email,
    act: login.act,
    token: login.token,
    expires_at: login.expiresAt,
    issued_at: login.issuedAt,
    key_path: loaded.path,
    key_fingerprint: loaded.fingerprint,
    authenticated_at: Math.floor(ctx.clock.now() / 1000),
  };
  await withSessionLock(ctx, () => writeSession(ctx, session));
  return { session, login };
}

async function reauthenticate(ctx: ClientContext, s: StoredSession): Promise<StoredSession> {
  if (s.refresh_token !== undefined) {
    // A browser or device session: its refresh token (rotated, so written back before anyone else
    // reads it: we hold the lock).
    const { refreshSession } = await import("./oauth.ts");
    const next = await refreshSession(ctx, s);
    await writeSession(ctx, next);
    return next;
  }
  if (!s.key_path) {
    throw new ClientError(
      "session_no_key",
      `the session of ${s.email} has expired and has no key to renew it with`,
      { email: s.email },
    );
  }
  let loaded: LoadedKey;
  try {
    loaded = await loadPrivateKey(ctx, s.key_path, { email: s.email });
  } catch (e) {
    // A moved HOME or migrated service user: point at the same key if it sits in a default place.
    const found = await findKeyByFingerprint(ctx, s.key_fingerprint, s.key_path);
    if (found && e instanceof ClientError) {
      throw new ClientError("key_moved", `${e.message}; the same key (${s.key_fingerprint}) is at ${found}`, {
        email: s.email,
        found,
      });
    }
    throw e;
  }
  if (s.key_fingerprint && loaded.fingerprint !== s.key_fingerprint) {
    throw new ClientError(
      "key_mismatch",
      `the key at ${s.key_path} is not the one this session was created with (${loaded.fingerprint}, expected ${s.key_fingerprint})`,
      { email: s.email, keyPath: s.key_path },
    );
  }
  ctx.debug(`session: renewing the token of ${s.email} with ${s.key_path}`);
  let result: Awaited<ReturnType<typeof keyLogin>>;
  try {
    result = await keyLogin(ctx, s.idp, s.email, loaded.key);
  } catch (e) {
    if (isRefusal(e)) {
      throw new ClientError(
        "renewal_failed",
        `the session of ${s.email} could not be renewed: ${(e as Error).message}`,
        { email: s.email, keyPath: s.key_path },
        { cause: e },
      );
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
  ctx: ClientContext,
  fp: string | undefined,
  except: string,
): Promise<string | undefined> {
  if (!fp) return undefined;
  const { readFile } = await import("node:fs/promises");
  const { fingerprint, parsePrivateKey } = await import("../protocol/keys.ts");
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
