import { type Command, Help } from "commander";
import { describe, expect, it } from "vitest";
import { commandWords, stubTerms, TOP_LEVEL } from "../../cli/commands/index.ts";
import { buildProgram } from "../../cli/program.ts";
import { runInProcess } from "../helpers/fake-context.ts";

// A run registers only the top-level command its argv names; the others are stubs for the help
// listing. The stubs must say exactly what the real commands say (cli/commands/index.ts).

const hidden = (c: Command) => (c as unknown as { _hidden?: boolean })._hidden === true;
const quiet = { io: { stdout: { write: () => true }, stderr: { write: () => true }, stdin: process.stdin } };

describe("lazy command registration", () => {
  it("every stub has its real command's name, usage term, description and visibility", async () => {
    const { program } = await buildProgram(quiet);
    const help = new Help();
    const real = program.commands.map((c) => ({
      name: c.name(),
      term: help.subcommandTerm(c),
      description: c.description(),
      hidden: hidden(c),
    }));
    const stubs = TOP_LEVEL.map((c) => ({
      name: c.name,
      term: c.term,
      description: c.description,
      hidden: c.hidden === true,
    }));
    const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : 1);
    expect(stubs.sort(byName)).toEqual(real.sort(byName));
    expect(real.length).toBeGreaterThan(15);
  });

  it("`apes --help` with stubs only prints what the whole tree prints", async () => {
    const full = (await buildProgram(quiet)).program.helpInformation();
    const lazy = await buildProgram(quiet, ["--help"]);
    expect(lazy.program.commands.every((c) => stubTerms.has(c))).toBe(true);
    expect(lazy.program.helpInformation()).toBe(full);
    const r = await runInProcess(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith(full)).toBe(true);
    expect(r.stdout).toContain("Examples:\n  $ apes login alice@example.com");
    // `apes help` with no topic prints the same, examples included.
    expect((await runInProcess(["help"])).stdout).toBe(r.stdout);
  });

  it("loads only the command the argv runs (and the one `apes help` asks about)", async () => {
    const loaded = async (argv: string[]) =>
      (await buildProgram(quiet, argv)).program.commands
        .filter((c) => !stubTerms.has(c))
        .map((c) => c.name())
        .sort();
    expect(await loaded(["grants", "list", "--json"])).toEqual(["grants"]);
    expect(await loaded(["--json", "whoami"])).toEqual(["whoami"]);
    expect(await loaded(["help", "grants", "request"])).toEqual(["grants", "help"]);
    expect(await loaded(["run", "--reason", "x", "--", "ls"])).toEqual(["run"]);
    expect(await loaded(["--help"])).toEqual([]);
    expect(await loaded(["nonsense"])).toEqual([]);
    // A loaded group has its verbs; a stub has none, and no options.
    const { program } = await buildProgram(quiet, ["grants", "list"]);
    expect(program.commands.find((c) => c.name() === "grants")!.commands.length).toBeGreaterThan(5);
    const login = program.commands.find((c) => c.name() === "login")!;
    expect(login.options).toEqual([]);
  });

  it("commandWords: the first word that is not a global flag, and help's topic", () => {
    expect([...commandWords(["--json", "--debug", "grants", "list"])]).toEqual(["grants"]);
    expect([...commandWords(["help", "--json", "grants", "request"])]).toEqual(["help", "grants"]);
    expect([...commandWords(["-V"])]).toEqual([]);
    expect([...commandWords([])]).toEqual([]);
    // An unknown option first: commander reports it; nothing to load.
    expect([...commandWords(["--bogus", "grants"])]).toEqual([]);
  });

  it("an unknown command still gets commander's suggestion from the stubs", async () => {
    const r = await runInProcess(["grant", "list"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("(Did you mean grants?)");
  });
});
