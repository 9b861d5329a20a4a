import { join } from "node:path";
import { Option } from "commander";
import type { StoreLocation } from "../../../idp/store/open.ts";
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

/** Where the data is: `--data DIR` (SQLite) or `--database URL` (PostgreSQL), and the latter's files. */
export interface StoreOpts {
  data?: string;
  database?: string;
  databasePasswordFile?: string;
  databaseKeyFile?: string;
}

/** The PostgreSQL options, next to --data on serve and every offline admin command. */
export const databaseOption = () =>
  new Option(
    "--database <url>",
    "PostgreSQL instead of --data: postgres://USER@HOST:PORT/DB (no password in it; env APES_DATABASE_URL)",
  );
export const databasePasswordFileOption = () =>
  new Option(
    "--database-password-file <file>",
    "file (mode 0600) with the database password (else PGPASSWORD or PGPASSFILE)",
  );
export const databaseKeyFileOption = () =>
  new Option(
    "--database-key-file <file>",
    "32-byte key file (mode 0600) sealing the signing keys in the database (env APES_DATABASE_KEY_FILE)",
  );

/** The store's location from the options and the environment (APES_DATABASE_URL, APES_DATABASE_KEY_FILE). */
export function storeLocation(ctx: Context, opts: StoreOpts): StoreLocation {
  const url = opts.database ?? (opts.data === undefined ? ctx.env.APES_DATABASE_URL : undefined);
  if (url === undefined || url === "") {
    if (opts.databasePasswordFile || opts.databaseKeyFile) {
      throw usageError("--database-password-file and --database-key-file go with --database");
    }
    return { kind: "sqlite", dataDir: dataDirOf(ctx, opts.data) };
  }
  if (opts.data !== undefined) throw usageError("--data and --database exclude each other");
  const keyFile = opts.databaseKeyFile ?? (ctx.env.APES_DATABASE_KEY_FILE || undefined);
  return {
    kind: "postgres",
    url,
    ...(opts.databasePasswordFile ? { passwordFile: opts.databasePasswordFile } : {}),
    ...(keyFile ? { keyFile } : {}),
  };
}

/** The URL and password file checked before anything starts: a password on argv is refused. */
export async function checkStoreLocation(location: StoreLocation): Promise<void> {
  const { checkLocation } = await import("../../../idp/store/open.ts");
  try {
    checkLocation(location);
  } catch (e) {
    throw new CliError((e as Error).message, { exitCode: ExitCode.CONFIG, cause: e });
  }
}

/** Opens the store lazily (node:sqlite / pg are loaded only by idp commands); every call commits at once. */
export async function openStore(ctx: Context, opts: StoreOpts): Promise<Store> {
  const location = storeLocation(ctx, opts);
  await checkStoreLocation(location);
  const { openStore: open } = await import("../../../idp/store/open.ts");
  try {
    return (await open(location)).store;
  } catch (e) {
    const where = location.kind === "sqlite" ? `in ${location.dataDir}` : "at --database";
    throw new CliError(`cannot open the IdP database ${where}: ${(e as Error).message}`, {
      exitCode: ExitCode.CONFIG,
      hint:
        location.kind === "sqlite"
          ? "check --data and the directory's permissions"
          : "check --database, the password (file), --database-key-file and that the server is up",
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

/** The checked `--ttl` in seconds (before anything is opened). */
export async function inviteTtl(opts: { ttl?: string }): Promise<number> {
  const [{ parseDurationMs }, { MAX_INVITE_TTL }] = await Promise.all([
    import("../../../protocol/duration.ts"),
    import("../../../idp/web/invites.ts"),
  ]);
  const ttl = opts.ttl ?? "24h";
  const ms = parseDurationMs(ttl);
  if (ms === undefined || ms < 60_000 || ms > MAX_INVITE_TTL * 1000) {
    throw usageError(`invalid --ttl "${ttl}"`, "give a duration from 1m to 30d, e.g. 24h");
  }
  return Math.floor(ms / 1000);
}

/**
 * The checked issuer of the link: `--issuer`, else the one the server last ran as (recorded in the
 * database when it is PostgreSQL, else in the data dir).
 */
export async function inviteSettings(
  ctx: Context,
  opts: StoreOpts & { issuer?: string },
  store: Store,
  ttl: number,
): Promise<InviteSettings> {
  const { recordedIssuer } = await import("../../../idp/web/invites.ts");
  const issuer =
    opts.issuer ??
    (store.recordedIssuer ? await store.recordedIssuer() : recordedIssuer(dataDirOf(ctx, opts.data)));
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
  return { ttl, issuer: u.origin + u.pathname.replace(/\/+$/, "") };
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
