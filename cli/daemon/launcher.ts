import { type ChildProcess, spawn } from "node:child_process";
import { appendFileSync, mkdirSync, statSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { AgentProcess, GroupSignal, Launcher } from "../../nest/agents.ts";
import { processStopped } from "../../nest/agents.ts";
import type { NestConfig } from "../../nest/config.ts";
import type { NestLog } from "../../nest/log.ts";
import type { AgentRecord, ExitFacts } from "../../nest/supervisor.ts";
import type { Intent } from "../../protocol/troop.ts";
import { encodeEnvLine, passableEnvName } from "./agent-env.ts";

/**
 * The production launcher: every privileged step goes through the setuid shim, the elevation path
 * every ape uses, with a grant the agent's owner approves. No privileged code of the Nest's own:
 *   provision   apes --reason R -- <exec> --json agents provision NAME --owner O ... -- ARGV   (exact-command grant)
 *   start       apes --reason R --approval always --as NAME -- <exec> agents run NAME        (one `always` grant, approved once)
 *   remove      apes --reason R -- <exec> agents deprovision NAME                            (exact-command grant)
 * The agent runs as its own user, so the Nest (another uid) cannot signal it: `apes agents run` obeys
 * pause/resume/stop on its stdin (first, the values of its env allow-list: cli/daemon/agent-env.ts)
 * and says what it did on stdout; the Nest confirms a pause in /proc.
 * After provision the Nest enrolls the agent's identity for the owner (`enroll`, a delegated token).
 */

export interface ElevationLauncherOptions {
  config: NestConfig;
  /** The Nest's own environment for the shim's requester (its HOME, its session). */
  env: Record<string, string>;
  /** Where the values of a spawn's env allow-list come from (the Nest's whole environment). */
  agentEnv?: Readonly<Record<string, string | undefined>>;
  log: NestLog;
  /** Where each agent's output is appended (<dir>/<name>.log, 0600, cut at 1 MiB). */
  logDir: string;
  /** Registers the agent's identity at the IdP for its owner; gets the public key provision printed. */
  enroll(agent: AgentRecord, publicKey: string): Promise<void>;
}

const LOG_MAX = 1024 * 1024;

interface Controlled extends AgentProcess {
  child: ChildProcess;
}

export function elevationLauncher(o: ElevationLauncherOptions): Launcher {
  const { shim, exec } = o.config;
  const elevate = (argv: string[], input?: "pipe"): ChildProcess =>
    spawn(shim, argv, { env: o.env, stdio: [input ?? "ignore", "pipe", "pipe"], cwd: o.env.HOME ?? "/" });
  const appendLog = (name: string, chunk: string) => {
    mkdirSync(o.logDir, { recursive: true, mode: 0o700 });
    const file = join(o.logDir, `${name}.log`);
    try {
      if (statSync(file).size > LOG_MAX) truncateSync(file, 0);
    } catch {
      // not there yet
    }
    appendFileSync(file, chunk, { mode: 0o600 });
  };
  const run = (
    name: string,
    argv: string[],
  ): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const child = elevate(argv);
      let stdout = "";
      let stderr = "";
      child.stdout!.setEncoding("utf8").on("data", (c: string) => {
        if (stdout.length < 65536) stdout += c;
      });
      child.stderr!.setEncoding("utf8").on("data", (c: string) => {
        if (stderr.length < 65536) stderr += c;
        appendLog(name, c);
      });
      child.once("error", (e) => resolve({ code: 127, stdout, stderr: e.message }));
      child.once("close", (code) => resolve({ code, stdout, stderr }));
    });
  const lastLine = (s: string) => s.trim().split("\n").at(-1)?.slice(0, 300) ?? "";

  return {
    async provision(agent: AgentRecord, intent: Intent) {
      const s = agent.spec;
      const argv = [
        "--reason",
        `nest: spawn agent ${agent.name} for ${agent.owner} (intent ${intent.id})`,
        "--",
        exec,
        "--json",
        "agents",
        "provision",
        agent.name,
        "--owner",
        agent.owner,
        ...(o.config.idp ? ["--idp", o.config.idp] : []),
        ...(o.config.caFile ? ["--ca-file", o.config.caFile] : []),
        ...s.env.flatMap((e) => ["--env", e]),
        ...s.secrets.flatMap((x) => ["--secret", x]),
        "--",
        ...s.argv,
      ];
      const r = await run(agent.name, argv);
      if (r.code !== 0)
        throw new Error(`provision of ${agent.name} failed (${r.code}): ${lastLine(r.stderr)}`);
      let publicKey: unknown;
      try {
        publicKey = (JSON.parse(r.stdout) as { public_key?: unknown }).public_key;
      } catch {
        publicKey = undefined;
      }
      if (typeof publicKey !== "string") throw new Error(`provision of ${agent.name} printed no public key`);
      await o.enroll(agent, publicKey);
    },

    async start(agent: AgentRecord): Promise<AgentProcess> {
      const argv = [
        "--reason",
        `nest: run agent ${agent.name} for ${agent.owner}`,
        "--approval",
        "always",
        "--as",
        agent.name,
        "--",
        exec,
        "agents",
        "run",
        agent.name,
      ];
      // Buffered in the pipe while the shim waits for its grant; read by `apes agents run` first.
      const envLine = agent.spec.env.some(passableEnvName)
        ? encodeEnvLine(agent.spec.env, o.agentEnv ?? {})
        : undefined;
      const child = elevate(argv, "pipe");
      child.stdin!.on("error", () => undefined);
      if (envLine) child.stdin!.write(envLine);
      const exited = new Promise<ExitFacts>((resolve) => {
        child.once("exit", (code, signal) => resolve({ code, signal }));
        child.once("error", () => resolve({ code: 127, signal: null }));
      });
      child.stderr!.setEncoding("utf8").on("data", (c: string) => appendLog(agent.name, c));
      return await new Promise<Controlled>((resolve) => {
        const lines = createInterface({ input: child.stdout! });
        lines.on("line", (line) => {
          let e: { event?: unknown; pid?: unknown };
          try {
            e = JSON.parse(line) as typeof e;
          } catch {
            return;
          }
          if (e.event === "started" && typeof e.pid === "number" && Number.isSafeInteger(e.pid) && e.pid > 1)
            resolve({ pid: e.pid, exited, child });
          else if (e.event !== undefined)
            o.log.log("debug", "agent event", { agent: agent.name, event: String(e.event) });
        });
        // Never started (denied, approval timed out, program missing): the exit is the answer.
        void exited.then(() => resolve({ pid: child.pid ?? 0, exited, child }));
      });
    },

    async signal(_agent: AgentRecord, proc: AgentProcess, sig: GroupSignal) {
      const child = (proc as Controlled).child;
      const word = sig === "SIGSTOP" ? "pause" : sig === "SIGCONT" ? "resume" : "stop";
      if (child?.stdin?.writable) child.stdin.write(`${word}\n`);
      if (sig === "SIGKILL") child?.stdin?.end();
    },

    isStopped: processStopped,

    async deprovision(agent: AgentRecord) {
      const r = await run(agent.name, [
        "--reason",
        `nest: remove agent ${agent.name} for ${agent.owner}`,
        "--",
        exec,
        "agents",
        "deprovision",
        agent.name,
      ]);
      if (r.code !== 0) throw new Error(`removing ${agent.name} failed (${r.code}): ${lastLine(r.stderr)}`);
    },
  };
}
