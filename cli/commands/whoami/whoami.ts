import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

export function register(program: Command, getContext: GetContext): void {
  program
    .command("whoami")
    .description("show the logged-in identity: email, human or agent, IdP, token expiry, key fingerprint")
    .addHelpText(
      "after",
      `
Renews the token with the recorded key first when less than 60 s remain, so a
working \`apes whoami\` means the next command will authenticate. Exit 77 when not
logged in, 78 when the recorded key is missing or replaced, 69 when the IdP is down
during a renewal.

Examples:
  $ apes whoami
  $ apes whoami --json | jq -r .email`,
    )
    .action(async () => {
      await whoami(getContext());
    });
}

export async function whoami(ctx: Context): Promise<void> {
  const { freshSession } = await import("../../../client/session.ts");
  const { formatTime } = await import("../../output.ts");
  const s = await freshSession(ctx);
  const nowS = Math.floor(ctx.clock.now() / 1000);
  const left = s.expiresAt - nowS;
  printData(
    ctx,
    {
      email: s.email,
      act: s.act,
      idp: s.idp,
      expires_at: s.expiresAt,
      expires_in: left,
      key_path: s.keyPath ?? null,
      key_fingerprint: s.keyFingerprint ?? null,
    },
    () =>
      [
        `${s.email} (${s.act})`,
        `idp:     ${s.idp}`,
        `expires: ${formatTime(s.expiresAt)} (in ${Math.max(0, Math.round(left / 60))} min; renewed automatically)`,
        `key:     ${s.keyPath ?? "-"}${s.keyFingerprint ? ` (${s.keyFingerprint})` : ""}`,
      ].join("\n"),
  );
}
