import type { Context } from "../context.ts";

/**
 * A key login that records the session as `apes login --key` does (auth.json under the lock), for
 * identities that log themselves in unattended: the Nest, and each agent in `apes agents run`.
 * The key path recorded is the one given, so it is the key's real place (never a stale one).
 */
export async function keySessionLogin(
  ctx: Context,
  idp: string,
  email: string,
  keyPath: string,
): Promise<void> {
  const [store, { keyLogin }, { loadPrivateKey }, { normalizeIdpUrl }] = await Promise.all([
    import("../auth/store.ts"),
    import("../auth/key-login.ts"),
    import("../auth/keys.ts"),
    import("../idp-client.ts"),
  ]);
  const base = normalizeIdpUrl(idp);
  const key = await loadPrivateKey(ctx, keyPath);
  const r = await keyLogin(ctx, base, email, key.key);
  const session = {
    version: 1 as const,
    idp: base,
    email: r.email,
    act: r.act,
    token: r.token,
    expires_at: r.expiresAt,
    issued_at: r.issuedAt,
    key_path: key.path,
    key_fingerprint: key.fingerprint,
    authenticated_at: Math.floor(ctx.clock.now() / 1000),
  };
  await store.withSessionLock(ctx, () => store.writeSession(ctx, session));
}

/** Logs in unless auth.json already holds a session of this identity with this key. */
export async function loginIfNeeded(
  ctx: Context,
  idp: string,
  email: string,
  keyPath: string,
): Promise<void> {
  const { readSession } = await import("../auth/store.ts");
  const current = await readSession(ctx);
  if (current && current.email === email && current.key_path === keyPath) return;
  await keySessionLogin(ctx, idp, email, keyPath);
}
