import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import type { Context } from "../context.ts";

/**
 * Opens a URL in the user's browser: `$BROWSER` (a program, given the URL as its one argument, no
 * shell), else `xdg-open` when it is on PATH. The URL is printed on stderr in any case, for a machine
 * without a browser or when the browser opens somewhere the user is not looking. It carries no secret
 * (state, nonce and the PKCE challenge are not secrets; the verifier never leaves this process).
 */
export function openBrowser(ctx: Context, url: string): void {
  ctx.io.stderr.write(`apes: open this URL in a browser to log in:\n  ${url}\n`);
  const program = ctx.env.BROWSER?.trim() || onPath(ctx, "xdg-open");
  if (!program) return;
  try {
    const child = spawn(program, [url], { stdio: "ignore", detached: true, env: { ...ctx.env } });
    child.on("error", (e) => ctx.debug(`login: cannot start ${program}: ${e.message}`));
    child.unref();
  } catch (e) {
    ctx.debug(`login: cannot start ${program}: ${(e as Error).message}`);
  }
}

function onPath(ctx: Context, name: string): string | undefined {
  for (const dir of (ctx.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}
