import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { addUser, type IdpHandle, loginWithKey, newKey, runApes, startIdp } from "../helpers/idp.ts";

/** One server per data dir (two would keep separate caches and wake only their own waiters). */
describe("idp serve: one server per data dir", () => {
  let idp: IdpHandle | undefined;
  afterAll(async () => {
    await idp?.stop();
  });

  it("refuses a second server on the same data dir, naming the first one's pid (78)", async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), "apes-idp-lock-")), "data");
    idp = await startIdp({ dataDir });
    const second = await runApes(["idp", "serve", "--listen", "127.0.0.1:0", "--data", dataDir]);
    expect(second.code, second.stderr).toBe(78);
    expect(second.stderr).toContain(`another IdP server (pid ${idp.pid}) is already serving ${dataDir}`);
    expect(second.stderr).not.toMatch(/"msg":"listening"/);

    // The offline admin commands keep working while it runs, and the server sees their changes.
    const k = newKey();
    await addUser(dataDir, "late@example.com", { publicKey: k.publicLine });
    expect(await loginWithKey(idp.url, "late@example.com", k.privateKey)).toMatch(/^ey/);
    expect((await runApes(["idp", "users", "list", "--data", dataDir])).code).toBe(0);

    // The lock goes with the process, however it ends: after SIGKILL a new server starts.
    await idp.kill("SIGKILL");
    await idp.restart();
    expect(existsSync(join(dataDir, "server.lock-journal"))).toBe(false);
    const third = await runApes(["idp", "serve", "--listen", "127.0.0.1:0", "--data", dataDir]);
    expect(third.code).toBe(78);
    expect(third.stderr).toContain(`(pid ${idp.pid})`);
  });
});
