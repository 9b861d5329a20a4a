import { lstatSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { isUnixUser } from "../../protocol/names.ts";
import { AGENT_NAME, parseSpawnSpec, type SpawnSpec } from "../../protocol/troop.ts";
import { CliError, usageError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import type { NestLayout } from "./host.ts";

/**
 * The root-owned record of a provisioned agent ($(SYSCONFDIR)/apes/agents/<name>.json): what
 * `apes agents run <name>` starts. It is written only by `apes agents provision` (as root, through an
 * owner-approved grant whose command holds the exact argv), so the `always` grant for
 * `apes agents run <name>` can start nothing but what the owner approved.
 */
export interface AgentSpecFile extends SpawnSpec {
  name: string;
  /** The agent's DDISA identity: <name>+agent@<owner's domain>. */
  email: string;
  idp?: string;
  public_key: string;
  fingerprint: string;
}

export function checkAgentName(name: string): string {
  if (!AGENT_NAME.test(name) || !isUnixUser(name))
    throw usageError(`agent name "${name}" must be a lower-case Unix user name ([a-z_][a-z0-9_-]{0,30})`);
  return name;
}

export function agentEmail(name: string, owner: string): string {
  return `${name}+agent@${owner.slice(owner.lastIndexOf("@") + 1)}`;
}

export function agentHome(layout: NestLayout, name: string): string {
  return join(layout.agentsHome, name);
}

export function specPath(layout: NestLayout, name: string): string {
  return join(layout.agentSpecs, `${name}.json`);
}

/** Reads the spec, refusing one root did not write (owner, mode) or that does not parse. */
export function readAgentSpec(layout: NestLayout, name: string): AgentSpecFile | undefined {
  const file = specPath(layout, name);
  let text: string;
  try {
    const st = lstatSync(file);
    if (!st.isFile() || st.uid !== 0 || (st.mode & 0o022) !== 0)
      throw new CliError(`${file} is not a root-owned file others cannot write; refusing it`, {
        exitCode: ExitCode.CONFIG,
      });
    text = readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new CliError(`${file} is not JSON`, { exitCode: ExitCode.CONFIG });
  }
  const spec = parseSpawnSpec({ owner: v.owner, argv: v.argv, env: v.env, secrets: v.secrets });
  if (!spec.ok || v.name !== name || typeof v.email !== "string" || typeof v.public_key !== "string")
    throw new CliError(`${file} is not an agent spec${spec.ok ? "" : `: ${spec.reason}`}`, {
      exitCode: ExitCode.CONFIG,
    });
  return v as unknown as AgentSpecFile;
}

export function sameSpec(a: SpawnSpec, b: SpawnSpec): boolean {
  const k = (s: SpawnSpec) => JSON.stringify([s.owner, s.argv, s.env, s.secrets]);
  return k(a) === k(b);
}
