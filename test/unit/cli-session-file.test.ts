import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { CliError } from "../../cli/errors.ts";
import { ExitCode } from "../../cli/exit-codes.ts";
import { authFile, readSession, type StoredSession, sessionFileRefusal } from "../../client/session-store.ts";
import { asCli } from "../helpers/cli-error.ts";
import { fakeContext, runInProcess } from "../helpers/fake-context.ts";

// auth.json holds a bearer token: apes uses it only when it is a regular file of the user's, private.

const SESSION: StoredSession = {
  version: 1,
  idp: "https://id.example.test",
  email: "bot@example.test",
  act: "agent",
  token: "x.y.z",
  expires_at: 4_000_000_000,
};

let home: string;
let file: string;
beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "apes-authfile-"));
  file = authFile(fakeContext({ home }));
  mkdirSync(join(home, ".config/apes"), { recursive: true, mode: 0o700 });
});
afterEach(() => rmSync(home, { recursive: true, force: true }));

const write = (path: string, mode = 0o600) => {
  writeFileSync(path, JSON.stringify(SESSION), { mode });
  chmodSync(path, mode);
};

async function refusal(): Promise<CliError> {
  const e = await readSession(fakeContext({ home })).then(
    () => undefined,
    (x: unknown) => x,
  );
  const c = asCli(e);
  expect(c.exitCode).toBe(ExitCode.CONFIG);
  return c;
}

describe("auth.json must be a private regular file of the user", () => {
  it("a 0600 file is read", async () => {
    write(file);
    expect((await readSession(fakeContext({ home })))?.email).toBe("bot@example.test");
  });

  it.each([
    ["0644", 0o644],
    ["0666", 0o666],
    ["0640", 0o640],
    ["0604", 0o604],
    ["0620", 0o620],
  ])("mode %s is refused with the chmod that fixes it", async (_name, mode) => {
    write(file, mode);
    const e = await refusal();
    expect(e.message).toBe(
      `${file} is accessible by others (mode ${mode.toString(8).padStart(4, "0")}): its token may have been read or replaced`,
    );
    expect(e.hint).toContain(`\`chmod 600 ${file}\``);
  });

  it("a FIFO is refused without blocking on it", async () => {
    execFileSync("mkfifo", ["-m", "600", file]);
    const e = await refusal();
    expect(e.message).toBe(`${file} is not a regular file`);
  });

  it("a symbolic link is refused, even to a good session file", async () => {
    const target = join(home, "elsewhere.json");
    write(target);
    symlinkSync(target, file);
    expect((await refusal()).message).toBe(`${file} is a symbolic link`);
  });

  it("a directory is refused as such", async () => {
    mkdirSync(file);
    expect((await refusal()).message).toBe(`${file} is a directory`);
  });

  it("a file owned by someone else is refused", async () => {
    if (process.getuid?.() !== 0) return; // chown needs root; the suite runs as root
    write(file);
    chownSync(file, 65534, 65534);
    expect((await refusal()).message).toBe(`${file} belongs to uid 65534, not to you (uid 0)`);
  });

  it("a file larger than any session is refused", async () => {
    writeFileSync(file, `{"pad":"${"x".repeat(70 * 1024)}"}`, { mode: 0o600 });
    expect((await refusal()).message).toBe(`${file} is broken: larger than 64 KiB`);
  });

  it("`apes whoami` exits 78 with the fix", async () => {
    write(file, 0o644);
    const r = await runInProcess(["whoami"], { home });
    expect(r.code).toBe(ExitCode.CONFIG);
    expect(r.stderr).toContain("accessible by others (mode 0644)");
    expect(r.stderr).toContain(`chmod 600 ${file}`);
  });

  it("sessionFileRefusal is a pure decision on the file's facts", () => {
    const facts = (
      over: Partial<{ file: boolean; link: boolean; dir: boolean; mode: number; uid: number }>,
    ) => {
      const f = { file: true, link: false, dir: false, mode: 0o100600, uid: 1000, ...over };
      return {
        isFile: () => f.file,
        isSymbolicLink: () => f.link,
        isDirectory: () => f.dir,
        mode: f.mode,
        uid: f.uid,
      };
    };
    expect(sessionFileRefusal("/a", facts({}), 1000)).toBeUndefined();
    expect(sessionFileRefusal("/a", facts({ mode: 0o100400 }), 1000)).toBeUndefined();
    expect(sessionFileRefusal("/a", facts({ uid: 0 }), 1000)?.problem).toMatch(/belongs to uid 0/);
    expect(sessionFileRefusal("/a", facts({ mode: 0o100601 }), 1000)?.problem).toMatch(/mode 0601/);
    expect(sessionFileRefusal("/a", facts({ file: false, link: true }), 1000)?.problem).toMatch(/symbolic/);
  });
});
