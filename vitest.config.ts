import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // Integration tests start real processes (IdP, dnsmasq, the built binary): give them time,
    // and keep parallelism modest on a 2-core machine.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    maxWorkers: 2,
    // One PostgreSQL server for the run (test/postgres-setup.ts).
    globalSetup: ["test/global-setup.ts", "test/postgres-setup.ts"],
    projects: [
      { extends: true, test: { name: "sqlite", include: ["test/**/*.test.ts"] } },
      // The IdP integration suites once more against the PostgreSQL store (test/helpers/idp.ts
      // startIdp reads APES_TEST_STORE), and approval-proof (it starts the IdP the same way). idp-lock is about the SQLite data dir's lock: nothing of
      // it applies. (include/exclude stay per project: extends would merge them with the root's.)
      {
        extends: true,
        test: {
          name: "postgres",
          include: ["test/integration/idp-*.test.ts", "test/integration/approval-proof.test.ts"],
          exclude: ["test/integration/idp-lock.test.ts"],
          env: { APES_TEST_STORE: "postgres" },
        },
      },
    ],
  },
});
