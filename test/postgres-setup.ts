import { postgresAvailable, startPostgres } from "./helpers/postgres.ts";

/**
 * One PostgreSQL server for the whole test run (test/helpers/postgres.ts), started before the
 * workers and stopped after them: a server started inside a worker would outlive it (pg_ctl
 * detaches it, and vitest ends workers without their exit handlers). Workers find it through
 * APES_TEST_PG_PORT (sharedPostgres()); each test makes its own databases on it.
 */
export default async function setup(): Promise<(() => void) | undefined> {
  if (!postgresAvailable()) return undefined;
  const server = await startPostgres();
  process.env.APES_TEST_PG_PORT = String(server.port);
  return () => server.stop();
}
