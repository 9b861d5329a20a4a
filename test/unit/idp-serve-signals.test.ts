import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { Capture, runInProcess } from "../helpers/fake-context.ts";

const dir = mkdtempSync(join(tmpdir(), "apes-serve-signal-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** stderr that delivers SIGTERM the moment the "listening" line appears, as an eager supervisor would. */
class TerminateOnListening extends Capture {
  override write(chunk: string) {
    super.write(chunk);
    if (chunk.includes('"msg":"listening"')) process.emit("SIGTERM", "SIGTERM");
    return true;
  }
}

it("idp serve shuts down gracefully on a SIGTERM sent right after its listening line", async () => {
  const before = process.listenerCount("SIGTERM");
  const r = await runInProcess(["idp", "serve", "--listen", "127.0.0.1:0", "--data", join(dir, "data")], {
    stderr: new TerminateOnListening(),
  });
  expect(r.code, r.stderr).toBe(0);
  const msgs = r.stderr
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { msg: string }).msg);
  expect(msgs.slice(-2)).toEqual(["shutting down", "stopped"]);
  expect(process.listenerCount("SIGTERM")).toBe(before);
});
