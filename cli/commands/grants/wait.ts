import type { Command } from "commander";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("wait")
    .description("wait until a grant is decided (exit 0 approved, 77 denied/revoked, 75 timed out)")
    .argument("<id>", "grant id")
    .option("--timeout <d>", "give up after this long, e.g. 90s, 10m (default: wait until decided)")
    .addHelpText(
      "after",
      `
Uses push (a long-poll with \`Prefer: wait\`) when the IdP offers it, otherwise polls every
3 s with If-None-Match (APES_NO_PUSH=1 forces polling). Progress goes to stderr (a
spinner on a terminal); the final grant is printed on stdout with --json.

Examples:
  $ apes grants wait 0b1c2d3e-... --timeout 10m && apes grants token 0b1c2d3e-...
  $ apes --json grants wait "$id" | jq -r .decided_by`,
    )
    .action(async (id: string, options: { timeout?: string }) => {
      const ctx = getContext();
      const [{ parseDurationSeconds }, { grantsClient, checkGrantId }, { waitAndReport }] = await Promise.all(
        [
          import("../../grants/format.ts"),
          import("../../../client/grants.ts"),
          import("../../grants/await-decision.ts"),
        ],
      );
      checkGrantId(id);
      const t = parseDurationSeconds(options.timeout, "--timeout");
      await waitAndReport(ctx, await grantsClient(ctx), id, t !== undefined ? t * 1000 : undefined);
    });
}
