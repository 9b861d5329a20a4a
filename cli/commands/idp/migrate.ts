import type { Command } from "commander";
import { CliError, usageError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";
import { checkStoreLocation, databaseKeyFileOption, databasePasswordFileOption } from "./common.ts";

interface MigrateOpts {
  from: string;
  to: string;
  databasePasswordFile?: string;
  databaseKeyFile?: string;
}

/** `apes idp migrate --from sqlite DIR --to postgres://...`: an embedded IdP into an empty PostgreSQL. */
export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("migrate")
    .description("copy an embedded (SQLite) IdP's data into an empty PostgreSQL database")
    .requiredOption("--from <kind-and-dir...>", "sqlite DIR: the data dir to copy (its server stopped)")
    .requiredOption("--to <url>", "postgres://USER@HOST:PORT/DB (empty; no password in the URL)")
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText(
      "after",
      `
Copies users, approvers, signing keys (sealed with --database-key-file), spent challenges, used
jtis and grants (keeping their order, so listing cursors stay valid) in one transaction. Refuses a
target that already holds IdP data, and a data dir whose server is running. Pending logins
(challenges issued by the old server) must be started again.

Examples:
  $ apes idp migrate --from sqlite /var/lib/apes-idp --to postgres://apes@db:5432/apes --database-key-file /etc/apes/idp-db.key
  $ PGPASSWORD=... apes --json idp migrate --from sqlite ./data --to postgres://apes@127.0.0.1/apes --database-key-file k`,
    )
    .action(async (opts: MigrateOpts) => {
      const ctx = getContext();
      const from = typeof opts.from === "string" ? [opts.from] : opts.from;
      if (from.length !== 2 || from[0] !== "sqlite") {
        throw usageError("--from takes `sqlite DIR`", "e.g. --from sqlite /var/lib/apes-idp");
      }
      const keyFile = opts.databaseKeyFile ?? (ctx.env.APES_DATABASE_KEY_FILE || undefined);
      if (keyFile === undefined) {
        throw usageError("--database-key-file is required: the signing keys are stored sealed with it");
      }
      const location = {
        kind: "postgres" as const,
        url: opts.to,
        keyFile,
        ...(opts.databasePasswordFile ? { passwordFile: opts.databasePasswordFile } : {}),
      };
      await checkStoreLocation(location);
      const [{ openStore }, { copySqliteToPostgres }] = await Promise.all([
        import("../../../idp/store/open.ts"),
        import("../../../idp/store/copy.ts"),
      ]);
      let opened: Awaited<ReturnType<typeof openStore>>;
      try {
        opened = await openStore(location);
      } catch (e) {
        throw new CliError(`cannot open the target database: ${(e as Error).message}`, {
          exitCode: ExitCode.CONFIG,
          hint: "check --to, the password (--database-password-file, PGPASSWORD) and --database-key-file",
          cause: e,
        });
      }
      try {
        const counts = await copySqliteToPostgres(from[1]!, opened.postgres!, opened.sealKey!);
        printData(
          ctx,
          { from: from[1], to: opened.where, ...counts },
          () =>
            `copied ${counts.users} users, ${counts.signing_keys} signing keys and ${counts.grants} grants to ${opened.where}`,
        );
      } catch (e) {
        const err = e as Error;
        const code =
          err.name === "TargetNotEmptyError" || err.name === "DataDirLockedError"
            ? ExitCode.CONFIG
            : ExitCode.ERROR;
        throw new CliError(`migration failed, nothing was copied: ${err.message}`, {
          exitCode: code,
          cause: e,
        });
      } finally {
        await opened.store.close();
      }
    });
}
