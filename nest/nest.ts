import { visible } from "../protocol/display.ts";
import type { Intent, NestFrame } from "../protocol/troop.ts";
import { type AgentStateFile, agentsToSave } from "./agent-state.ts";
import { type Launcher, Supervisor } from "./agents.ts";
import type { IntentJournal } from "./journal.ts";
import { type LinkOptions, NestLink } from "./link.ts";
import type { NestLog } from "./log.ts";
import { type SupervisorPolicy, statusOf } from "./supervisor.ts";

/**
 * The nest's core: every intent is persisted in the journal before it is acked, executed by the
 * supervisor once, and answered with a result frame; every agent transition is reported with a
 * status frame. A duplicate delivery (same id) is re-acked and its result re-sent, never executed
 * again; intents a previous run accepted but did not finish are executed on start (the supervisor's
 * steps are idempotent per agent, so a half-done spawn is completed, not repeated).
 */

export interface NestOptions {
  journal: IntentJournal;
  launcher: Launcher;
  log: NestLog;
  version: string;
  policy?: SupervisorPolicy;
  /** Where the agents' wished states are kept, so a restart of the Nest brings them back. */
  agentState?: AgentStateFile;
  link: Omit<LinkOptions, "onIntent" | "log" | "onConnected">;
  random?: () => number;
  /** Called with every status frame (the daemon keeps the last one for `apes daemon status`). */
  onStatus?(frame: NestFrame): void;
}

export class Nest {
  readonly supervisor: Supervisor;
  readonly link: NestLink;
  private draining = false;
  private inFlight = 0;

  private readonly o: NestOptions;

  constructor(o: NestOptions) {
    this.o = o;
    this.supervisor = new Supervisor({
      launcher: o.launcher,
      log: o.log,
      ...(o.policy ? { policy: o.policy } : {}),
      ...(o.random ? { random: o.random } : {}),
      onTransition: () => {
        this.saveAgents();
        this.sendStatus();
      },
    });
    this.link = new NestLink({
      ...o.link,
      log: o.log,
      onIntent: (intent) => this.handleIntent(intent),
      onConnected: () => this.sendStatus(),
    });
  }

  /** Resolves once the intents a previous run left unfinished are done; new ones wait behind them. */
  private resumed: Promise<void> = Promise.resolve();

  /**
   * Connects at once (so the troop sees the nest and its status while an old intent waits for an
   * approval), then finishes what the previous run left, in order, before any new intent.
   */
  async start(): Promise<void> {
    const unfinished = this.o.journal.unfinished();
    const restoring = this.supervisor.restore(this.o.agentState?.load() ?? []);
    this.link.start();
    this.resumed = (async () => {
      // Intents wait for the restored agents' starts, so no intent starts an agent a second time.
      await restoring.catch((e) =>
        this.o.log.log("error", "restoring the agents failed", { error: (e as Error).message }),
      );
      for (const r of unfinished) {
        this.o.log.log("info", "finishing an intent of the previous run", {
          intent: r.intent.id,
          state: r.state,
        });
        await this.execute(r.intent);
      }
    })();
    await this.resumed;
  }

  statusFrame(): NestFrame {
    return {
      type: "status",
      version: this.o.version,
      agents: [...this.supervisor.agents.values()].map(statusOf),
    };
  }

  /** Not while draining: SIGTERM stops the agents, but the owner still wants them after the restart. */
  private saveAgents(): void {
    if (this.draining || !this.o.agentState) return;
    try {
      this.o.agentState.save(agentsToSave(this.supervisor.agents.values()));
    } catch (e) {
      this.o.log.log("error", "saving the agents' states failed", { error: (e as Error).message });
    }
  }

  private sendStatus(): void {
    const frame = this.statusFrame();
    this.o.onStatus?.(frame);
    this.link.send(frame);
  }

  async handleIntent(intent: Intent): Promise<void> {
    await this.resumed;
    if (this.draining) {
      // Not acked: the troop delivers it again after the restart.
      this.o.log.log("info", "draining: intent left for the next run", { intent: intent.id });
      return;
    }
    const admission = await this.o.journal.admit(intent);
    this.link.send({ type: "ack", intent_id: intent.id });
    if (admission.kind === "duplicate") {
      const r = admission.record;
      this.o.log.log("info", "duplicate intent: acked again, not executed", {
        intent: intent.id,
        state: r.state,
      });
      if (r.state === "done" || r.state === "failed" || r.state === "running")
        this.link.send({
          type: "result",
          intent_id: intent.id,
          state: r.state,
          ...(r.detail ? { detail: r.detail } : {}),
        });
      return;
    }
    await this.execute(intent);
  }

  private async execute(intent: Intent): Promise<void> {
    this.inFlight++;
    try {
      await this.o.journal.update(intent.id, "executing");
      this.o.log.log("info", "executing intent", {
        intent: intent.id,
        kind: intent.kind,
        agent: intent.agent,
        by: intent.submitted_by,
      });
      let state: "done" | "failed";
      let detail: string;
      try {
        detail = await this.supervisor.apply(intent);
        state = "done";
        this.saveAgents(); // an intent with nothing to do still changes what the owner wants
      } catch (e) {
        detail = (e as Error).message;
        state = "failed";
        this.saveAgents();
      }
      // The detail may quote an error text from elsewhere: shown safely, bounded so that even escaped it fits the 1 KiB of a frame.
      detail = visible(detail, { max: 160 });
      await this.o.journal.update(intent.id, state, detail);
      this.o.log.log(state === "done" ? "info" : "warn", "intent finished", {
        intent: intent.id,
        state,
        detail,
      });
      this.link.send({ type: "result", intent_id: intent.id, state, detail });
    } finally {
      this.inFlight--;
    }
  }

  /** SIGTERM: accept nothing new, let the intent in flight finish, end the agents, close the link. */
  async drain(): Promise<void> {
    this.draining = true;
    while (this.inFlight > 0) await new Promise((r) => setTimeout(r, 20));
    await this.supervisor.drain();
    this.sendStatus();
    await this.link.stop();
  }
}
