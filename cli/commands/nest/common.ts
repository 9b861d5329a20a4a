import { type Command, Option } from "commander";
import type { Context } from "../../context.ts";

/** Options every `apes nest` command takes: which troop. */
export function troopOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--troop <url>", "the troop (default: $APES_TROOP)"))
    .addOption(new Option("--troop-audience <aud>", "the troop's client id (default: its host)"))
    .addOption(
      new Option(
        "--id <id>",
        "the intent id (default: a fresh one; the same id again is a replay, not a second intent)",
      ),
    )
    .addOption(new Option("--no-wait", "return once the troop stored the intent"))
    .addOption(new Option("--timeout <seconds>", "how long to wait for the nest's result").default("120"));
}

export interface NestCommandOptions {
  troop?: string;
  troopAudience?: string;
  id?: string;
  wait: boolean;
  timeout: string;
}

/** Submits a stop/restart/pause/resume/remove intent and (unless --no-wait) waits for its result. */
export async function simpleIntent(
  ctx: Context,
  kind: "stop" | "restart" | "remove" | "pause" | "resume",
  nest: string,
  agent: string,
  o: NestCommandOptions,
): Promise<void> {
  const [{ troopClient, waitForIntent }, { printData }, { CliError }, { visible }] = await Promise.all([
    import("../../troop/client.ts"),
    import("../../output.ts"),
    import("../../errors.ts"),
    import("../../../protocol/display.ts"),
  ]);
  const client = troopClient(ctx, o);
  let intent = await client.submit(nest, kind, agent, undefined, o.id);
  if (o.wait) intent = await waitForIntent(ctx, client, intent.id, Number(o.timeout) * 1000);
  printData(
    ctx,
    intent,
    () =>
      `${kind} ${agent} on ${nest}: ${intent.state}${intent.detail ? ` (${visible(intent.detail, { max: 300 })})` : ""}`,
  );
  if (intent.state === "failed") throw new CliError(`the nest could not ${kind} ${agent}`, { exitCode: 1 });
  if (o.wait && intent.state !== "done")
    throw new CliError(
      `no result from the nest within ${o.timeout} s (intent ${intent.id} is ${intent.state})`,
      { exitCode: 75 },
    );
}
