import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ROOT_HELP_ARGVS, rootHelp } from "../../cli/help-text.ts";
import { runInProcess } from "../helpers/fake-context.ts";

// The SEA loader prints rootHelp()'s text for `apes --help`, `-h` and `help` when stdout is not a
// terminal, without the program (scripts/sea-loader.cjs): it must be what the program prints there.
// test/integration/binary.test.ts checks the built binary against the program.

const COLOUR_ENV = ["NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE"] as const;

describe("the root help the loader prints", () => {
  // commander takes the help's width and colour from process.stdout and the environment: the
  // situation the loader serves is a stdout that is not a terminal, whatever runs the tests.
  let saved: { isTTY: PropertyDescriptor | undefined; env: Record<string, string | undefined> };
  beforeEach(() => {
    saved = {
      isTTY: Object.getOwnPropertyDescriptor(process.stdout, "isTTY"),
      env: Object.fromEntries(COLOUR_ENV.map((k) => [k, process.env[k]])),
    };
    Object.defineProperty(process.stdout, "isTTY", { value: false, configurable: true });
    for (const k of COLOUR_ENV) delete process.env[k];
  });
  afterEach(() => {
    if (saved.isTTY) Object.defineProperty(process.stdout, "isTTY", saved.isTTY);
    else delete (process.stdout as { isTTY?: boolean }).isTTY;
    for (const k of COLOUR_ENV) {
      if (saved.env[k] === undefined) delete process.env[k];
      else process.env[k] = saved.env[k];
    }
  });

  it("is what `apes --help`, `apes -h` and `apes help` print, exit 0", async () => {
    const text = await rootHelp();
    expect(text).toMatch(/^Usage: apes \[options\] \[command\]\n/);
    expect(text).toContain("Examples:\n  $ apes login alice@example.com");
    for (const argv of ROOT_HELP_ARGVS) {
      const r = await runInProcess([...argv]);
      expect(r.code, argv.join(" ")).toBe(0);
      expect(r.stdout, argv.join(" ")).toBe(text);
      expect(r.stderr).toBe("");
    }
  });

  it("is what the program prints under every colour setting", async () => {
    const text = await rootHelp();
    for (const [k, v] of [
      ["NO_COLOR", "1"],
      ["FORCE_COLOR", "1"],
      ["FORCE_COLOR", "3"],
      ["CLICOLOR_FORCE", "1"],
    ] as const) {
      process.env[k] = v;
      expect((await runInProcess(["--help"])).stdout, `${k}=${v}`).toBe(text);
      delete process.env[k];
    }
  });

  it("is made for a stdout that is not a terminal: a terminal of another width gets other text", async () => {
    const text = await rootHelp();
    Object.defineProperty(process.stdout, "isTTY", { value: true, configurable: true });
    const columns = Object.getOwnPropertyDescriptor(process.stdout, "columns");
    Object.defineProperty(process.stdout, "columns", { value: 120, configurable: true });
    try {
      const wide = (await runInProcess(["--help"])).stdout;
      expect(wide).not.toBe(text);
      expect(Math.max(...wide.split("\n").map((l) => l.length))).toBeGreaterThan(80);
      // rootHelp() renders for a stdout that is not a terminal even when the process's is one.
      expect(await rootHelp()).toBe(text);
    } finally {
      if (columns) Object.defineProperty(process.stdout, "columns", columns);
      else delete (process.stdout as { columns?: number }).columns;
    }
  });
});

describe("`apes help <command...>`", () => {
  it("prints what `apes <command...> --help` prints, examples included", async () => {
    for (const path of [["grants", "request"], ["dns"], ["help"]]) {
      const viaHelp = await runInProcess(["help", ...path]);
      const viaFlag = await runInProcess([...path, "--help"]);
      expect(viaHelp.code).toBe(0);
      expect(viaFlag.code).toBe(0);
      expect(viaHelp.stdout, path.join(" ")).toBe(viaFlag.stdout);
      expect(viaHelp.stdout).toContain("Examples:");
    }
  });
});
