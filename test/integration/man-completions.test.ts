/**
 * Man pages and shell completions (scripts/gen-docs.ts), regenerated from the command definitions:
 * every visible command and option appears in its man page and in the bash, fish and zsh
 * completions; the pages render with man-db/groff without a single warning; the bash completion
 * answers real `apes gr<TAB>` questions through the COMP_WORDS protocol in a real bash, the fish one
 * through `complete -C` in a real fish, and the zsh one parses (`zsh -n`) and lists the same words.
 * apes-config(5) describes every key the two config parsers accept. Needs man-db, bash, fish, zsh.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Command } from "commander";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildProgram } from "../../cli/program.ts";
import { generate } from "../../scripts/gen-docs.ts";
import { parsePolicy } from "../../verifier/policy.ts";

const REPO = join(import.meta.dirname, "..", "..");

interface Expected {
  path: string[];
  options: string[];
  subcommands: string[];
}

/** The visible tree, read straight from commander (not through the generator's own walk). */
function expectedTree(program: Command): Expected[] {
  const out: Expected[] = [];
  const hidden = (c: Command) => (c as unknown as { _hidden: boolean })._hidden;
  const walk = (cmd: Command, path: string[]) => {
    const subs = cmd.commands.filter((c) => !hidden(c));
    out.push({
      path,
      options: [...cmd.options.filter((o) => !o.hidden).map((o) => o.long!), "--help"],
      subcommands: subs.map((c) => c.name()),
    });
    for (const sub of subs) walk(sub, [...path, sub.name()]);
  };
  walk(program, []);
  return out;
}

let dir: string;
let tree: Expected[];

let full: Command;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "apes-docs-"));
  await generate(dir, { SOURCE_DATE_EPOCH: "1767225600" });
  full = (await buildProgram()).program;
  tree = expectedTree(full);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** man-db as lintian runs it: every groff warning on stderr. */
function renderMan(page: string): { text: string; warnings: string } {
  const r = spawnSync("man", ["--warnings", "-E", "UTF-8", "-l", page], {
    env: { PATH: "/usr/bin:/bin", LC_ALL: "C.UTF-8", MANWIDTH: "250", MAN_KEEP_FORMATTING: "" },
    encoding: "utf8",
  });
  expect(r.status, r.stderr).toBe(0);
  return { text: r.stdout, warnings: r.stderr };
}

describe("man pages", () => {
  it("has every command's usage and every option in the page of its top-level command", () => {
    expect(tree.length).toBeGreaterThan(20);
    for (const cmd of tree) {
      const page = cmd.path.length === 0 ? "apes.1" : `apes-${cmd.path[0]}.1`;
      const { text } = renderMan(join(dir, "man", page));
      expect(text, page).toContain(`apes ${cmd.path.join(" ")}`.trim());
      for (const option of cmd.options)
        expect(text, `${page}: ${cmd.path.join(" ")} ${option}`).toContain(option);
    }
    const main = renderMan(join(dir, "man", "apes.1")).text;
    for (const top of tree[0]!.subcommands) expect(main).toContain(`apes-${top}(1)`);
    expect(main).toMatch(/EXIT STATUS[\s\S]*\b78\b/);
  });

  it("leaves out the shim's hidden helpers", () => {
    const all = execFileSync("cat", [join(dir, "man", "apes.1"), join(dir, "completions", "apes.bash")], {
      encoding: "utf8",
    });
    expect(all).not.toMatch(/__request|__verify/);
  });

  it("render with man-db and groff without warnings (and a broken page does warn)", () => {
    const pages = readdirMan();
    expect(pages).toContain("apes-config.5");
    expect(pages).toContain("apes-grants.1");
    for (const page of pages) expect(renderMan(join(dir, "man", page)).warnings, page).toBe("");
    const broken = join(dir, "broken.1");
    writeFileSync(broken, '.TH BROKEN 1\n.SH NAME\nbroken \\- x\n.NOSUCHMACRO\n\\*(zz "\n');
    expect(renderMan(broken).warnings).toMatch(/warning/);
  });

  it("apes-config(5) describes every key of the policy and of the user configuration", () => {
    const text = renderMan(join(dir, "man", "apes-config.5")).text;
    // The policy parser names its keys when it refuses an unknown one.
    let known = "";
    try {
      parsePolicy("no_such_key = 1\n", "p", { hostname: "h" });
    } catch (e) {
      known = /\(known: ([^)]*)\)/.exec((e as Error).message)?.[1] ?? "";
    }
    const policyKeys = known.split(", ");
    expect(policyKeys).toContain("issuers");
    // The user configuration parser's keys: its `case "key":` and `k === "key"` branches.
    const source = readFileSync(join(REPO, "cli/config.ts"), "utf8");
    const userKeys = [...source.matchAll(/case "([a-z_]+)":|k === "([a-z_]+)"/g)].map((m) => m[1] ?? m[2]!);
    expect(userKeys).toEqual(expect.arrayContaining(["idp", "dns", "servers", "timeout", "ca_file"]));
    for (const key of [...policyKeys, ...userKeys])
      expect(text, key).toMatch(new RegExp(`^ +\\[?${key}\\]?(\\s|$)`, "m"));
  });
});

