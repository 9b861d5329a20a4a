import { chmodSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { asCli } from "../helpers/cli-error.ts";
import { fakeContext } from "../helpers/fake-context.ts";

/**
 * Another apes command replacing auth.json (write to a temp file, rename over it) between this
 * command's lstat and open is a newer session, not an attack: the read looks again instead of
 * failing with 78 (ten concurrent commands at expiry hit exactly this). The replacement happens
 * inside the open() the store makes, so the race is hit every time.
 */

const swaps = { left: 0, file: "" };
vi.mock("node:fs/promises", async (importOriginal) => {
  const real = await importOriginal<typeof import("node:fs/promises")>();
  const open: typeof real.open = async (path, ...rest) => {
    if (swaps.left > 0 && String(path) === swaps.file) {
      swaps.left--;
      const tmp = `${swaps.file}.new`;
      writeFileSync(tmp, JSON.stringify({ ...SESSION, email: `v${swaps.left}@example.test` }), {
        mode: 0o600,
      });
      chmodSync(tmp, 0o600);
      renameSync(tmp, swaps.file);
    }
    return real.open(path, ...rest);
  };
  return { ...real, open, default: { ...real, open } };
});

const { authFile, readSession } = await import("../../client/session-store.ts");

const SESSION = {
  version: 1,
  idp: "https://id.example.test",
  email: "bot@example.test",
  act: "agent",
  token: "x.y.z",
  expires_at: 4_000_000_000,
};

let home: string;
beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "apes-authfile-"));
  swaps.file = authFile(fakeContext({ home }));
  mkdirSync(join(home, ".config/apes"), { recursive: true, mode: 0o700 });
  writeFileSync(swaps.file, JSON.stringify(SESSION), { mode: 0o600 });
  chmodSync(swaps.file, 0o600);
});
afterEach(() => rmSync(home, { recursive: true, force: true }));

describe("auth.json replaced while being read", () => {
  it("is read again and gives the newer session", async () => {
    swaps.left = 1;
    expect((await readSession(fakeContext({ home })))?.email).toBe("v0@example.test");
  });

  it("still fails (78) when it keeps changing under every read", async () => {
    swaps.left = 100;
    const e = await readSession(fakeContext({ home })).catch((x: unknown) => x);
    expect(e).toMatchObject({ failure: "session_unreadable" });
    expect(asCli(e).exitCode).toBe(78);
  });
});
