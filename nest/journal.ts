import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open, readdir, readFile, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { INTENT_ID, type Intent, type ResultState } from "../protocol/troop.ts";

/**
 * The nest's durable record of every intent it accepted, one file per intent in its own state dir.
 * An intent is written (fsync of the file and of the directory) BEFORE it is acked, so the troop's
 * at-least-once delivery executes it once: a second delivery of the same id, before or after a
 * kill -9 of the nest, finds the record and is re-acked (and its result re-sent), never run again.
 * File names are the SHA-256 of the id (ids may be "." or contain ":"), so no id names a path.
 */

/** accepted: persisted and acked, not yet executed; executing: started; done/failed: finished. */
export type JournalState = "accepted" | "executing" | ResultState;

export interface JournalRecord {
  intent: Intent;
  state: JournalState;
  detail?: string;
  /** Unix milliseconds of the last change. */
  updated_at: number;
}

/** Finished records kept for dedupe; the oldest beyond this are pruned (the troop's ids are unique). */
export const JOURNAL_KEEP = 4096;
const MAX_RECORD_BYTES = 128 * 1024;

export type Admission = { kind: "new"; record: JournalRecord } | { kind: "duplicate"; record: JournalRecord };

function fileName(id: string): string {
  return `${createHash("sha256").update(id, "utf8").digest("hex")}.json`;
}

function isRecord(v: unknown): v is JournalRecord {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  const intent = r.intent as Record<string, unknown> | undefined;
  return (
    typeof intent === "object" &&
    intent !== null &&
    typeof intent.id === "string" &&
    INTENT_ID.test(intent.id) &&
    typeof intent.seq === "number" &&
    ["accepted", "executing", "running", "done", "failed"].includes(r.state as string) &&
    typeof r.updated_at === "number"
  );
}

export class IntentJournal {
  private readonly records = new Map<string, JournalRecord>();
  readonly dir: string;
  private readonly now: () => number;
  private readonly keep: number;
  private constructor(dir: string, now: () => number, keep: number) {
    this.dir = dir;
    this.now = now;
    this.keep = keep;
  }

  /** Opens (creating 0700) the journal directory and loads what a previous run left. */
  static async open(
    dir: string,
    options: { now?: () => number; keep?: number } = {},
  ): Promise<IntentJournal> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const j = new IntentJournal(dir, options.now ?? Date.now, options.keep ?? JOURNAL_KEEP);
    for (const name of await readdir(dir)) {
      if (name.endsWith(".tmp")) {
        // A write that a crash interrupted before its rename: never acked, so the troop resends it.
        await unlink(join(dir, name)).catch(() => undefined);
        continue;
      }
      if (!/^[0-9a-f]{64}\.json$/.test(name)) continue;
      try {
        const text = await readFile(join(dir, name), "utf8");
        if (text.length > MAX_RECORD_BYTES) continue;
        const v: unknown = JSON.parse(text);
        if (isRecord(v) && fileName(v.intent.id) === name) j.records.set(v.intent.id, v);
      } catch {
        // unreadable record: skipped (it was never acked, or the troop resends)
      }
    }
    return j;
  }

  get(id: string): JournalRecord | undefined {
    return this.records.get(id);
  }

  get size(): number {
    return this.records.size;
  }

  /** Records not finished yet (accepted or executing), in the troop's order. */
  unfinished(): JournalRecord[] {
    return [...this.records.values()]
      .filter((r) => r.state === "accepted" || r.state === "executing")
      .sort((a, b) => a.intent.seq - b.intent.seq);
  }

  /** Persists a newly delivered intent; a known id is a duplicate and changes nothing. */
  async admit(intent: Intent): Promise<Admission> {
    const known = this.records.get(intent.id);
    if (known) return { kind: "duplicate", record: known };
    const record: JournalRecord = { intent, state: "accepted", updated_at: this.now() };
    await this.persist(record);
    this.records.set(intent.id, record);
    await this.prune();
    return { kind: "new", record };
  }

  async update(id: string, state: JournalState, detail?: string): Promise<JournalRecord> {
    const known = this.records.get(id);
    if (!known) throw new Error(`no intent ${id} in the journal`);
    const record: JournalRecord = { ...known, state, updated_at: this.now() };
    if (detail !== undefined) record.detail = detail;
    else delete record.detail;
    await this.persist(record);
    this.records.set(id, record);
    return record;
  }

  private async persist(record: JournalRecord): Promise<void> {
    const final = join(this.dir, fileName(record.intent.id));
    const tmp = `${final}.${process.pid}.tmp`;
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o600);
    try {
      await fh.writeFile(JSON.stringify(record));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, final);
    const d = await open(this.dir, constants.O_RDONLY);
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  }

  private async prune(): Promise<void> {
    if (this.records.size <= this.keep) return;
    const finished = [...this.records.values()]
      .filter((r) => r.state === "done" || r.state === "failed")
      .sort((a, b) => a.intent.seq - b.intent.seq);
    for (const r of finished.slice(0, this.records.size - this.keep)) {
      this.records.delete(r.intent.id);
      await unlink(join(this.dir, fileName(r.intent.id))).catch(() => undefined);
    }
  }
}
