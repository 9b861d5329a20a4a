import { describe, expect, it } from "vitest";
import { backoffCeiling, fullJitter } from "../../nest/backoff.ts";
import { nestLogger, redact } from "../../nest/log.ts";
import {
  type AgentRecord,
  decideExit,
  planIntent,
  type SupervisorPolicy,
  started,
  statusOf,
} from "../../nest/supervisor.ts";
import type { Intent } from "../../protocol/troop.ts";

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const spec = { owner: ALICE, argv: ["/usr/bin/sleep", "100"], env: [], secrets: [] };

function intent(kind: Intent["kind"], extra: Partial<Intent> = {}): Intent {
  return {
    id: `i-${kind}`,
    nest: "nest-h+agent@example.com",
    kind,
    agent: "bot1",
    seq: 1,
    submitted_by: ALICE,
    created_at: 1,
    ...(kind === "spawn" ? { spec } : {}),
    ...extra,
  };
}

function agent(extra: Partial<AgentRecord> = {}): AgentRecord {
  return {
    name: "bot1",
    owner: ALICE,
    spec,
    desired: "running",
    state: "running",
    pid: 42,
    restarts: 0,
    since: 10,
    failures: [],
    ...extra,
  };
}

describe("backoff with full jitter", () => {
  const p = { baseMs: 100, maxMs: 1000 };
  it("doubles the window per attempt up to the cap", () => {
    expect([0, 1, 2, 3, 4, 10, 1000].map((a) => backoffCeiling(a, p))).toEqual([
      100, 200, 400, 800, 1000, 1000, 1000,
    ]);
  });
  it("draws uniformly below the window, never at or above it", () => {
    expect(fullJitter(3, p, () => 0)).toBe(0);
    expect(fullJitter(3, p, () => 0.5)).toBe(400);
    expect(fullJitter(3, p, () => 0.999999)).toBeLessThan(800);
    expect(fullJitter(20, p, () => 0.999999)).toBeLessThan(1000);
  });
  it("treats a broken random source as 0 instead of waiting forever or not at all", () => {
    expect(fullJitter(2, p, () => Number.NaN)).toBe(0);
    expect(fullJitter(2, p, () => 7)).toBe(0);
    expect(fullJitter(2, p, () => -1)).toBe(0);
  });
  it("spreads 1000 reconnects over the window", () => {
    let seed = 1;
    const rnd = () => {
      seed = (seed * 48271) % 2147483647;
      return seed / 2147483647;
    };
    const delays = Array.from({ length: 1000 }, () => fullJitter(4, p, rnd));
    const buckets = [0, 0, 0, 0];
    for (const d of delays) buckets[Math.floor(d / 250)]!++;
    for (const b of buckets) expect(b).toBeGreaterThan(150);
  });
});

describe("supervisor: planIntent", () => {
  it("spawns a new agent: provision, then start", () => {
    const plan = planIntent(undefined, intent("spawn"), 100);
    expect(plan).toMatchObject({
      ok: true,
      steps: ["provision", "start"],
      agent: { owner: ALICE, state: "starting" },
    });
  });
  it("refuses a spawn whose owner is not the submitter", () => {
    const plan = planIntent(undefined, intent("spawn", { submitted_by: BOB }), 100);
    expect(plan).toMatchObject({ ok: false, reason: expect.stringMatching(/owner must be the submitter/) });
  });
  it("a repeated spawn of a running agent does nothing; of a failed one starts it again", () => {
    expect(planIntent(agent(), intent("spawn"), 100)).toMatchObject({ ok: true, steps: [] });
    expect(planIntent(agent({ state: "failed", failures: [1, 2] }), intent("spawn"), 100)).toMatchObject({
      ok: true,
      steps: ["start"],
      agent: { failures: [] },
    });
  });
  it("refuses a spawn over an agent with another spec or owner", () => {
    const other = intent("spawn", { spec: { ...spec, argv: ["/bin/true"] } });
    expect(planIntent(agent(), other, 1)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/another spec/),
    });
    expect(planIntent(agent({ owner: BOB }), intent("spawn"), 1)).toMatchObject({ ok: false });
  });
  it("only the agent's owner commands it", () => {
    for (const k of ["stop", "restart", "pause", "resume", "remove"] as const)
      expect(planIntent(agent(), intent(k, { submitted_by: BOB }), 1)).toMatchObject({ ok: false });
  });
  it("stop, pause, resume, restart, remove plan the steps the state needs", () => {
    expect(planIntent(agent(), intent("stop"), 1)).toMatchObject({
      ok: true,
      steps: ["stop"],
      agent: { desired: "stopped" },
    });
    expect(planIntent(agent({ state: "stopped" }), intent("stop"), 1)).toMatchObject({ ok: true, steps: [] });
    expect(planIntent(agent(), intent("pause"), 1)).toMatchObject({ ok: true, steps: ["pause"] });
    expect(planIntent(agent({ state: "paused" }), intent("pause"), 1)).toMatchObject({ ok: true, steps: [] });
    expect(planIntent(agent({ state: "backoff" }), intent("pause"), 1)).toMatchObject({ ok: false });
    expect(planIntent(agent({ state: "paused" }), intent("resume"), 1)).toMatchObject({
      ok: true,
      steps: ["resume"],
    });
    expect(planIntent(agent(), intent("resume"), 1)).toMatchObject({ ok: true, steps: [] });
    expect(planIntent(agent({ state: "stopped" }), intent("resume"), 1)).toMatchObject({ ok: false });
    expect(planIntent(agent(), intent("restart"), 1)).toMatchObject({ ok: true, steps: ["stop", "start"] });
    expect(planIntent(agent({ state: "failed" }), intent("restart"), 1)).toMatchObject({
      ok: true,
      steps: ["start"],
    });
    expect(planIntent(agent(), intent("remove"), 1)).toMatchObject({
      ok: true,
      steps: ["stop", "deprovision"],
    });
    expect(planIntent(agent({ state: "stopped" }), intent("remove"), 1)).toMatchObject({
      ok: true,
      steps: ["deprovision"],
    });
  });
  it("intents for an unknown agent: stop and remove are no-ops, the rest refused", () => {
    expect(planIntent(undefined, intent("remove"), 1)).toMatchObject({ ok: true, steps: [] });
    expect(planIntent(undefined, intent("stop"), 1)).toMatchObject({ ok: true, steps: [] });
    for (const k of ["pause", "resume", "restart"] as const)
      expect(planIntent(undefined, intent(k), 1)).toMatchObject({ ok: false });
  });
});

