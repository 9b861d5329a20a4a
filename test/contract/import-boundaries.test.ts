import { readdirSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

/**
 * The folders' imports point one way (ARCHITECTURE: protocol/ at the bottom, cli/ at the top): a
 * static `import`/`export ... from` or a dynamic `import()` of a relative path may only reach the
 * folders listed for its own folder. Folders that do not exist yet are listed so that they start
 * out right.
 */

const REPO = join(import.meta.dirname, "..", "..");

const ALLOWED: Record<string, readonly string[]> = {
  protocol: ["protocol"],
  client: ["client", "protocol"],
  verifier: ["verifier", "protocol"],
  server: ["server", "protocol"],
  idp: ["idp", "server", "protocol"],
  control: ["control", "sp", "server", "protocol"],
  sp: ["sp", "server", "protocol"], // DDISA login for any web service (the troop's pages, examples/sp)
  nest: ["nest", "client", "protocol"],
  cli: ["cli", "client", "protocol", "verifier", "server", "idp", "control", "nest", "sp"],
  examples: ["examples", "client", "sp", "protocol"], // what a service outside apes would import
};

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...tsFiles(path));
    else if (name.endsWith(".ts")) out.push(path);
  }
  return out;
}

const SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)"(\.{1,2}\/[^"]+)"/gm;

/** What belongs to the CLI, not to client/: exit statuses, hints, `apes ...` commands to run. */
const CLI_TERMS = /\bexitCode\b|\bExitCode\b|\bhint\s*:|`apes |\\`apes /;

/** Package specifiers (not relative): `from "x"`, `import("x")`, `import "x"`. */
const BARE = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)"([^".][^"]*)"/gm;

function topFolder(path: string): string {
  return relative(REPO, path).split("/")[0]!;
}

/**
 * Command files hold one command each; what two commands share lives outside cli/commands/ (cli/grants/,
 * cli/trust/, cli/elevation/ ...). A registry (cli/commands/index.ts, a folder's group.ts) imports the
 * commands it registers; a command imports at most its own folder's group.ts or common.ts.
 */
function commandImportViolations(files: { file: string; text: string }[]): string[] {
  const commands = join(REPO, "cli", "commands");
  const violations: string[] = [];
  for (const { file, text } of files) {
    const name = basename(file);
    if (file === join(commands, "index.ts") || name === "group.ts") continue;
    for (const m of text.matchAll(SPECIFIER)) {
      const target = resolve(dirname(file), m[1]!);
      if (!target.startsWith(`${commands}/`)) continue;
      const shared =
        dirname(target) === dirname(file) && ["group.ts", "common.ts"].includes(basename(target));
      if (!shared) violations.push(`${relative(REPO, file)} -> ${m[1]}`);
    }
  }
  return violations;
}

describe("import boundaries", () => {
  it("every folder imports only the folders below it", () => {
    const violations: string[] = [];
    let checked = 0;
    for (const folder of Object.keys(ALLOWED)) {
      let files: string[];
      try {
        files = tsFiles(join(REPO, folder));
      } catch {
        continue; // not there yet
      }
      for (const file of files) {
        for (const m of readFileSync(file, "utf8").matchAll(SPECIFIER)) {
          checked++;
          const target = topFolder(resolve(dirname(file), m[1]!));
          if (!ALLOWED[folder]!.includes(target)) violations.push(`${relative(REPO, file)} -> ${m[1]}`);
        }
      }
    }
    expect(checked).toBeGreaterThan(200);
    expect(violations).toEqual([]);
  });

  it("client/ imports only protocol/ and node: built-ins, and nest/ only client/ and protocol/ of ours", () => {
    // client/ is what the Nest (and a service outside apes) loads: no CLI, no server, no npm package.
    const clientFiles = tsFiles(join(REPO, "client"));
    expect(clientFiles.length).toBeGreaterThan(5);
    const bad: string[] = [];
    for (const file of clientFiles) {
      const text = readFileSync(file, "utf8");
      for (const m of text.matchAll(SPECIFIER)) {
        const target = topFolder(resolve(dirname(file), m[1]!));
        if (target !== "client" && target !== "protocol") bad.push(`${relative(REPO, file)} -> ${m[1]}`);
      }
      for (const m of text.matchAll(BARE)) {
        if (!m[1]!.startsWith("node:")) bad.push(`${relative(REPO, file)} -> ${m[1]}`);
      }
    }
    expect(bad).toEqual([]);
    expect(ALLOWED.client).toEqual(["client", "protocol"]);
    expect(ALLOWED.nest).toEqual(["nest", "client", "protocol"]);
  });

  it("client/'s code names no exit status and no shell command (the CLI adds those: cli/errors.ts)", () => {
    const bad: string[] = [];
    for (const file of tsFiles(join(REPO, "client"))) {
      readFileSync(file, "utf8")
        .split("\n")
        .forEach((line, i) => {
          if (/^\s*(\*|\/\/|\/\*)/.test(line)) return; // comments may say which command uses what
          if (CLI_TERMS.test(line)) bad.push(`${relative(REPO, file)}:${i + 1}: ${line.trim()}`);
        });
    }
    expect(bad).toEqual([]);
    expect(CLI_TERMS.test("hint: `run \\`apes login\\``")).toBe(true);
    expect(CLI_TERMS.test("exitCode: 77")).toBe(true);
    expect(CLI_TERMS.test("`another apes process holds the lock`")).toBe(false);
  });

  it("catches client/ importing the CLI or an npm package (the rule is not vacuous)", () => {
    const sample = 'import { x } from "../cli/errors.ts";\nimport { Command } from "commander";';
    const relativeTargets = [...sample.matchAll(SPECIFIER)].map((m) =>
      topFolder(resolve(join(REPO, "client"), m[1]!)),
    );
    expect(relativeTargets).toEqual(["cli"]);
    expect([...sample.matchAll(BARE)].map((m) => m[1])).toEqual(["commander"]);
  });

  it("a command file imports no other command file (only its folder's group.ts or common.ts)", () => {
    const commands = join(REPO, "cli", "commands");
    const violations = commandImportViolations(
      tsFiles(commands).map((file) => ({ file, text: readFileSync(file, "utf8") })),
    );
    expect(violations).toEqual([]);
  });

  it("catches a command importing a sibling command (the rule is not vacuous)", () => {
    const file = join(REPO, "cli", "commands", "grants", "request.ts");
    const text =
      'import { x } from "./wait.ts";\nconst c = await import("./common.ts");\nimport "../../grants/wait.ts";';
    expect(commandImportViolations([{ file, text }])).toEqual([
      "cli/commands/grants/request.ts -> ./wait.ts",
    ]);
  });

  it("catches a forbidden import (the check is not vacuous)", () => {
    const sample = 'import { x } from "../cli/output.ts";\nconst y = await import("../idp/grants.ts");';
    const found = [...sample.matchAll(SPECIFIER)].map((m) =>
      topFolder(resolve(join(REPO, "protocol"), m[1]!)),
    );
    expect(found).toEqual(["cli", "idp"]);
    expect(found.every((t) => ALLOWED.protocol!.includes(t))).toBe(false);
  });
});
