import { join } from "node:path";
import { Option } from "commander";
import type { Store } from "../../../idp/store/types.ts";
import type { Context } from "../../context.ts";
import { CliError } from "../../errors.ts";
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
