import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

export function register(program: Command, getContext: GetContext): void {
  program
    .command("logout")
    .description("forget the session (deletes auth.json; the key stays where it is)")
    .addHelpText(
      "after",
      `
The token itself stays valid at the IdP until it expires (at most its lifetime, 1 h by
default); it is only removed from this machine.

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
  const { session, removed } = await store.withSessionLock(ctx, async () => {
    const s = await store.readSession(ctx).catch(() => undefined);
    return { session: s, removed: await store.removeSession(ctx) };
  });
  printData(ctx, { logged_out: removed, email: session?.email ?? null, idp: session?.idp ?? null }, () =>
    removed
      ? `logged out${session ? ` ${session.email} from ${session.idp}` : ""}`
      : "not logged in (nothing to do)",
  );
}
