import { chmodSync, closeSync, existsSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import type { Grant } from "../../protocol/types.ts";
import type { Logger } from "../../server/log.ts";
import type { NewNotification, NotifyChannel, Store, UserRecord } from "../store/types.ts";
import { openChannels, type VapidKeys } from "./channels.ts";
import type { NotifyConfig } from "./config.ts";
import { grantContent, outboxRows, recipientsOf, testContent } from "./content.ts";
import { NotifyWorker } from "./worker.ts";

/** What the routes see of notifications: the rows to write with a grant, a kick, the channels on offer. */
export interface Notifier {
  enabled: ReadonlySet<NotifyChannel>;
  /** Subscription targets may be on loopback or a local network address (config allow_local_targets). */
  allowLocalTargets: boolean;
  /** The VAPID public key (base64url) browsers subscribe with, when Web Push is on. */
  vapidPublicKey?: string;
  /** Outbox rows for this grant's event: one per subscription of each recipient that wants it. */
  rowsFor(
    event: "pending" | "decided",
    grant: Grant,
    requester: UserRecord | undefined,
    now: number,
  ): Promise<NewNotification[]>;
  /** A test notification to one subscription (its own key: every test is delivered). */
  testRow(subscriptionId: string, key: string, now: number): NewNotification;
  /** Rows were committed: deliver now. */
  kick(): void;
  close(): Promise<void>;
}

export const VAPID_FILE = "vapid.json";

/** A new VAPID key pair (web-push loaded only when Web Push is on). */
export async function newVapidKeys(): Promise<VapidKeys> {
  const webpush = (await import("web-push")).default;
  return webpush.generateVAPIDKeys();
}

/** The IdP's VAPID key pair: made on the first start with Web Push on, kept 0600 in the data dir. */
async function vapidKeys(dataDir: string): Promise<VapidKeys> {
  const file = join(dataDir, VAPID_FILE);
  if (!existsSync(file)) {
    const keys = await newVapidKeys();
    try {
      const fd = openSync(file, "wx", 0o600);
      writeSync(fd, `${JSON.stringify(keys)}\n`);
      closeSync(fd);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
  }
  chmodSync(file, 0o600);
  const k = JSON.parse(readFileSync(file, "utf8")) as Partial<VapidKeys>;
  if (typeof k.publicKey !== "string" || typeof k.privateKey !== "string")
    throw new Error(`${file}: not a VAPID key pair`);
  return { publicKey: k.publicKey, privateKey: k.privateKey };
}

export async function startNotifier(
  store: Store,
  config: NotifyConfig,
  options: {
    dataDir: string;
    /** Where the key pair is kept instead of the data dir (PostgreSQL: the database, for every instance). */
    vapidKeys?: () => Promise<VapidKeys>;
    base: string;
    log: Logger;
    /**
     * Another process delivers (the housekeeping worker of `serve --workers`: one deliverer, so no
     * row is sent twice at once): no delivery worker here, and kick() calls this instead.
     */
    kickElsewhere?: () => void;
  },
): Promise<Notifier> {
  const vapid = config.webpushSubject
    ? await (options.vapidKeys ? options.vapidKeys() : vapidKeys(options.dataDir))
    : undefined;
  const channels = await openChannels(config, vapid, () => Math.floor(Date.now() / 1000));
  const worker = options.kickElsewhere
    ? undefined
    : new NotifyWorker(store, channels, config, options.log, async () => {
        await store.lifecycle?.flush?.();
      });
  worker?.start();
  const linkBase = config.linkBase ?? options.base;
  return {
    enabled: channels.enabled,
    allowLocalTargets: config.allowLocalTargets,
    ...(vapid ? { vapidPublicKey: vapid.publicKey } : {}),
    async rowsFor(event, grant, requester, now) {
      // A disabled account hears nothing (someone who left must not keep reading what is asked).
      const who: string[] = [];
      for (const email of recipientsOf(event, requester)) {
        const u = await store.getUser(email);
        if (u && !u.disabled) who.push(email);
      }
      if (who.length === 0) return [];
      const subs = await store.subscriptionsOf(who);
      if (subs.length === 0) return [];
      return outboxRows(event, grant.id, subs, grantContent(event, grant, linkBase, now), now, grant.id);
    },
    testRow: (subscriptionId, key, now) => ({
      key,
      subscriptionId,
      event: "test",
      payload: JSON.stringify(testContent(now)),
      createdAt: now,
    }),
    kick: () => (worker ? worker.kick() : options.kickElsewhere!()),
    close: async () => {
      if (worker) await worker.close();
      else channels.close();
    },
  };
}
