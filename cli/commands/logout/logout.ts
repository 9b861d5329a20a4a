import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

export function register(program: Command, getContext: GetContext): void {
  program
    .command("logout")
    .description(
      "end the session: revokes a browser/device session's refresh token at the IdP, deletes auth.json",
    )
    .addHelpText(
      "after",
      `
A browser or device session's refresh token is revoked at the IdP (RFC 7009), so no copy of it
can renew the session. An access token already issued stays valid until it expires (at most its
lifetime, 1 h by default). If the IdP cannot be reached, the session is still removed here and
apes exits 69 saying the refresh token was not revoked.

Examples:
  $ apes logout
  $ apes --json logout`,
    )
    .action(async () => {
      await logout(getContext());
    });
}

export async function logout(ctx: Context): Promise<void> {
  const store = await import("../../../client/session-store.ts");
  const { session, removed, revokeError } = await store.withSessionLock(ctx, async () => {
    const s = await store.readSession(ctx).catch(() => undefined);
    let failure: unknown;
    if (s?.refresh_token !== undefined) {
      const { revokeSession } = await import("../../../client/oauth.ts");
      await revokeSession(ctx, s).catch((e: unknown) => {
        failure = e;
      });
    }
    return { session: s, removed: await store.removeSession(ctx), revokeError: failure };
  });
  const revoked = session?.refresh_token !== undefined && revokeError === undefined;
  printData(
    ctx,
    { logged_out: removed, email: session?.email ?? null, idp: session?.idp ?? null, revoked },
    () =>
      removed
        ? `logged out${session ? ` ${session.email} from ${session.idp}` : ""}${revoked ? " (refresh token revoked)" : ""}`
        : "not logged in (nothing to do)",
  );
  if (revokeError !== undefined) {
    const { CliError } = await import("../../errors.ts");
    const { ExitCode } = await import("../../exit-codes.ts");
    throw new CliError(
      `the session was removed here, but its refresh token was not revoked at the IdP: ${(revokeError as Error).message}`,
      {
        exitCode: ExitCode.UNAVAILABLE,
        hint: "it expires on its own; an admin can disable the account at once",
      },
    );
  }
}
