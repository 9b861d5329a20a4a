import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { GrantEvents, type Idp, type Principal } from "../../idp/context.ts";
import { Keyring } from "../../idp/keys.ts";
import { registerGrantRoutes } from "../../idp/routes/grants.ts";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import type { Store, StoredGrant } from "../../idp/store/types.ts";
import type { Handler as RouteHandler } from "../../server/http.ts";

/**
 * The grant long poll (`GET /api/grants/{id}` with `Prefer: wait=N`) against a store whose reads
 * take their time, as a database across a network does: a change made while the poll reads the
 * grant must still wake it (it subscribes before it reads, not after).
 */

type Router = Parameters<typeof registerGrantRoutes>[0];
type Handler = RouteHandler<Principal>;

const stores: Store[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

describe("grant long poll", () => {
  it("answers a change made while it was reading the grant, not at its deadline", async () => {
    const sqlite = openSqliteStore(join(mkdtempSync(join(tmpdir(), "apes-poll-")), "d"));
    stores.push(sqlite);
    // getGrant answers only when the test lets it (after the approval below).
    let held: (() => void)[] | undefined;
    const store: Store = new Proxy(sqlite, {
      get(target, key) {
        if (key === "getGrant") {
          return async (id: string): Promise<StoredGrant | undefined> => {
            const read = await target.getGrant(id);
            if (held) await new Promise<void>((resolve) => held!.push(resolve));
            return read;
          };
        }
        const value = Reflect.get(target, key);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    await store.addUser({ email: "bot@x", kind: "agent", owner: "alice@x", createdAt: 1 });
    const user = (await store.getUser("bot@x"))!;
    const principal: Principal = {
      sub: user.email,
      user,
      actor: { sub: user.email, kind: "agent", admin: false, delegated: false },
      tokenExp: 2 ** 40,
    };
    const shutdown = new AbortController();
    const idp: Idp = {
      store,
      keys: await Keyring.open(store, 1),
      issuer: "http://idp.test",
      base: "http://idp.test",
      tokenTtl: 60,
      log: { log() {}, always() {}, enabled: () => false },
      events: new GrantEvents(),
      now: () => Math.floor(Date.now() / 1000),
      shutdown: shutdown.signal,
      sessionClaims: async () => ({}),
      authenticate: async () => principal,
      rateLimit() {},
      revocationHandle: (kind, subject) => `${kind}:${subject}`,
    };
    const routes = new Map<string, Handler>();
    const add = (method: string, path: string, _auth: boolean, handler: Handler) => {
      routes.set(`${method} ${path}`, handler);
    };
    registerGrantRoutes({ add } as unknown as Router, idp);
    const { grant } = await store.insertGrant({
      grant: {
        id: "00000000-0000-4000-8000-000000000001",
        type: "command",
        request: {
          requester: "bot@x",
          target_host: "h",
          audience: "escapes",
          grant_type: "once",
          command: ["ls"],
        },
        status: "pending",
        created_at: idp.now(),
      },
    });

    held = [];
    const closed = new AbortController();
    const reply = Promise.resolve(
      routes.get("GET /api/grants/:id")!(
        {
          req: { headers: { prefer: "wait=60" } },
          method: "GET",
          path: `/api/grants/${grant.id}`,
          params: { id: grant.id },
          query: new URLSearchParams(),
          rid: "r",
          ip: "127.0.0.1",
          closed: closed.signal,
        } as unknown as Parameters<Handler>[0],
        principal,
      ),
    );
    // The poll has read the pending grant; before it goes on, the grant is approved and announced.
    while (held.length === 0) await new Promise((resolve) => setImmediate(resolve));
    await sqlite.transition(grant.id, { from: ["pending"], to: "approved", decidedBy: "alice@x" });
    idp.events.changed(grant.id);
    const waiting = held;
    held = undefined;
    for (const release of waiting) release();

    // Generous: the poll answers within milliseconds; a missed change would keep it 60 s.
    const timeout = new Promise<"still waiting">((resolve) =>
      setTimeout(() => resolve("still waiting"), 5000),
    );
    const answer = await Promise.race([reply, timeout]);
    closed.abort();
    shutdown.abort();
    await reply;
    expect(answer).toMatchObject({ status: 200, body: { status: "approved" } });
  });
});
