import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * A fresh clone stands on its own: `git clone` of this working copy into an empty temp dir (nothing
 * beside it), then no file reaches outside the tree, every repository path a comment or document
 * names exists, and the schemas load from inside the clone.
 */

const REPO = join(import.meta.dirname, "..", "..");
let parent: string;
let clone: string;
let files: string[];

beforeAll(() => {
  parent = mkdtempSync(join(tmpdir(), "apes-clone-"));
  clone = join(parent, "apes");
  execFileSync("git", ["clone", "-q", "--no-hardlinks", REPO, clone], { stdio: "pipe" });
  files = execFileSync("git", ["ls-files", "-z"], { cwd: clone, encoding: "utf8" })
    .split("\0")
    .filter((f) => f !== "" && f !== "package-lock.json" && !/\.(png|jpe?g|gz)$/.test(f));
}, 60_000);

afterAll(() => {
  if (parent) rmSync(parent, { recursive: true, force: true });
});

const text = (f: string) => readFileSync(join(clone, f), "utf8");

describe("a fresh clone", () => {
  it("names no path outside the repository", () => {
    // Built from parts so that this file does not match itself.
    const outside = [
      new RegExp(["\\.\\.", "shared"].join("/")),
      new RegExp(`"\\.\\.",\\s*"\\.\\.",\\s*"${"shared"}"`),
      new RegExp(["", "work", ""].join("/")),
      new RegExp(["", "Users", ""].join("/")),
    ];
    const found: string[] = [];
    // .ci/run alone may look beside the clone: it points the optional external schema check there.
    for (const f of files.filter((name) => name !== ".ci/run")) {
      const lines = text(f).split("\n");
      lines.forEach((line, i) => {
        for (const re of outside)
          if (re.test(line)) found.push(`${f}:${i + 1}: ${line.trim().slice(0, 120)}`);
      });
    }
    expect(found).toEqual([]);
  });

  it("has every repository path and document that a comment or document names", () => {
    const top =
      "cli|idp|helper|protocol|native|docs|scripts|test|bench|packaging|examples|verifier|server|client|control|nest";
    const pathRef = new RegExp(
      `(?<![\\w./@-])(?:${top})/[A-Za-z0-9_./-]+\\.(?:ts|mjs|cjs|c|h|md|json|sh|toml|service|in)\\b`,
      "g",
    );
    const mdLink = /\]\(([A-Za-z0-9_./-]+\.md)(?:#[\w-]*)?\)/g;
    const mdName = /(?<![\w./-])([A-Z][A-Z0-9_-]+\.md)\b/g;
    const names = new Set(files.map((f) => basename(f)));
    const missing: string[] = [];
    for (const f of files) {
      const t = text(f);
      for (const m of t.matchAll(pathRef)) if (!existsSync(join(clone, m[0]))) missing.push(`${f}: ${m[0]}`);
      if (f.endsWith(".md")) {
        for (const m of t.matchAll(mdLink)) {
          if (!existsSync(join(clone, dirname(f), m[1]!))) missing.push(`${f}: link ${m[1]}`);
        }
      }
      for (const m of t.matchAll(mdName)) if (!names.has(m[1]!)) missing.push(`${f}: ${m[1]}`);
    }
    expect(missing).toEqual([]);
  });

  it("loads its JSON Schemas from inside the clone, with nothing beside it", () => {
    expect(existsSync(join(parent, "shared"))).toBe(false);
    symlinkSync(join(REPO, "node_modules"), join(clone, "node_modules"));
    const script = [
      'import { loadSchemas, OWN_SCHEMAS_DIR } from "./protocol/schemas.ts";',
      "const s = loadSchemas();",
      "process.stdout.write(JSON.stringify({ dirs: s.dirs, own: OWN_SCHEMAS_DIR, grant: s.has('grant') }));",
    ].join("\n");
    const env = { ...process.env };
    delete env.APES_SCHEMAS_DIR;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], {
      cwd: clone,
      env,
      encoding: "utf8",
    });
    const r = JSON.parse(out);
    expect(r.own).toBe(join(clone, "protocol", "schemas"));
    expect(r.dirs).toEqual([r.own]);
    expect(r.grant).toBe(true);
  });
});
