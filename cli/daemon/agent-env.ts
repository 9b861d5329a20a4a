import { visible } from "../../protocol/display.ts";
import { ENV_NAME } from "../../protocol/troop.ts";

/**
 * How the values of a spawn's env allow-list reach the agent. The shim hands its target a fixed,
 * minimal environment (its own allow-list), so a name recorded with `--env` would arrive empty.
 * Instead the Nest writes one line on the stdin of `apes agents run NAME` (the pipe it controls the
 * agent with) before anything else: `env {"NAME":"value",...}`, the values taken from the Nest's own
 * environment (what the operator gave the unit), only for the names the owner's approved spec
 * lists. No value on argv, in a file, or in the troop; no new privileged code (the line is read by
 * the agent's own user). Names the runner sets itself are never taken from the line.
 */

export const ENV_LINE_PREFIX = "env ";
/** Well under a pipe's 64 KiB buffer, so the Nest's write never blocks before the runner reads. */
export const MAX_ENV_LINE_BYTES = 32 * 1024;
const RESERVED = new Set(["PATH", "HOME", "USER", "LOGNAME"]);

/**
 * Whether a name may be passed to an agent: not the runner's own names, nor APES_* (the agent's
 * APES_AGENT, APES_SECRETS_DIR, and the Nest's own apes settings stay the Nest's).
 */
export function passableEnvName(name: string): boolean {
  return ENV_NAME.test(name) && !RESERVED.has(name) && !name.startsWith("APES_");
}

/** The Nest's side: the line for an agent whose spec allows `names`, from the Nest's environment. */
export function encodeEnvLine(
  names: readonly string[],
  from: Readonly<Record<string, string | undefined>>,
): string {
  const values: Record<string, string> = {};
  for (const n of names) {
    const v = from[n];
    if (passableEnvName(n) && typeof v === "string" && !v.includes("\0")) values[n] = v;
  }
  const line = `${ENV_LINE_PREFIX}${JSON.stringify(values)}\n`;
  if (Buffer.byteLength(line) > MAX_ENV_LINE_BYTES)
    throw new Error(`the environment for the agent is over ${MAX_ENV_LINE_BYTES} bytes`);
  return line;
}

/** The runner's side: only names the spec allows, string values, bounded; anything else refused. */
export function parseEnvLine(
  line: string,
  allowed: readonly string[],
): { ok: true; env: Record<string, string> } | { ok: false; reason: string } {
  if (Buffer.byteLength(line) > MAX_ENV_LINE_BYTES) return { ok: false, reason: "env line too long" };
  if (!line.startsWith(ENV_LINE_PREFIX)) return { ok: false, reason: "the first line must be the env line" };
  let v: unknown;
  try {
    v = JSON.parse(line.slice(ENV_LINE_PREFIX.length));
  } catch {
    return { ok: false, reason: "env line is not JSON" };
  }
  if (typeof v !== "object" || v === null || Array.isArray(v))
    return { ok: false, reason: "env line is not an object" };
  const allow = new Set(allowed);
  const env: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (!allow.has(k) || !passableEnvName(k))
      return { ok: false, reason: `env name not allowed for this agent: ${visible(k, { max: 64 })}` };
    if (typeof val !== "string" || val.includes("\0"))
      return { ok: false, reason: `env value of ${visible(k, { max: 64 })} is not a string` };
    env[k] = val;
  }
  return { ok: true, env };
}