function readdirMan(): string[] {
  return execFileSync("ls", [join(dir, "man")], { encoding: "utf8" })
    .trim()
    .split("\n");
}

/** Asks the bash completion for each word list (the last word is the one being completed). */
function bashComplete(queries: string[][]): string[][] {
  const script = [
    `source ${JSON.stringify(join(dir, "completions", "apes.bash"))}`,
    "complete -p apes",
    ...queries.map((words) => {
      const quoted = words.map((w) => `'${w}'`).join(" ");
      return `COMP_WORDS=(${quoted}); COMP_CWORD=${words.length - 1}; _apes; echo "\${COMPREPLY[*]}"`;
    }),
  ].join("\n");
  const out = execFileSync("bash", ["--norc", "--noprofile", "-c", script], {
    cwd: dir,
    encoding: "utf8",
    env: { PATH: "/usr/bin:/bin" },
  }).split("\n");
  expect(out[0]).toBe("complete -o default -F _apes apes");
  return out.slice(1, 1 + queries.length).map((l) => l.split(" ").filter(Boolean));
}

/** Asks the fish completion through `complete -C` (words only, descriptions dropped). */
function fishComplete(lines: string[]): string[][] {
  const script = [
    `source ${JSON.stringify(join(dir, "completions", "apes.fish"))}`,
    ...lines.map(
      (l) => `complete -C ${JSON.stringify(l)} | string replace -r '\\t.*' '' | string join ' '; echo`,
    ),
  ].join("\n");
  const out = execFileSync("fish", ["--no-config", "-c", script], {
    encoding: "utf8",
    env: { PATH: "/usr/bin:/bin", HOME: dir },
  });
  return out
    .split("\n")
    .filter((_l, i, a) => i < a.length - 1)
    .filter((_l, i) => i % 2 === 0)
    .map((l) => l.split(" ").filter(Boolean));
}

describe("bash completion", () => {
  it("completes a prefix of a command in a real bash", () => {
    expect(bashComplete([["apes", "gr"]])).toEqual([["grants"]]);
    expect(bashComplete([["apes", "idp", "us"]])).toEqual([["users"]]);
  });

  it("offers every subcommand and every option of every command", () => {
    const answers = bashComplete(
      tree.flatMap((c) => [
        ["apes", ...c.path, ""],
        ["apes", ...c.path, "--"],
      ]),
    );
    tree.forEach((cmd, i) => {
      expect(answers[2 * i]!.sort(), cmd.path.join(" ")).toEqual([...cmd.subcommands].sort());
      expect(answers[2 * i + 1], cmd.path.join(" ")).toEqual(expect.arrayContaining(cmd.options));
    });
  });

  it("skips option values, completes choices, and completes the command to run after --", () => {
    const [value, afterValue, choices, command] = bashComplete([
      ["apes", "login", "--key", "comp"],
      ["apes", "grants", "list", "--requester", "x", "--st"],
      ["apes", "grants", "list", "--status", "ap"],
      ["apes", "--reason", "deploy", "--", "systemct"],
    ]);
    expect(value).toEqual(["completions"]); // a file name (the shell runs in the output directory)
    expect(afterValue).toEqual(["--status"]);
    expect(choices).toEqual(["approved"]);
    expect(command).toContain("systemctl");
  });
});

