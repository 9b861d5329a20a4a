import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { IntentJournal, JOURNAL_KEEP } from "../../nest/journal.ts";
import type { Intent } from "../../protocol/troop.ts";

const dirs: string[] = [];
const fresh = () => {
  const d = join(mkdtempSync(join(tmpdir(), "apes-nest-journal-")), "intents");
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(join(d, ".."), { recursive: true, force: true });
});

const intent = (id: string, seq = 1): Intent => ({
  id,
  nest: "nest-h+agent@example.com",
  kind: "stop",
  agent: "bot1",
  seq,
  submitted_by: "alice@example.com",
  created_at: 1,
});

describe("intent journal (dedupe at the nest)", () => {
  it("admits an id once; the second delivery is a duplicate with the first's state", async () => {
    const j = await IntentJournal.open(fresh());
    expect((await j.admit(intent("a"))).kind).toBe("new");
    await j.update("a", "done", "ok");
    const again = await j.admit(intent("a", 9));
    expect(again).toMatchObject({
      kind: "duplicate",
      record: { state: "done", detail: "ok", intent: { seq: 1 } },
    });
  });

  it("survives a restart (a new process opening the same dir): what was admitted is still known", async () => {
    const dir = fresh();
    const first = await IntentJournal.open(dir);
    await first.admit(intent("x", 1));
    await first.admit(intent("y", 2));
    await first.update("y", "executing");
    await first.admit(intent("z", 3));
    await first.update("z", "failed", "no");
    const second = await IntentJournal.open(dir);
    expect(second.size).toBe(3);
    expect((await second.admit(intent("x"))).kind).toBe("duplicate");
    expect(second.unfinished().map((r) => [r.intent.id, r.state])).toEqual([
      ["x", "accepted"],
      ["y", "executing"],
    ]);
  });

  it("names files by the hash of the id: '.', '..' and ':' ids stay inside, files are private", async () => {
    const dir = fresh();
    const j = await IntentJournal.open(dir);
    for (const id of [".", "..", "a:b", "~x"]) expect((await j.admit(intent(id))).kind).toBe("new");
    const names = readdirSync(dir);
    expect(names).toHaveLength(4);
    for (const n of names) {
      expect(n).toMatch(/^[0-9a-f]{64}\.json$/);
      expect(statSync(join(dir, n)).mode & 0o077).toBe(0);
    }
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect((await (await IntentJournal.open(dir)).admit(intent(".."))).kind).toBe("duplicate");
  });

  it("drops an interrupted write and records whose content does not match their name", async () => {
    const dir = fresh();
    const j = await IntentJournal.open(dir);
    await j.admit(intent("real"));
    writeFileSync(join(dir, `${"0".repeat(64)}.json.123.tmp`), "{");
    writeFileSync(
      join(dir, `${"1".repeat(64)}.json`),
      JSON.stringify({ intent: intent("planted"), state: "done", updated_at: 1 }),
    );
    writeFileSync(join(dir, `${"2".repeat(64)}.json`), "not json");
    const again = await IntentJournal.open(dir);
    expect(again.size).toBe(1);
    expect(again.get("planted")).toBeUndefined();
    expect(existsSync(join(dir, `${"0".repeat(64)}.json.123.tmp`))).toBe(false);
  });

  it("keeps at most `keep` records (default JOURNAL_KEEP), pruning the oldest finished ones", async () => {
    expect(JOURNAL_KEEP).toBeGreaterThanOrEqual(1024);
    const KEEP = 20;
    const dir = fresh();
    const j = await IntentJournal.open(dir, { keep: KEEP });
    for (let i = 0; i < KEEP + 3; i++) {
      await j.admit(intent(`n${i}`, i));
      await j.update(`n${i}`, "done");
    }
    expect(j.size).toBe(KEEP);
    expect(j.get("n0")).toBeUndefined();
    expect(j.get(`n${KEEP + 2}`)).toBeDefined();
    expect(readdirSync(dir).length).toBe(j.size);
  });
});
