import { randomBytes } from "node:crypto";
import { beforeAll } from "vitest";
import { openPostgresStore } from "../../../idp/store/postgres/store.ts";
import { postgresTarget } from "../../../server/postgres.ts";
import { type PgServer, sharedPostgres } from "../../helpers/postgres.ts";
import { storeContract } from "./contract.ts";

/**
 * The PostgreSQL store against the contract, on a real server this file starts (test/helpers/
 * postgres.ts), a new database per case. As the server runs it: pooled, listening for the other
 * instances' changes, signing keys sealed with a key file's key; another process is another pool.
 */

let server: PgServer;
beforeAll(async () => {
  server = await sharedPostgres();
});

storeContract("postgres (pool, notifications, sealed keys)", async () => {
  const url = await server.createDatabase("contract");
  const sealKey = randomBytes(32);
  const open = () =>
    openPostgresStore({ target: postgresTarget(url), sealKey, listen: true, maxConnections: 4 });
  return { store: await open(), connect: open };
});