describe("fish completion", () => {
  it("parses, and offers every subcommand and every option of every command", () => {
    execFileSync("fish", ["--no-execute", join(dir, "completions", "apes.fish")]);
    const answers = fishComplete(
      tree.flatMap((c) => [["apes", ...c.path, ""].join(" "), ["apes", ...c.path, "--"].join(" ")]),
    );
    tree.forEach((cmd, i) => {
      // A command without subcommands offers files for its arguments (fish's default).
      if (cmd.subcommands.length > 0)
        expect(answers[2 * i]!.sort(), cmd.path.join(" ")).toEqual([...cmd.subcommands].sort());
      expect(answers[2 * i + 1], cmd.path.join(" ")).toEqual(expect.arrayContaining(cmd.options));
    });
    expect(fishComplete(["apes gr", "apes grants list --status ap"])).toEqual([["grants"], ["approved"]]);
  });
});

describe("zsh completion", () => {
  it("parses, and lists every subcommand and option of every command", () => {
    const file = join(dir, "completions", "_apes");
    execFileSync("zsh", ["-n", file]);
    expect(readFileSync(file, "utf8").split("\n")[0]).toBe("#compdef apes");
    // The data functions, outside the completion system (the final `_apes "$@"` call fails there).
    const script = [
      `source ${JSON.stringify(file)} 2>/dev/null`,
      ...tree.flatMap((c) => [
        `_apes_subcommands '${c.path.join(" ")}'; print -r -- \${reply%%:*}`,
        `_apes_options '${c.path.join(" ")}'; print -r -- \${reply%%:*}`,
      ]),
    ].join("\n");
    const out = execFileSync("zsh", ["-f", "-c", script], { encoding: "utf8" }).split("\n");
    tree.forEach((cmd, i) => {
      expect(out[2 * i]!.split(" ").filter(Boolean).sort(), cmd.path.join(" ")).toEqual(
        [...cmd.subcommands].sort(),
      );
      expect(out[2 * i + 1]!.split(" "), cmd.path.join(" ")).toEqual(expect.arrayContaining(cmd.options));
    });
  });

  it("walks the words as compsys hands them over: options, option values, choices, the command after --", () => {
    // The completion system's functions stand in as printers; _apes decides what to offer.
    const script = [
      `source ${JSON.stringify(join(dir, "completions", "_apes"))} 2>/dev/null`,
      `_describe() { print -r -- \${(P)4%%:*} }`,
      `compadd() { print -r -- choices: \${(P)2} }`,
      "_files() { print -r -- files }",
      '_normal() { print -r -- "normal $CURRENT $words" }',
      'ask() { words=("$@"); CURRENT=$#words; PREFIX=$words[-1]; _apes }',
      "ask apes gr",
      "ask apes --json grants ''",
      "ask apes grants list --requester x --st",
      "ask apes grants list --status ap",
      "ask apes login --key ''",
      "ask apes --reason x -- systemctl rest",
    ].join("\n");
    const out = execFileSync("zsh", ["-f", "-c", script], { encoding: "utf8" }).trimEnd().split("\n");
    expect(out[0]!.split(" ")).toContain("grants");
    // Exactly the grants subcommands the tree has (hidden ones left out), in its order.
    const grants = full.commands.find((c) => c.name() === "grants")!;
    expect(out[1]).toBe(
      grants.commands
        .filter((c) => !(c as unknown as { _hidden?: boolean })._hidden)
        .map((c) => c.name())
        .sort()
        .join(" "),
    );
    expect(out[1]).toContain("approve deny");
    expect(out[2]!.split(" ")).toContain("--status"); // past --requester's value: options again
    expect(out.slice(3)).toEqual([
      "choices: pending approved denied revoked expired used",
      "files",
      "normal 2 systemctl rest",
    ]);
  });
});
