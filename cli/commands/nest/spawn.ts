import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";
import { type NestCommandOptions, troopOptions } from "./common.ts";

interface SpawnOptions extends NestCommandOptions {
  env?: string[];
  secret?: string[];
  approve?: boolean;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function register(parent: Command, getContext: GetContext): void {
  troopOptions(
    parent
      .command("spawn")
      .description("ask a nest to create and start an agent you own (its own user, HOME, key and identity)")
      .argument("<nest>", "the nest's identity")
      .argument("<agent>", "the new agent's name (its Unix user)")
      .argument("<argv...>", "after --: the agent's program (absolute path) and arguments"),
  )
    .option("--env <name>", "an environment variable name to pass (repeatable)", collect)
    .option(
      "--secret <name>",
      "a secret name the nest resolves from its root-owned store (repeatable)",
      collect,
    )
    .option(
      "--approve",
      "approve the nest's two grants for this agent as they come in (provision: this exact command; start: always)",
    )
    .addHelpText(
      "after",
      `
You become the agent's owner. The nest provisions it through the elevation path, so two grants
reach you: the exact \`apes agents provision ...\` command (with the argv) and an \`always\` grant
for \`apes agents run <agent>\` (used again for its restarts). --approve approves exactly those two,
for this agent, and nothing else; without it, approve them with \`apes grants approve\`.

Examples:
  $ apes nest spawn nest-web1+agent@example.com bot1 --troop https://troop.example.com --approve -- /usr/bin/bot --serve
  $ apes nest spawn nest-web1+agent@example.com bot1 --secret openai --no-wait -- /usr/bin/bot`,
    )
    .action(async (nest: string, agent: string, argv: string[], o: SpawnOptions) => {
      await nestSpawn(getContext(), nest, agent, argv, o);
    });
}

export async function nestSpawn(
  ctx: Context,
  nest: string,
  agent: string,
  argv: string[],
  o: SpawnOptions,
): Promise<void> {
  const [
    { troopClient, waitForIntent },
    { printData, notice },
    { CliError },
    { visible, visibleArgv },
    { freshSession },
    { grantsClient },
    { approveSigned },
  ] = await Promise.all([
    import("../../troop/client.ts"),
    import("../../output.ts"),
    import("../../errors.ts"),
    import("../../../protocol/display.ts"),
    import("../../../client/session.ts"),
    import("../../../client/grants.ts"),
    import("../../grants/approval-proof.ts"),
  ]);
  const me = (await freshSession(ctx)).email;
  const client = troopClient(ctx, o);
  let intent = await client.submit(
    nest,
    "spawn",
    agent,
    { owner: me, argv, env: o.env ?? [], secrets: o.secret ?? [] },
    o.id,
  );
  notice(ctx, `intent ${intent.id}: spawn ${agent} on ${nest} (${intent.state})`);
  const approved = new Set<string>();
  const approveOurs = async () => {
    if (!o.approve) return;
    const grants = await grantsClient(ctx);
    const pending = (await grants.list({ status: "pending", requester: nest, limit: 100 })).data;
    for (const g of pending) {
      const c = g.request.command ?? [];
      const i = c.indexOf("agents");
      // Only what this spawn asked for: provision of this agent for me with exactly this argv, and
      // `agents run <agent>` with nothing after it.
      const tail = JSON.stringify(c.slice(-argv.length - 1)) === JSON.stringify(["--", ...argv]);
      const forMe = c[c.indexOf("--owner") + 1] === me;
      const ours =
        g.request.requester === nest &&
        i > 0 &&
        ((c[i + 1] === "provision" && c[i + 2] === agent && tail && forMe) ||
          (c[i + 1] === "run" && c[i + 2] === agent && c.length === i + 3));
      if (!ours || approved.has(g.id)) continue;
      // Signed, as `apes grants approve` does: the proof covers exactly this grant.
      await approveSigned(ctx, grants, g.id);
      approved.add(g.id);
      notice(ctx, `approved ${g.id} (${g.request.grant_type}): ${visibleArgv(c)}`);
    }
  };
  if (o.wait) intent = await waitForIntent(ctx, client, intent.id, Number(o.timeout) * 1000, approveOurs);
  printData(
    ctx,
    { ...intent, approved: [...approved] },
    () =>
      `spawn ${agent} on ${nest}: ${intent.state}${intent.detail ? ` (${visible(intent.detail, { max: 300 })})` : ""}`,
  );
  if (intent.state === "failed") throw new CliError(`the nest could not spawn ${agent}`, { exitCode: 1 });
  if (o.wait && intent.state !== "done")
    throw new CliError(
      `no result from the nest within ${o.timeout} s (intent ${intent.id} is ${intent.state})`,
      { exitCode: 75 },
    );
}
