import { join } from "node:path";
import { Option } from "commander";
import type { Store } from "../../../idp/store/types.ts";
import type { Context } from "../../context.ts";
import { CliError, usageError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";

/** `--data DIR`, shared by serve and the offline admin commands (default $XDG_DATA_HOME/apes/idp). */
export const dataOption = () =>
  new Option("--data <dir>", "IdP data directory (default: $XDG_DATA_HOME/apes/idp)");

export function dataDirOf(ctx: Context, data: string | undefined): string {
  return data ?? join(ctx.paths.dataDir, "idp");
}

/** Opens the store lazily (node:sqlite is loaded only by idp commands); every call commits at once. */
export async function openStore(ctx: Context, data: string | undefined): Promise<Store> {
  const dir = dataDirOf(ctx, data);
  const { openSqliteStore } = await import("../../../idp/store/sqlite/store.ts");
  try {
    return openSqliteStore(dir);
  } catch (e) {
    throw new CliError(`cannot open the IdP database in ${dir}: ${(e as Error).message}`, {
      exitCode: ExitCode.CONFIG,
      hint: "check --data and the directory's permissions",
      cause: e,
    });
  }
}

/** `--ttl` and `--issuer` of the commands that make invite links. */
export const inviteTtlOption = () =>
  new Option("--ttl <duration>", "how long the invite link works (default 24h; e.g. 30m, 7d; at most 30d)");
export const inviteIssuerOption = () =>
  new Option("--issuer <url>", "the IdP's issuer URL for the link (default: the one the server last ran as)");

export interface InviteSettings {
  ttl: number;
  issuer: string;
}

/** The checked `--ttl` (seconds) and issuer (`--issuer`, else the one the server last ran as). */
export async function inviteSettings(
  ctx: Context,
  data: string | undefined,
  opts: { ttl?: string; issuer?: string },
): Promise<InviteSettings> {
  const [{ parseDurationMs }, { MAX_INVITE_TTL, recordedIssuer }] = await Promise.all([
    import("../../../protocol/duration.ts"),
    import("../../../idp/web/invites.ts"),
  ]);
  const ttl = opts.ttl ?? "24h";
  const ms = parseDurationMs(ttl);
  if (ms === undefined || ms < 60_000 || ms > MAX_INVITE_TTL * 1000) {
    throw usageError(`invalid --ttl "${ttl}"`, "give a duration from 1m to 30d, e.g. 24h");
  }
  const issuer = opts.issuer ?? recordedIssuer(dataDirOf(ctx, data));
  if (issuer === undefined) {
    throw usageError(
      "no issuer known for the invite link",
      "start `apes idp serve` once, or give --issuer URL",
    );
  }
  let u: URL;
  try {
    u = new URL(issuer);
  } catch {
    throw usageError(`invalid --issuer "${issuer}"`, "give an absolute URL like https://id.example.com");
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") throw usageError("--issuer must be http(s)");
  return { ttl: Math.floor(ms / 1000), issuer: u.origin + u.pathname.replace(/\/+$/, "") };
}

/**
 * Makes a one-time invite link for `email` (a human of the store) and returns it with its expiry.
 * The secret is in the link's fragment only (idp/web/invites.ts); the store keeps its hash.
 */
export async function makeInvite(
  ctx: Context,
  store: Store,
  email: string,
  settings: InviteSettings,
): Promise<{ url: string; expiresAt: number }> {
  const { newInvite, inviteUrl } = await import("../../../idp/web/invites.ts");
  const { secret, record } = newInvite(email, Math.floor(ctx.clock.now() / 1000), settings.ttl);
  await store.addInvite(record);
  return { url: inviteUrl(settings.issuer, secret), expiresAt: record.expiresAt };
}

/** How an invite is shown to the admin who hands it over. */
export const inviteText = (i: { url: string; expiresAt: number }) =>
  `invite link (works once, until ${new Date(i.expiresAt * 1000).toISOString()}):\n${i.url}`;
