import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { localLauncher, processStopped, Supervisor } from "../../nest/agents.ts";
import { nestLogger } from "../../nest/log.ts";
import type { AgentRecord } from "../../nest/supervisor.ts";
import type { Intent, SpawnSpec } from "../../protocol/troop.ts";

/**
 * The supervisor's effects with real processes (the local launcher: agents of the nest's own uid):
 * a crash loop restarted with backoff until it gives up, pause that the kernel shows (state T),
 * resume, stop that ends the whole process group (a grandchild too). The elevation launcher is
 * covered by the e2e tests.
 */

const work = mkdtempSync(join(tmpdir(), "apes-nest-agents-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const ALICE = "alice@example.com";
let n = 0;
const intent = (kind: Intent["kind"], agent: string, spec?: SpawnSpec): Intent => ({
  id: `i${++n}`,
  nest: "nest-h+agent@example.com",
  kind,
  agent,
  seq: n,
  submitted_by: ALICE,
  created_at: 1,
  ...(spec ? { spec } : {}),
});
const spec = (argv: string[]): SpawnSpec => ({ owner: ALICE, argv, env: [], secrets: [] });

function supervisor(maxFailures = 3) {
  const transitions: AgentRecord[] = [];
  const s = new Supervisor({
    launcher: localLauncher(),
    log: nestLogger("error", () => undefined),
    policy: { restartBackoff: { baseMs: 20, maxMs: 80 }, maxFailures, windowMs: 60_000 },
    onTransition: (a) => transitions.push(a),
    graceMs: 500,
  });
  return { s, transitions };
}

async function until<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  ms = 10_000,
) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe("supervisor with real processes", () => {
  it("restarts a crashing agent with backoff and gives up after maxFailures, reporting each step", async () => {
    const { s, transitions } = supervisor(3);
    await s.apply(intent("spawn", "crashy", spec(["/bin/sh", "-c", "exit 3"])));
    await until("failed", () => s.agents.get("crashy")?.state === "failed");
    const states = transitions.map((t) => t.state);
    expect(states).toEqual(["starting", "running", "backoff", "running", "backoff", "running", "failed"]);
    expect(s.agents.get("crashy")!.restarts).toBe(2);
    // Given up for good: nothing restarts it any more.
    await new Promise((r) => setTimeout(r, 200));
    expect(transitions).toHaveLength(7);
    // The owner's restart starts it afresh.
    await s.apply(intent("restart", "crashy"));
    await until("failed again", () => transitions.length > 7 && s.agents.get("crashy")?.state === "failed");
  });

  it("pause is SIGSTOP that the kernel shows; resume continues; stop ends the whole group", async () => {
    const { s } = supervisor();
    const pidFile = join(work, "grandchild.pid");
    await s.apply(
      intent("spawn", "sleeper", spec(["/bin/sh", "-c", `sleep 100 & echo $! > ${pidFile}; wait`])),
    );
    const pid = s.agents.get("sleeper")!.pid!;
    const grandchild = await until("grandchild", () => {
      try {
        return Number(readFileSync(pidFile, "utf8").trim()) || undefined;
      } catch {
        return undefined;
      }
    });
    await s.apply(intent("pause", "sleeper"));
    expect(s.agents.get("sleeper")!.state).toBe("paused");
    expect(await processStopped(pid)).toBe(true);
    expect(await processStopped(grandchild)).toBe(true);
    await s.apply(intent("resume", "sleeper"));
    expect(s.agents.get("sleeper")!.state).toBe("running");
    expect(await processStopped(grandchild)).toBe(false);
    // Paused again, then stopped: SIGCONT follows SIGTERM so a stopped group still ends.
    await s.apply(intent("pause", "sleeper"));
    await s.apply(intent("stop", "sleeper"));
    expect(s.agents.get("sleeper")!.state).toBe("stopped");
    await until("group gone", () => !alive(pid) && !alive(grandchild));
    // Stopped means stopped: no restart.
    await new Promise((r) => setTimeout(r, 150));
    expect(s.agents.get("sleeper")!.state).toBe("stopped");
  });

  it("a stubborn agent that ignores SIGTERM is killed after the grace; remove forgets it", async () => {
    const { s } = supervisor();
    await s.apply(
      intent("spawn", "stubborn", spec(["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])),
    );
    const pid = s.agents.get("stubborn")!.pid!;
    await s.apply(intent("remove", "stubborn"));
    expect(alive(pid)).toBe(false);
    expect(s.agents.has("stubborn")).toBe(false);
  });

  it("refused plans reject with the reason and change nothing", async () => {
    const { s, transitions } = supervisor();
    await expect(s.apply(intent("pause", "ghost"))).rejects.toThrow(/no agent ghost/);
    await expect(
      s.apply({ ...intent("spawn", "x", spec(["/bin/true"])), submitted_by: "mallory@example.com" }),
    ).rejects.toThrow(/owner/);
    expect(transitions).toEqual([]);
  });
});
