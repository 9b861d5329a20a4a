import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openBrowser } from "../../cli/auth/browser.ts";
import { fakeContext } from "../helpers/fake-context.ts";

const dir = mkdtempSync(join(tmpdir(), "apes-open-browser-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("openBrowser", () => {
  it("runs $BROWSER with the URL as its one argument, no shell; the URL is on stderr too", async () => {
    const out = join(dir, "args");
    const script = join(dir, "browser.sh");
    writeFileSync(script, `#!/bin/sh\nprintf '%s|' "$#" "$@" > '${out}'\n`);
    chmodSync(script, 0o755);
    const url = `http://127.0.0.1:1/authorize?state=a b;touch ${join(dir, "pwned")}&x=$(id)`;
    const ctx = fakeContext({ env: { BROWSER: script, PATH: "/usr/bin:/bin" } });
    openBrowser(ctx, url);
    await expect.poll(() => existsSync(out) && readFileSync(out, "utf8")).toBe(`1|${url}|`);
    expect(existsSync(join(dir, "pwned"))).toBe(false);
    expect(ctx.stderr.text).toContain(url);
  });

  it("without $BROWSER or xdg-open it only prints the URL", () => {
    const ctx = fakeContext({ env: { PATH: dir } });
    openBrowser(ctx, "http://127.0.0.1:1/authorize");
    expect(ctx.stderr.text).toContain("open this URL in a browser");
  });
});
