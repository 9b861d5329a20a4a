import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { apesBin } from "../helpers/idp.ts";
import { collect } from "../helpers/process.ts";

/**
 * Started with too few file descriptors, the IdP either refuses to start with a clear message
 * (exit 78) or serves (the checkpoint worker's failure is logged and checkpoints move to the main
 * thread): never an unhandled error. Below ~22 descriptors the Node runtime itself cannot start,
 * so the sweep begins there.
 */
describe("idp serve with a low open-files limit", () => {
  it("exits 78 with a clear message or serves, never crashes", async () => {
    const outcomes = new Set<string>();
    for (let round = 0; round < 3; round++) {
      for (const limit of [22, 24, 26, 28, 30, 34]) {
        const data = join(mkdtempSync(join(tmpdir(), "apes-idp-fd-")), "data");
        const child = spawn(
          "prlimit",
          [`--nofile=${limit}:${limit}`, "--", apesBin(), "idp", "serve", "--listen", "127.0.0.1:0"].concat([
            "--data",
            data,
          ]),
          { stdio: ["ignore", "ignore", "pipe"] },
        );
        let stderr = "";
        const listening = new Promise<string | undefined>((resolve) => {
          child.stderr!.setEncoding("utf8").on("data", (d: string) => {
            stderr += d;
            const m = /"msg":"listening","url":"([^"]+)"/.exec(stderr);
            if (m) resolve(m[1]);
          });
          child.once("exit", () => resolve(undefined));
        });
        const done = collect(child, { timeoutMs: 20_000 });
        const url = await listening;
        if (url) {
          const res = await fetch(`${url}/.well-known/openid-configuration`).catch((e: Error) => e);
          child.kill("SIGTERM");
          const r = await done;
          expect(r.signal, stderr).toBeNull();
          expect(stderr).not.toMatch(/Unhandled|node:internal|^\s+at /m);
          // Starved of descriptors, a connection may be dropped at accept; one that is served is answered.
          if (!(res instanceof Error)) expect(res.status).toBe(200);
          expect(r.code, stderr).toBe(0);
          outcomes.add("served");
        } else {
          const r = await done;
          expect(r.signal, stderr).toBeNull();
          expect(r.code, stderr).toBe(78);
          expect(stderr).toMatch(/cannot start the IdP: .*(file descriptors|unable to open)/);
          expect(stderr).toMatch(/ulimit -n/);
          expect(stderr).not.toMatch(/Unhandled|node:internal|^\s+at /m);
          outcomes.add("refused");
        }
      }
    }
    // The sweep covers both sides of the threshold.
    expect([...outcomes].sort()).toEqual(["refused", "served"]);
  }, 180_000);
});
