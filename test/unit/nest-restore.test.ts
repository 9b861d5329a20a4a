import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AgentStateFile, parseSavedAgents } from "../../nest/agent-state.ts";
import { localLauncher, processStopped } from "../../nest/agents.ts";
import { IntentJournal } from "../../nest/journal.ts";
import { nestLogger } from "../../nest/log.ts";
import { Nest } from "../../nest/nest.ts";
import type { Intent } from "../../protocol/troop.ts";

/**
 * Agents survive a restart of the Nest: what the owner wants of each agent (running, paused) is kept
 * in agents.json; the next run starts them again (a paused one paused, as the kernel shows), a
 * stopped one stays stopped, a SIGTERM drain is not taken for the owner's wish, and a tampered
 * record is dropped. Real processes (localLauncher); no troop (the link just retries).
 */

const work = mkdtempSync(join(tmpdir(), "apes-nest-restore-"));
const nests: Nest[] = [];
afterAll(async () => {
  for (const n of nests) await n.drain();
  rmSync(work, { recursive: true, force: true });
});
const ALICE = "alice@example.com";
const N = "nest-h+agent@example.com";
let seq = 0;
const intent = (kind: Intent["kind"], agent: string): Intent => ({
  id: `${kind}-${agent}-${++seq}`,
  nest: N,
  kind,
  agent,
  seq,
  submitted_by: ALICE,
  created_at: 1,
  ...(kind === "spawn" ? { spec: { owner: ALICE, argv: ["/bin/sleep", "300"], env: [], secrets: [] } } : {}),
});

async function nestIn(dir: string): Promise<Nest> {
  const nest = new Nest({
    journal: await IntentJournal.open(join(dir, "intents")),
    agentState: new AgentStateFile(join(dir, "agents.json")),
    launcher: localLauncher(),
    log: nestLogger("error", () => undefined),
    version: "test",
    // Nothing listens there: the link retries in the background, the nest works without it.
    link: { troop: "http://127.0.0.1:9", token: async () => "t.t.t", backoff: { baseMs: 1000, maxMs: 5000 } },
  });
  nests.push(nest);
  await nest.start();
  return nest;
}

async function until<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false) {
  const end = Date.now() + 10_000;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const agentOf = (n: Nest, name: string) => n.supervisor.agents.get(name);

describe("agents survive a restart of the Nest", () => {
  it("running and paused agents come back after a kill -9; a stopped one does not", async () => {
    const dir = join(work, "a");
    const first = await nestIn(dir);
    for (const i of [
      intent("spawn", "runner"),
      intent("spawn", "napper"),
      intent("pause", "napper"),
      intent("spawn", "quitter"),
      intent("stop", "quitter"),
    ])
      await first.handleIntent(i);
    expect(statSync(join(dir, "agents.json")).mode & 0o777).toBe(0o600);
    const oldPids = ["runner", "napper"].map((a) => first.supervisor.agents.get(a)!.pid!);
    // kill -9 of the Nest: `apes agents run` ends its agent when the pipe closes; here, by hand.
    nests.splice(nests.indexOf(first), 1);
    await first.link.stop();
    for (const pid of oldPids) process.kill(-pid, "SIGKILL");
    await until("old agents gone", () => oldPids.every((p) => !statSafe(p)));

    const second = await nestIn(dir);
    const runner = await until("runner restored", () => {
      const a = agentOf(second, "runner");
      return a && a.state === "running" ? a : undefined;
    });
    expect(runner.pid).not.toBe(oldPids[0]);
    const napper = await until("napper restored paused", () => {
      const a = agentOf(second, "napper");
      return a && a.state === "paused" ? a : undefined;
    });
    expect(await processStopped(napper.pid!)).toBe(true);
    // Known, stopped, not started; a restart intent finds it.
    expect(second.supervisor.agents.get("quitter")).toMatchObject({ state: "stopped", desired: "stopped" });
    expect(second.supervisor.agents.get("quitter")?.pid).toBeUndefined();
    await second.handleIntent(intent("restart", "quitter"));
    expect(second.supervisor.agents.get("quitter")?.state).toBe("running");
  });

  it("a SIGTERM drain keeps the wish: the next run starts the agent again; remove forgets it", async () => {
    const dir = join(work, "b");
    const first = await nestIn(dir);
    await first.handleIntent(intent("spawn", "keeper"));
    nests.splice(nests.indexOf(first), 1);
    await first.drain();
    expect(JSON.parse(readFileSync(join(dir, "agents.json"), "utf8")).agents).toEqual([
      expect.objectContaining({ name: "keeper", desired: "running" }),
    ]);
    const second = await nestIn(dir);
    await until("keeper running", () => agentOf(second, "keeper")?.state === "running");
    await second.handleIntent(intent("remove", "keeper"));
    expect(JSON.parse(readFileSync(join(dir, "agents.json"), "utf8")).agents).toEqual([]);
  });

  it("a tampered record is dropped, never started", () => {
    const ok = {
      name: "good",
      owner: ALICE,
      spec: { owner: ALICE, argv: ["/bin/true"] },
      desired: "running",
    };
    const text = JSON.stringify({
      agents: [
        ok,
        { ...ok, name: "../etc" },
        { ...ok, name: "rel", spec: { owner: ALICE, argv: ["sleep"] } },
        { ...ok, name: "other", owner: "mallory@example.com" },
        { ...ok, name: "gone", desired: "removed" },
        { ...ok, name: "odd", desired: "backoff" },
        { ...ok, name: "extra", spec: { ...ok.spec, shell: true } },
        ok,
      ],
    });
    expect(parseSavedAgents(text).map((a) => a.name)).toEqual(["good"]);
    expect(parseSavedAgents("not json")).toEqual([]);
    expect(parseSavedAgents(JSON.stringify({ agents: "x" }))).toEqual([]);
    const file = join(work, "bad.json");
    writeFileSync(file, "{");
    expect(new AgentStateFile(file).load()).toEqual([]);
  });
});

function statSafe(pid: number): boolean {
  try {
    statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}
