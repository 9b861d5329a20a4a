import type { AgentState, AgentStatus, Intent, SpawnSpec } from "../protocol/troop.ts";
import { type BackoffPolicy, backoffCeiling, fullJitter } from "./backoff.ts";

/**
 * The supervisor's decisions, pure (no processes, no clock, no randomness of their own): what an
 * intent asks the nest to do with an agent, and what an agent's exit means (restart after a backoff,
 * or give up after too many failures within a window). nest/agents.ts carries them out.
 */

/** What the owner asked for the agent; `state` is what the nest last saw. */
export type Desired = "running" | "paused" | "stopped" | "removed";

export interface AgentRecord {
  name: string;
  owner: string;
  spec: SpawnSpec;
  desired: Desired;
  state: AgentState;
  pid?: number;
  restarts: number;
  /** Unix seconds of the last transition. */
  since: number;
  /** Unix milliseconds of the failures still inside the window. */
  failures: number[];
}

export interface SupervisorPolicy {
  restartBackoff: BackoffPolicy;
  /** Give up (state failed) at this many failures within `windowMs`. */
  maxFailures: number;
  windowMs: number;
}

export const DEFAULT_SUPERVISOR_POLICY: SupervisorPolicy = {
  restartBackoff: { baseMs: 500, maxMs: 60_000 },
  maxFailures: 5,
  windowMs: 5 * 60_000,
};

/** The effects an intent needs, in order. */
export type Step = "provision" | "start" | "stop" | "pause" | "resume" | "deprovision";

export type Plan =
  | { ok: true; steps: Step[]; agent: AgentRecord | undefined }
  | { ok: false; reason: string };

const refuse = (reason: string): Plan => ({ ok: false, reason });
const live = (s: AgentState) => s === "starting" || s === "running" || s === "paused" || s === "backoff";
const sameSpec = (a: SpawnSpec, b: SpawnSpec) => JSON.stringify(a) === JSON.stringify(b);

/**
 * The plan for an intent. The agent belongs to the human who asked: a spawn's owner must be its
 * submitter, and every later intent for the agent must come from that owner (the troop checks who may
 * command the nest; the nest checks who may command the agent). Everything is idempotent: asking for
 * the state the agent is already in plans no step.
 */
export function planIntent(current: AgentRecord | undefined, intent: Intent, nowS: number): Plan {
  const agent = current?.desired === "removed" ? undefined : current;
  if (intent.kind === "spawn") {
    const spec = intent.spec;
    if (!spec) return refuse("a spawn intent needs a spec");
    if (spec.owner !== intent.submitted_by)
      return refuse("an agent belongs to the human who asks for it: spec.owner must be the submitter");
    if (!agent) {
      return {
        ok: true,
        steps: ["provision", "start"],
        agent: {
          name: intent.agent,
          owner: spec.owner,
          spec,
          desired: "running",
          state: "starting",
          restarts: 0,
          since: nowS,
          failures: [],
        },
      };
    }
    if (agent.owner !== spec.owner) return refuse(`agent ${intent.agent} belongs to someone else`);
    if (!sameSpec(agent.spec, spec))
      return refuse(`agent ${intent.agent} exists with another spec: remove it first`);
    if (live(agent.state)) return { ok: true, steps: [], agent: { ...agent, desired: "running" } };
    return { ok: true, steps: ["start"], agent: restarted(agent, nowS) };
  }
  if (!agent) {
    if (intent.kind === "remove" || intent.kind === "stop") return { ok: true, steps: [], agent: undefined };
    return refuse(`no agent ${intent.agent} on this nest`);
  }
  if (intent.submitted_by !== agent.owner) return refuse(`agent ${intent.agent} belongs to someone else`);
  switch (intent.kind) {
    case "stop":
      return {
        ok: true,
        steps: live(agent.state) ? ["stop"] : [],
        agent: { ...agent, desired: "stopped" },
      };
    case "restart":
      return {
        ok: true,
        steps: live(agent.state) ? ["stop", "start"] : ["start"],
        agent: restarted(agent, nowS),
      };
    case "pause":
      if (agent.state === "paused") return { ok: true, steps: [], agent: { ...agent, desired: "paused" } };
      if (agent.state !== "running") return refuse(`agent ${intent.agent} is ${agent.state}, not running`);
      return { ok: true, steps: ["pause"], agent: { ...agent, desired: "paused" } };
    case "resume":
      if (agent.state === "running") return { ok: true, steps: [], agent: { ...agent, desired: "running" } };
      if (agent.state !== "paused") return refuse(`agent ${intent.agent} is ${agent.state}, not paused`);
      return { ok: true, steps: ["resume"], agent: { ...agent, desired: "running" } };
    case "remove":
      return {
        ok: true,
        steps: live(agent.state) ? ["stop", "deprovision"] : ["deprovision"],
        agent: { ...agent, desired: "removed" },
      };
  }
}

/** A start the owner asked for: the failure window starts afresh. */
function restarted(agent: AgentRecord, nowS: number): AgentRecord {
  return { ...agent, desired: "running", state: "starting", since: nowS, failures: [] };
}

export interface ExitFacts {
  code: number | null;
  signal: string | null;
}

export type ExitDecision =
  | { agent: AgentRecord; restartInMs: number }
  | { agent: AgentRecord; restartInMs?: undefined };

/**
 * What an agent's exit means. Wanted (stop, remove): stopped. A clean exit (0) of a running agent:
 * it finished, stopped, no restart (as systemd's Restart=on-failure). Any other exit is a failure:
 * restarted after a growing delay (half the backoff window plus jitter over the other half, so a
 * crash loop always slows down), until `maxFailures` fall within `windowMs`: then failed, for good,
 * until the owner restarts it.
 */
export function decideExit(
  agent: AgentRecord,
  exit: ExitFacts,
  nowMs: number,
  policy: SupervisorPolicy,
  random: () => number = Math.random,
): ExitDecision {
  const nowS = Math.floor(nowMs / 1000);
  const base = { ...agent, pid: undefined, since: nowS };
  delete base.pid;
  if (agent.desired !== "running" && agent.desired !== "paused")
    return { agent: { ...base, state: "stopped" } };
  if (exit.code === 0 && exit.signal === null)
    return { agent: { ...base, state: "stopped", desired: "stopped" } };
  const failures = [...agent.failures.filter((t) => nowMs - t < policy.windowMs), nowMs];
  if (failures.length >= policy.maxFailures) return { agent: { ...base, state: "failed", failures } };
  const attempt = failures.length - 1;
  const half = Math.floor(backoffCeiling(attempt, policy.restartBackoff) / 2);
  const jitter = Math.floor(fullJitter(attempt, policy.restartBackoff, random) / 2);
  return { agent: { ...base, state: "backoff", failures }, restartInMs: half + jitter };
}

/** The agent after its process started. */
export function started(agent: AgentRecord, pid: number, nowS: number, restart: boolean): AgentRecord {
  return {
    ...agent,
    state: "running",
    pid,
    since: nowS,
    restarts: agent.restarts + (restart ? 1 : 0),
  };
}

/** The agent after a pause or resume was acknowledged. */
export function paused(agent: AgentRecord, isPaused: boolean, nowS: number): AgentRecord {
  return { ...agent, state: isPaused ? "paused" : "running", since: nowS };
}

/** What a status frame says about the agent. */
export function statusOf(agent: AgentRecord): AgentStatus {
  const s: AgentStatus = {
    name: agent.name,
    state: agent.state,
    restarts: agent.restarts,
    since: agent.since,
  };
  if (agent.pid !== undefined) s.pid = agent.pid;
  return s;
}