describe("supervisor: decideExit", () => {
  const policy: SupervisorPolicy = {
    restartBackoff: { baseMs: 1000, maxMs: 8000 },
    maxFailures: 3,
    windowMs: 60_000,
  };
  it("a crash is restarted after half the window plus jitter, growing with each failure", () => {
    const first = decideExit(agent(), { code: 1, signal: null }, 100_000, policy, () => 0.999);
    expect(first.agent.state).toBe("backoff");
    expect(first.agent.pid).toBeUndefined();
    expect(first.restartInMs).toBeGreaterThanOrEqual(500);
    expect(first.restartInMs).toBeLessThan(1000);
    const second = decideExit(first.agent, { code: null, signal: "SIGSEGV" }, 101_000, policy, () => 0);
    expect(second.restartInMs).toBe(1000);
  });
  it("gives up at maxFailures within the window, and says so", () => {
    let a = agent();
    const states: string[] = [];
    for (let i = 0; i < 3; i++) {
      const d = decideExit(a, { code: 2, signal: null }, 100_000 + i * 1000, policy, () => 0.5);
      states.push(d.agent.state);
      a = d.agent;
    }
    expect(states).toEqual(["backoff", "backoff", "failed"]);
    expect(decideExit(agent(), { code: 2, signal: null }, 1, policy).agent.state).toBe("backoff");
  });
  it("forgets failures that fell out of the window", () => {
    const old = agent({ failures: [0, 1000] });
    expect(decideExit(old, { code: 2, signal: null }, 120_000, policy).agent).toMatchObject({
      state: "backoff",
      failures: [120_000],
    });
  });
  it("a wanted exit (stop) and a clean exit are not restarted", () => {
    expect(decideExit(agent({ desired: "stopped" }), { code: null, signal: "SIGTERM" }, 1, policy)).toEqual({
      agent: expect.objectContaining({ state: "stopped" }),
    });
    const clean = decideExit(agent(), { code: 0, signal: null }, 1, policy);
    expect(clean.restartInMs).toBeUndefined();
    expect(clean.agent).toMatchObject({ state: "stopped", desired: "stopped" });
  });
  it("status frames carry name, state, pid, restarts", () => {
    const s = statusOf(started(agent({ state: "starting" }), 77, 5, true));
    expect(s).toEqual({ name: "bot1", state: "running", pid: 77, restarts: 1, since: 5 });
  });
});

describe("nest log", () => {
  const jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJuZXN0In0.c2lnbmF0dXJlLWJ5dGVz";
  it("never writes a token: not as a field, not inside a message, not nested, not as a Bearer header", () => {
    const lines: string[] = [];
    const log = nestLogger("debug", (l) => lines.push(l));
    log.log("info", `upgrade with ${jwt} refused`, {
      token: "opaque-secret",
      nested: { deeper: [`x ${jwt}`], authorization: `Bearer abc.def` },
      error: new Error(`401 for Bearer ${jwt}`),
      header: "Authorization: Bearer opaque123",
    });
    const all = lines.join("");
    expect(all).not.toContain(jwt);
    expect(all).not.toContain("opaque-secret");
    expect(all).not.toContain("opaque123");
    expect(all).not.toContain("abc.def");
    const entry = JSON.parse(lines[0]!);
    expect(entry).toMatchObject({ level: "info", token: "[redacted]", msg: "upgrade with [jwt] refused" });
  });
  it("leaves ordinary values alone and drops lines below the level", () => {
    expect(redact({ intent: "i-1", n: 3 })).toEqual({ intent: "i-1", n: 3 });
    const lines: string[] = [];
    nestLogger("warn", (l) => lines.push(l)).log("info", "quiet");
    expect(lines).toEqual([]);
  });
});
