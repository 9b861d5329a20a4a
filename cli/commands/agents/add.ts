import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

export interface AgentsAddOptions {
  name: string;
  key: string;
}

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("add")
    .description("enroll an agent you own: its name and its public key")
    .requiredOption("--name <name>", "agent name (lowercase letters, digits, dashes)")
    .requiredOption("--key <pubkey>", 'its public key: an "ssh-ed25519 AAAA..." line or a .pub file')
    .addHelpText(
      "after",
      `
The IdP answers the agent's identity (e.g. <name>+agent@<your domain>); you become its
owner and approve its grants. The agent then logs in with its private key:
  apes login <agent email> --key <its private key>

Examples:
  $ apes agents add --name deploy-bot --key ~/.config/apes/bot.pub
  $ apes agents add --name ci --key "ssh-ed25519 AAAAC3Nz... ci"
  $ apes --json agents add --name ci --key ./ci.pub | jq -r .email`,
    )
    .action(async (options: AgentsAddOptions) => {
      await agentsAdd(getContext(), options);
    });
}

export async function agentsAdd(ctx: Context, options: AgentsAddOptions): Promise<void> {
  const [{ readFile }, { parseSshPublicKey, fingerprint }, { usageError }, { agentsApi }] = await Promise.all(
    [
      import("node:fs/promises"),
      import("../../../protocol/keys.ts"),
      import("../../errors.ts"),
      import("../../../client/agents.ts"),
    ],
  );
  if (!/^[a-z0-9][a-z0-9-]{0,39}$/.test(options.name)) {
    throw usageError(`--name "${options.name}" must be 1-40 lowercase letters, digits or dashes`);
  }
  let line = options.key.trim();
  if (!line.startsWith("ssh-")) {
    const { expandPath } = await import("../../auth/keys.ts");
    const path = expandPath(ctx, line);
    try {
      line = (await readFile(path, "utf8")).trim();
    } catch (e) {
      throw usageError(
        `cannot read the public key ${path}: ${(e as Error).message}`,
        'give a .pub file or an "ssh-ed25519 AAAA..." line',
      );
    }
  }
  let fp: string;
  try {
    fp = fingerprint(parseSshPublicKey(line).key);
  } catch (e) {
    throw usageError(
      `--key: ${(e as Error).message}`,
      line.includes("PRIVATE KEY") ? "that is a PRIVATE key: give the .pub file" : undefined,
    );
  }
  const api = await agentsApi(ctx);
  const agent = await api.add(options.name, line);
  const { shown } = await import("../../grants/format.ts");
  printData(ctx, agent, () => {
    const email = shown(agent.email ?? options.name);
    return `enrolled ${email} (owner ${shown(agent.owner ?? api.auth.session().email)}, key ${fp})\nthe agent logs in with: apes login ${email} --key <its private key>`;
  });
}
