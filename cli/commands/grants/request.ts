import type { Command } from "commander";
import { ELEVATION_AUDIENCE } from "../../../protocol/types.ts";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export interface GrantsRequestOptions {
  audience?: string;
  host?: string;
  target?: string;
  permission?: string[];
  approval: string;
  duration?: string;
  reason?: string;
  runAs?: string;
  wait?: boolean;
  timeout?: string;
}

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("request")
    .description("ask for a grant to run a command, or for permissions at a target (a human approves it)")
    .argument("[cmd...]", "the command and its arguments, after --")
    .option(
      "--audience <aud>",
      'who will verify the grant (default: "escapes" for a command, the target for permissions)',
    )
    .option("--host <host>", "target host of a command (default: this host's name)")
    .option("--target <system>", "the target system a permission grant is for (e.g. prod-server)")
    .option("--permission <name>", "a permission to ask for at the target (repeatable)", collect, [])
    .option("--approval <type>", "once | timed | always (the approver may change it)", "once")
    .option("--duration <d>", "for timed grants: how long, e.g. 30m, 8h")
    .option("--reason <text>", "why, shown to the approver")
    .option("--run-as <user>", "run the command as this user (default: root)")
    .option(
      "--wait",
      "wait for the decision (exit 0 approved, 77 denied, 75 timed out; Ctrl-C cancels the grant)",
    )
    .option("--timeout <d>", "with --wait: give up after this long, e.g. 10m")
    .addHelpText(
      "after",
      `
The grant carries the command as argv and its cmd_hash ("SHA-256:" + hex of the JSON
array), so the approver sees exactly what runs and the verifier checks it element by
element. A permission grant (--target and --permission, no command) is verified by the
target system itself (\`apes grants verify\` there). The grant id is printed on stdout. An
IdP may answer with an existing approved timed/always grant that matches exactly (shown
as "reused").

Examples:
  $ apes grants request --target prod-server --permission deploy --reason "Deploy hotfix #123"
  $ apes grants request --reason "rotate logs" -- logrotate -f /etc/logrotate.conf
  $ apes grants request --approval timed --duration 30m -- systemctl restart nginx
  $ id=$(apes grants request -- apt-get upgrade -y) && apes grants wait "$id"
  $ apes --json grants request --wait --timeout 5m -- ls /root`,
    )
    .action(async (cmd: string[], options: GrantsRequestOptions) => {
      await grantsRequest(getContext(), cmd, options);
    });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export async function grantsRequest(
  ctx: Context,
  cmd: string[],
  options: GrantsRequestOptions,
): Promise<void> {
  const [{ cmdHash, isWellFormedArgv }, { hostname }, fmt, { grantsClient }, { usageError }, { printData }] =
    await Promise.all([
      import("../../../protocol/cmd-hash.ts"),
      import("node:os"),
      import("../../grants/format.ts"),
      import("../../../client/grants.ts"),
      import("../../errors.ts"),
      import("../../output.ts"),
    ]);
  const permissions = options.permission ?? [];
  if (cmd.length === 0 && permissions.length === 0)
    throw usageError(
      "no command or permission given",
      "put a command after --: `apes grants request -- systemctl restart nginx`, or ask for permissions: `apes grants request --target prod-server --permission deploy`",
    );
  if (!isWellFormedArgv(cmd)) throw usageError("the command contains invalid Unicode");
  if (permissions.some((p) => p === "")) throw usageError("--permission is empty");
  if (options.target !== undefined && options.host !== undefined && options.target !== options.host)
    throw usageError("--target and --host name different systems; give one");
  const { grant_type, duration } = fmt.approvalAndDuration(options.approval, options.duration);
  // A command runs on a host (this one by default); permissions are for a named target system.
  const host = options.target ?? options.host ?? (cmd.length > 0 ? hostname() : undefined);
  if (host === undefined)
    throw usageError("a permission grant needs --target", "e.g. `--target prod-server --permission deploy`");
  if (!host) throw usageError("--host is empty");
  // Elevation grants name "escapes"; without --audience a permission grant is for its target (the IdP's rule).
  const audience = options.audience ?? (cmd.length > 0 ? ELEVATION_AUDIENCE : undefined);
  if (audience === "") throw usageError("--audience is empty");
  const timeoutS = fmt.parseDurationSeconds(options.timeout, "--timeout");
  if (timeoutS !== undefined && !options.wait) throw usageError("--timeout needs --wait");

  const client = await grantsClient(ctx);
  const { grant, reused } = await client.create({
    target_host: host,
    ...(audience !== undefined ? { audience } : {}),
    grant_type: grant_type ?? "once",
    ...(cmd.length > 0 ? { command: cmd, cmd_hash: cmdHash(cmd) } : {}),
    ...(permissions.length > 0 ? { permissions } : {}),
    ...(duration !== undefined ? { duration } : {}),
    ...(options.reason ? { reason: options.reason } : {}),
    ...(options.runAs ? { run_as: options.runAs } : {}),
  });
  if (!options.wait || grant.status !== "pending") {
    if (!ctx.globals.json) {
      ctx.io.stderr.write(
        reused
          ? `reused approved grant ${fmt.shown(grant.id)} (${fmt.shown(grant.request.grant_type)})\n`
          : `requested grant ${fmt.shown(grant.id)}: ${fmt.shown(grant.status)}; an approver sees it in \`apes grants list --inbox\`\n`,
      );
    }
    printData(ctx, { ...grant, reused }, () => fmt.shown(grant.id));
    if (options.wait) (await import("../../grants/await-decision.ts")).decisionExit(grant);
    return;
  }
  const { waitAndReport } = await import("../../grants/await-decision.ts");
  await waitAndReport(
    ctx,
    client,
    grant.id,
    timeoutS !== undefined ? timeoutS * 1000 : undefined,
    grant,
    true,
  );
}
