import { type ChildProcess, spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import type { Intent } from "../protocol/troop.ts";
import type { SavedAgent } from "./agent-state.ts";
import type { NestLog } from "./log.ts";
import {
  type AgentRecord,
  DEFAULT_SUPERVISOR_POLICY,
  decideExit,
  type ExitFacts,
  paused,
  planIntent,
  type Step,
  type SupervisorPolicy,
  started,
} from "./supervisor.ts";

/**
 * The supervisor's effects: it carries out the plans of nest/supervisor.ts with a Launcher (how an
 * agent is provisioned, started and signalled) and reports every transition. Pause is SIGSTOP to the
 * agent's process group, and counts only once the kernel shows the process stopped (state T in
 * /proc/<pid>/stat); stop and remove end the whole group (SIGTERM, then SIGKILL after a grace).
 */

export interface AgentProcess {
  pid: number;
  exited: Promise<ExitFacts>;
}

export type GroupSignal = "SIGTERM" | "SIGKILL" | "SIGSTOP" | "SIGCONT";

export interface Launcher {
  provision(agent: AgentRecord, intent: Intent): Promise<void>;
  start(agent: AgentRecord): Promise<AgentProcess>;
  signal(agent: AgentRecord, proc: AgentProcess, sig: GroupSignal): Promise<void>;
  /** Whether the kernel shows the process stopped (SIGSTOP took effect). */
  isStopped(pid: number): Promise<boolean>;
  deprovision(agent: AgentRecord): Promise<void>;
}

export interface SupervisorOptions {
  launcher: Launcher;
  log: NestLog;
  policy?: SupervisorPolicy;
  /** Called after every transition of an agent. */
  onTransition(agent: AgentRecord): void;
  now?: () => number;
  random?: () => number;
  /** How long a stopped agent gets between SIGTERM and SIGKILL (ms). */
  graceMs?: number;
}

export class Supervisor {
  readonly agents = new Map<string, AgentRecord>();
  private readonly procs = new Map<string, AgentProcess>();
  private readonly restartTimers = new Map<string, NodeJS.Timeout>();
  policy: SupervisorPolicy;
  private readonly o: SupervisorOptions;

  constructor(o: SupervisorOptions) {
    this.o = o;
    this.policy = o.policy ?? DEFAULT_SUPERVISOR_POLICY;
  }

  private nowMs(): number {
    return (this.o.now ?? Date.now)();
  }

  private set(agent: AgentRecord | undefined, name: string): void {
    if (agent && agent.desired !== "removed") this.agents.set(name, agent);
    else this.agents.delete(name);
    if (agent) this.o.onTransition(agent);
  }

  /** Carries out one intent; resolves with a detail line, rejects with the reason it failed. */
  async apply(intent: Intent): Promise<string> {
    const nowS = Math.floor(this.nowMs() / 1000);
    const plan = planIntent(this.agents.get(intent.agent), intent, nowS);
    if (!plan.ok) throw new Error(plan.reason);
    if (plan.steps.length === 0) {
      if (plan.agent) this.agents.set(intent.agent, plan.agent);
      return `${intent.agent}: nothing to do`;
    }
    const agent = plan.agent!;
    for (const step of plan.steps) await this.step(step, agent, intent);
    return `${intent.agent}: ${plan.steps.join(", ")}`;
  }

  private async step(step: Step, planned: AgentRecord, intent: Intent): Promise<void> {
    const name = planned.name;
    switch (step) {
      case "provision":
        await this.o.launcher.provision(planned, intent);
        return;
      case "start": {
        this.cancelRestart(name);
        this.set({ ...planned, state: "starting" }, name);
        await this.launch(name, false);
        return;
      }
      case "stop": {
        this.cancelRestart(name);
        const current = this.agents.get(name) ?? planned;
        this.agents.set(name, { ...current, desired: planned.desired });
        await this.end(name);
        return;
      }
      case "pause":
      case "resume": {
        const agent = this.agents.get(name)!;
        const proc = this.procs.get(name);
        if (!proc) throw new Error(`agent ${name} has no process`);
        const stop = step === "pause";
        await this.o.launcher.signal(agent, proc, stop ? "SIGSTOP" : "SIGCONT");
        if (!(await this.waitStopped(proc.pid, stop)))
          throw new Error(`agent ${name} did not ${stop ? "stop" : "continue"} (pid ${proc.pid})`);
        this.set({ ...paused(agent, stop, Math.floor(this.nowMs() / 1000)), desired: planned.desired }, name);
        return;
      }
      case "deprovision": {
        this.cancelRestart(name);
        const agent = this.agents.get(name) ?? planned;
        await this.o.launcher.deprovision(agent);
        this.set({ ...agent, desired: "removed", state: "stopped" }, name);
        return;
      }
    }
  }

  /**
   * After a restart of the Nest: the agents its previous run had running or paused are started
   * again (as a restart: with the launcher's start, the same `always` grant), a paused one paused
   * again once it runs; a stopped one is known again, not started. Their records are set at once, so intents and status see them while they start.
   */
  restore(saved: SavedAgent[]): Promise<void> {
    const nowS = Math.floor(this.nowMs() / 1000);
    for (const s of saved) {
      if (this.agents.has(s.name)) continue;
      const state = s.desired === "stopped" ? "stopped" : "starting";
      this.set({ ...s, state, since: nowS, failures: [] }, s.name);
    }
    return Promise.all(
      saved
        .filter((s) => s.desired !== "stopped")
        .map(async (s) => {
          this.o.log.log("info", "restoring an agent of the previous run", {
            agent: s.name,
            desired: s.desired,
          });
          await this.launch(s.name, true);
          const agent = this.agents.get(s.name);
          const proc = this.procs.get(s.name);
          if (s.desired !== "paused" || !agent || !proc || agent.state !== "running") return;
          await this.o.launcher.signal(agent, proc, "SIGSTOP");
          if (await this.waitStopped(proc.pid, true))
            this.set(paused(agent, true, Math.floor(this.nowMs() / 1000)), s.name);
          else this.o.log.log("warn", "restored agent did not pause", { agent: s.name, pid: proc.pid });
        }),
    ).then(() => undefined);
  }

  private async waitStopped(pid: number, wanted: boolean): Promise<boolean> {
    for (let i = 0; i < 100; i++) {
      if ((await this.o.launcher.isStopped(pid)) === wanted) return true;
      await new Promise((r) => setTimeout(r, 20));
    }
    return false;
  }

  private async launch(name: string, restart: boolean): Promise<void> {
    const agent = this.agents.get(name);
    if (!agent || agent.desired === "removed" || agent.desired === "stopped") return;
    let proc: AgentProcess;
    try {
      proc = await this.o.launcher.start(agent);
    } catch (e) {
      this.o.log.log("warn", "agent start failed", { agent: name, error: (e as Error).message });
      this.onExit(name, { code: 127, signal: null });
      if (!restart) throw e;
      return;
    }
    this.procs.set(name, proc);
    this.set(started(agent, proc.pid, Math.floor(this.nowMs() / 1000), restart), name);
    void proc.exited.then((exit) => {
      if (this.procs.get(name) === proc) this.procs.delete(name);
      this.onExit(name, exit);
    });
  }

  private onExit(name: string, exit: ExitFacts): void {
    const agent = this.agents.get(name);
    if (!agent) return;
    const d = decideExit(agent, exit, this.nowMs(), this.policy, this.o.random);
    this.o.log.log(d.agent.state === "failed" ? "warn" : "info", "agent exited", {
      agent: name,
      code: exit.code,
      signal: exit.signal,
      state: d.agent.state,
      ...(d.restartInMs !== undefined ? { restart_in_ms: d.restartInMs } : {}),
    });
    this.set(d.agent, name);
    if (d.restartInMs !== undefined) {
      const t = setTimeout(() => {
        this.restartTimers.delete(name);
        void this.launch(name, true);
      }, d.restartInMs);
      this.restartTimers.set(name, t);
    }
  }

  private cancelRestart(name: string): void {
    const t = this.restartTimers.get(name);
    if (t) clearTimeout(t);
    this.restartTimers.delete(name);
  }

  /** Ends the agent's process group: SIGTERM (and SIGCONT, a paused group cannot act on it), then SIGKILL. */
  private async end(name: string): Promise<void> {
    const proc = this.procs.get(name);
    const agent = this.agents.get(name);
    if (!proc || !agent) return;
    await this.o.launcher.signal(agent, proc, "SIGTERM");
    await this.o.launcher.signal(agent, proc, "SIGCONT").catch(() => undefined);
    const grace = this.o.graceMs ?? 5000;
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<"timeout">((r) => {
      timer = setTimeout(() => r("timeout"), grace);
    });
    const outcome = await Promise.race([proc.exited, killed]);
    clearTimeout(timer);
    if (outcome === "timeout") {
      await this.o.launcher.signal(agent, proc, "SIGKILL");
      await proc.exited;
    }
  }

  /** SIGTERM of the nest: no more restarts, every agent's group ended. */
  async drain(): Promise<void> {
    for (const name of [...this.restartTimers.keys()]) this.cancelRestart(name);
    await Promise.all(
      [...this.agents.values()].map(async (a) => {
        this.agents.set(a.name, { ...a, desired: "stopped" });
        await this.end(a.name).catch(() => undefined);
      }),
    );
  }
}

/**
 * A launcher for agents the nest may signal itself (its own uid: tests, and a nest run by root for
 * development): each agent in a new process group. The production launcher goes through the
 * elevation path instead (cli/daemon/launcher.ts).
 */
export function localLauncher(opts: { env?: Record<string, string> } = {}): Launcher {
  return {
    async provision() {},
    async deprovision() {},
    async start(agent) {
      const [file, ...args] = agent.spec.argv;
      const child: ChildProcess = spawn(file!, args, {
        detached: true,
        stdio: "ignore",
        env: { PATH: "/usr/bin:/bin", ...opts.env },
      });
      const exited = new Promise<ExitFacts>((resolve) => {
        child.once("exit", (code, signal) => resolve({ code, signal }));
        child.once("error", () => resolve({ code: 127, signal: null }));
      });
      await new Promise<void>((resolve, reject) => {
        child.once("spawn", () => resolve());
        child.once("error", reject);
      });
      return { pid: child.pid!, exited };
    },
    async signal(_agent, proc, sig) {
      try {
        process.kill(-proc.pid, sig);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
      }
    },
    isStopped: processStopped,
  };
}

/** The state letter in /proc/<pid>/stat is T (stopped by a signal) or t (traced). */
export async function processStopped(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state === "T" || state === "t";
  } catch {
    return false;
  }
}
