import type { Logger } from "../../server/log.ts";
import type { NotificationRecord, Store } from "../store/types.ts";
import { type DeliveryResult, outcomeOf, type RetryPolicy } from "./backoff.ts";
import type { Channels } from "./channels.ts";

/**
 * The delivery worker: takes due outbox rows, delivers each through its channel, records the outcome
 * (delivered, retry at a backoff, or dead). At most `concurrency` deliveries are in flight; a slow
 * receiver holds one slot for at most the delivery timeout and never a request of the IdP (grant
 * creation only writes rows). It looks at the outbox at least every POLL_MS, so rows put back by
 * `apes idp notifications retry` (another process) and rows left by a previous run are delivered
 * without a kick. A row is pending until an attempt is recorded: a crash mid-delivery means one more
 * delivery after the restart (at least once; receivers drop repeats by the idempotency key).
 */

export const POLL_MS = 1000;

export interface WorkerOptions extends RetryPolicy {
  concurrency: number;
}

export class NotifyWorker {
  /** Row id -> its subscription, for the deliveries under way. */
  private readonly inFlight = new Map<number, string>();
  private readonly stop = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private filling = false;
  private again = false;
  private readonly running = new Set<Promise<void>>();

  private readonly store: Store;
  private readonly channels: Channels;
  private readonly options: WorkerOptions;
  private readonly log: Logger;
  /** Waits until what was written is committed (group commit), so no row is sent before its grant is durable. */
  private readonly committed: () => Promise<void>;

  constructor(
    store: Store,
    channels: Channels,
    options: WorkerOptions,
    log: Logger,
    committed: () => Promise<void> = async () => {},
  ) {
    this.store = store;
    this.channels = channels;
    this.options = options;
    this.log = log;
    this.committed = committed;
  }

  start(): void {
    this.schedule(0);
  }

  /** New rows were written: look now (after they are committed). */
  kick(): void {
    if (this.stop.signal.aborted) return;
    this.committed().then(
      () => this.schedule(0),
      () => this.schedule(POLL_MS),
    );
  }

  private schedule(ms: number): void {
    if (this.stop.signal.aborted) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.fill(), ms);
    this.timer.unref();
  }

  private async fill(): Promise<void> {
    if (this.stop.signal.aborted) return;
    if (this.filling) {
      this.again = true;
      return;
    }
    this.filling = true;
    let next = POLL_MS;
    try {
      let started = 0;
      const free = this.options.concurrency - this.inFlight.size;
      if (free > 0) {
        // One delivery per subscription at a time: rows of a busy subscription (its in-flight row
        // among them) are not even read, so a receiver that hangs holds one slot and never the rest.
        const rows = await this.store.dueNotifications(Date.now(), free, [...this.inFlight.values()]);
        for (const row of rows) {
          if (this.inFlight.size >= this.options.concurrency) break;
          if ([...this.inFlight.values()].includes(row.subscriptionId)) continue;
          this.inFlight.set(row.id, row.subscriptionId);
          started++;
          const p = this.run(row).finally(() => {
            this.inFlight.delete(row.id);
            this.running.delete(p);
            this.schedule(0);
          });
          this.running.add(p);
        }
      }
      const due = await this.store.nextNotificationDue();
      if (due !== undefined) next = Math.max(0, Math.min(POLL_MS, due - Date.now()));
      // What is due may be only rows waiting for a busy subscription: a completion schedules the next
      // look, so do not spin on them.
      if (next === 0 && started === 0) next = POLL_MS;
    } catch (e) {
      this.log.log("warn", "notification outbox read failed", { error: (e as Error).message });
    } finally {
      this.filling = false;
    }
    if (this.again) {
      this.again = false;
      next = 0;
    }
    this.schedule(next);
  }

  private async run(row: NotificationRecord): Promise<void> {
    try {
      const sub = await this.store.getSubscription(row.subscriptionId);
      const result = sub
        ? await this.channels.deliver(row, sub, this.stop.signal)
        : ({ ok: false, error: "the subscription was removed", retry: false } as DeliveryResult);
      if (this.stop.signal.aborted) return; // shutting down: the row stays pending for the next start
      const outcome = outcomeOf(result, row.attempts, this.options, Date.now());
      await this.store.recordAttempt(row.id, outcome);
      const fields = {
        notification: row.id,
        subscription: row.subscriptionId,
        channel: sub?.channel,
        attempts: row.attempts + 1,
      };
      if (outcome.delivered) this.log.log("info", "notification delivered", fields);
      else if ("dead" in outcome)
        this.log.log("warn", "notification dead", { ...fields, error: outcome.error });
      else
        this.log.log("info", "notification failed; will retry", {
          ...fields,
          error: outcome.error,
          retry_in_ms: outcome.retryAtMs - Date.now(),
        });
      if (!result.ok && result.gone && sub) {
        await this.store.removeSubscription(sub.id);
        this.log.log("info", "subscription removed: the receiver says it is gone", { subscription: sub.id });
      }
    } catch (e) {
      this.log.log("warn", "notification delivery failed", {
        notification: row.id,
        error: (e as Error).message,
      });
    }
  }

  /** Stops looking; deliveries in flight are aborted and their rows stay pending. */
  async close(): Promise<void> {
    this.stop.abort();
    clearTimeout(this.timer);
    await Promise.allSettled([...this.running]);
    this.channels.close();
  }
}
