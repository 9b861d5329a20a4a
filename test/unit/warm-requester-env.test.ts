import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

/**
 * The shim's child picks the caller's warm requester by a digest of the environment variables the
 * requester reads (native/warm.c WARM_ENV, every APES_* besides): a variable it reads that is not
 * on the list would let a warm requester started with one value serve an elevation made with
 * another. So every variable name the requester's sources read must be on it.
 */

const REPO = join(import.meta.dirname, "..", "..");

function warmEnv(): string[] {
  const c = readFileSync(join(REPO, "native", "warm.c"), "utf8");
  const block = /const char \*const WARM_ENV\[\] = \{([\s\S]*?)\};/.exec(c)?.[1];
  if (!block) throw new Error("WARM_ENV not found in native/warm.c");
  return [...block.matchAll(/"([^"]+)"/g)].map((m) => m[1]!);
}

/** The requester's sources: what the helpers' bundle is built from for `__request`. */
function requesterSources(): string[] {
  const dirs = ["cli/elevation", "cli/grants", "client", "protocol"];
  const files = ["cli/context.ts", "cli/config.ts", "cli/paths.ts", "cli/errors.ts", "cli/entry.ts"];
  for (const d of dirs)
    for (const f of readdirSync(join(REPO, d))) if (f.endsWith(".ts")) files.push(join(d, f));
  return files;
}

function envReads(text: string): string[] {
  const names = new Set<string>();
  for (const m of text.matchAll(/\benv(?:\?\.|\.)([A-Z][A-Z0-9_]*)\b/g)) names.add(m[1]!);
  for (const m of text.matchAll(/\benv\[\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\]/g)) names.add(m[1]!);
  // Names looked up through a variable (cli/paths.ts: env[name] over "XDG_..." literals).
  if (/\benv\[\s*[a-z]\w*\s*\]/.test(text))
    for (const m of text.matchAll(/"(XDG_[A-Z_]+)"/g)) names.add(m[1]!);
  return [...names];
}

describe("the warm requester's environment digest", () => {
  it("covers every variable the requester reads", () => {
    const listed = new Set(warmEnv());
    const missing: string[] = [];
    for (const f of requesterSources()) {
      for (const name of envReads(readFileSync(join(REPO, f), "utf8"))) {
        if (!name.startsWith("APES_") && !listed.has(name)) missing.push(`${f}: ${name}`);
      }
    }
    expect(missing).toEqual([]);
    // The scan finds what it should: HOME, the XDG directories and NO_COLOR are read.
    const all = requesterSources().flatMap((f) => envReads(readFileSync(join(REPO, f), "utf8")));
    expect(all).toEqual(expect.arrayContaining(["HOME", "XDG_CONFIG_HOME", "NO_COLOR", "APES_CA_FILE"]));
  });

  it("the scan sees the ways a variable is read", () => {
    expect(envReads('ctx.env.FOO_BAR; env["BAZ"]; env?.QUX')).toEqual(["FOO_BAR", "QUX", "BAZ"]);
    expect(envReads('for (const name of ["XDG_A_HOME"]) env[name];')).toEqual(["XDG_A_HOME"]);
  });
});
