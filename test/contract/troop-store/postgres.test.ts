import { beforeAll, describe, expect, it } from "vitest";
import { openPostgresTroopStore } from "../../../control/store/postgres.ts";
import { postgresTarget } from "../../../server/postgres.ts";
import { type PgServer, sharedPostgres } from "../../helpers/postgres.ts";
import { troopStoreContract } from "./contract.ts";

/** The troop's PostgreSQL store against the contract, a new database per case (`dir` is its URL). */

let server: PgServer;
beforeAll(async () => {
  server = await sharedPostgres();
});

troopStoreContract("postgres (pool, notifications)", async (again) => {
  const url = again ?? (await server.createDatabase("troop"));
  return {
    store: await openPostgresTroopStore({ target: postgresTarget(url), listen: true, maxConnections: 4 }),
    dir: url,
  };
});

describe("troop store on PostgreSQL: intents announced to every instance", () => {
  it("a watcher hears the nest of an intent queued by another instance; a dropped connection says re-read", async () => {
    const url = await server.createDatabase("troop");
    const a = await openPostgresTroopStore({ target: postgresTarget(url), listen: true, maxConnections: 2 });
    const b = await openPostgresTroopStore({ target: postgresTarget(url), maxConnections: 2 });
    try {
      const heard: (string | undefined)[] = [];
      let wake: () => void = () => {};
      a.lifecycle.watchIntents!((nest) => {
        heard.push(nest);
        wake();
      });
      const next = () => new Promise<void>((r) => (wake = r));
      let arrived = next();
      await b.submitIntent({ id: "i1", nest: "n@x", kind: "stop", agent: "w" }, "I1", { sub: "alice@x" }, 1);
      await arrived;
      expect(heard).toEqual(["n@x"]);
      arrived = next();
      a.dropListenerForTest();
      await arrived;
      expect(heard.at(-1)).toBeUndefined();
      // Back (reconnected): an intent queued now is announced again.
      await new Promise<void>((resolve) => {
        const poll = setInterval(async () => {
          heard.length = 0;
          await b.submitIntent(
            { id: `i${Date.now()}`, nest: "m@x", kind: "stop", agent: "w" },
            "x",
            { sub: "a@x" },
            2,
          );
          setTimeout(() => {
            if (heard.includes("m@x")) {
              clearInterval(poll);
              resolve();
            }
          }, 200);
        }, 300);
      });
    } finally {
      await a.close();
      await b.close();
    }
  });
});
