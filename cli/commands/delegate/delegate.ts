import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export interface DelegateOptions {
  to: string;
  audience: string;
  scopes?: string;
  approval?: string;
  duration?: string;
}

export function register(program: Command, getContext: GetContext): void {
  program
    .command("delegate")
    .description("let someone (an agent, a daemon) act for you at one service: a delegation, approved by you")
    .requiredOption("--to <email>", "who may act for you")
    .requiredOption("--audience <sp>", "the service (SP client_id) where it applies; * for any")
    .option("--scopes <a,b>", "comma-separated actions allowed there")
    .option("--approval <type>", "once | timed | always", "always")
    .option("--duration <d>", "for timed: how long, e.g. 8h (implies --approval timed)")
    .addHelpText(
      "after",
      `
Only humans delegate (agent and delegated tokens are refused by the IdP). The delegate
then gets short tokens with \`apes token exchange --delegation <id> --audience <sp>\`,
whose \`sub\` is you and \`act.sub\` is the delegate, so every action is auditable as
"delegate acting for delegator".

Examples:
  $ apes delegate --to nest+agent@example.com --audience mail.example.com --scopes read,send
  $ apes delegate --to bot+agent@example.com --audience "*" --duration 8h
  $ apes --json delegate --to bot+agent@example.com --audience sp.example | jq -r .id`,
    )
    .action(async (options: DelegateOptions) => {
      await delegate(getContext(), options);
    });
}

export async function delegate(ctx: Context, options: DelegateOptions): Promise<void> {
  const [{ delegationsApi }, fmt, { usageError }, { printData }, { identityArg }] = await Promise.all([
    import("../../../client/delegations.ts"),
    import("../../grants/format.ts"),
    import("../../errors.ts"),
    import("../../output.ts"),
    import("../../identity.ts"),
  ]);
  const to = identityArg("--to", options.to);
  if (!options.audience.trim()) throw usageError("--audience is empty");
  const scopes = options.scopes
    ?.split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (options.scopes !== undefined && (!scopes || scopes.length === 0)) throw usageError("--scopes is empty");
  const { grant_type, duration } = fmt.approvalAndDuration(options.approval, options.duration);
  const api = await delegationsApi(ctx);
  const d = await api.create({
    delegate: to,
    audience: options.audience,
    grant_type: grant_type ?? "always",
    ...(scopes ? { scopes } : {}),
    ...(duration !== undefined ? { duration } : {}),
  });
  printData(ctx, d, () =>
    [
      `delegation ${fmt.shown(d.id)}: ${fmt.shown(d.request.delegate)} may act for ${fmt.shown(d.request.delegator ?? api.auth.session().email)} at ${fmt.shown(d.request.audience)} (${fmt.shown(d.status)})`,
      `the delegate gets a token with: apes token exchange --delegation ${fmt.shown(d.id)} --audience ${d.request.audience === "*" ? "<sp>" : fmt.shown(d.request.audience)}`,
    ].join("\n"),
  );
}
