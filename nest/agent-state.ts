import {
  closeSync,
  constants,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeSync,
} from "node:fs";
import { dirname } from "node:path";
import { AGENT_NAME, parseSpawnSpec, type SpawnSpec } from "../protocol/troop.ts";
import type { AgentRecord, Desired } from "./supervisor.ts";

/**
 * What the Nest last wanted of each agent (name, owner, spec, running or paused), kept in one file
 * (and the stopped ones, still known) of its own state dir (0600, written whole, fsync and rename), so that after a kill -9 or a restart
 * of the Nest its agents are brought back: `apes agents run` ends its agent when the Nest's pipe
 * closes, and the next run starts it again through the same `always` grant for its start command.
 * SIGTERM's drain is not recorded as the owner's wish (the Nest stops writing once it drains).
 */

export interface SavedAgent {
  name: string;
  owner: string;
  spec: SpawnSpec;
  desired: Exclude<Desired, "removed">;
  restarts: number;
}

const MAX_FILE_BYTES = 1024 * 1024;
const MAX_AGENTS = 1024;

/** Every agent the Nest knows (a stopped one stays known, so a later restart intent finds it). */
export function agentsToSave(agents: Iterable<AgentRecord>): SavedAgent[] {
  const out: SavedAgent[] = [];
  for (const a of agents)
    if (a.desired !== "removed")
      out.push({ name: a.name, owner: a.owner, spec: a.spec, desired: a.desired, restarts: a.restarts });
  return out.sort((x, y) => (x.name < y.name ? -1 : 1));
}

/** Parses the file: every record checked as an intent's spec is; a bad record is dropped, not trusted. */
export function parseSavedAgents(text: string): SavedAgent[] {
  if (text.length > MAX_FILE_BYTES) return [];
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return [];
  }
  const list = (v as { agents?: unknown } | null)?.agents;
  if (!Array.isArray(list)) return [];
  const out: SavedAgent[] = [];
  const seen = new Set<string>();
  for (const r of list.slice(0, MAX_AGENTS)) {
    if (typeof r !== "object" || r === null) continue;
    const o = r as Record<string, unknown>;
    if (typeof o.name !== "string" || !AGENT_NAME.test(o.name) || seen.has(o.name)) continue;
    if (o.desired !== "running" && o.desired !== "paused" && o.desired !== "stopped") continue;
    const spec = parseSpawnSpec(o.spec);
    if (!spec.ok || typeof o.owner !== "string" || spec.value.owner !== o.owner) continue;
    const restarts =
      Number.isSafeInteger(o.restarts) && (o.restarts as number) >= 0 ? (o.restarts as number) : 0;
    seen.add(o.name);
    out.push({ name: o.name, owner: o.owner, spec: spec.value, desired: o.desired, restarts });
  }
  return out;
}

export class AgentStateFile {
  readonly path: string;
  private last = "";
  constructor(path: string) {
    this.path = path;
  }

  load(): SavedAgent[] {
    try {
      const text = readFileSync(this.path, "utf8");
      const agents = parseSavedAgents(text);
      this.last = JSON.stringify({ agents });
      return agents;
    } catch {
      return [];
    }
  }

  /** Writes the agents' wished states if they changed (synchronously: transitions stay in order). */
  save(agents: SavedAgent[]): void {
    const text = JSON.stringify({ agents });
    if (text === this.last) return;
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.${process.pid}.tmp`;
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o600);
    try {
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    const d = openSync(dirname(this.path), constants.O_RDONLY);
    try {
      fsyncSync(d);
    } finally {
      closeSync(d);
    }
    this.last = text;
  }
}
