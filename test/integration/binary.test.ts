import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { rootHelp } from "../../cli/help-text.ts";
import { runInProcess } from "../helpers/fake-context.ts";
import { collect } from "../helpers/process.ts";

const root = join(import.meta.dirname, "..", "..");
const bin = join(root, "dist", "apes");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string };

/** Runs dist/apes like `env -i apes ...` from `/`: no environment at all, not even PATH or HOME. */
function run(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return collect(spawn(bin, args, { cwd: "/", env, stdio: ["pipe", "pipe", "pipe"] }));
}

describe("dist/apes with an empty environment, from /", () => {
  it("--version prints the package.json version", async () => {
    for (const flag of ["--version", "-V"]) {
      const r = await run([flag]);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`apes ${pkg.version}\n`);
      expect(r.stderr).toBe("");
    }
  });

  it("--help lists the commands, the global options and examples", async () => {
    const r = await run(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: apes /);
    expect(r.stdout).toMatch(/^ {2}dns\b/m);
    expect(r.stdout).toMatch(/^ {2}help\b/m);
    expect(r.stdout).toContain("--json");
    expect(r.stdout).toContain("Examples:");
    expect(r.stdout).toContain("$ apes help exit-codes");
    expect(r.stderr).toBe("");
  });

  it("a subcommand's --help has examples too", async () => {
    const r = await run(["dns", "check", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Usage: apes dns check [options] <email>");
    expect(r.stdout).toContain("$ apes dns check alice@example.com");
  });

  it("an unknown command exits 2 with a helpful message on stderr", async () => {
    const r = await run(["frobnicate"]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("unknown command 'frobnicate'");
    expect(r.stderr).toContain("apes --help");
  });

  it("a misspelt command gets a suggestion", async () => {
    const r = await run(["dsn"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Did you mean dns?");
  });

  it("help exit-codes prints the table", async () => {
    const r = await run(["help", "exit-codes"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Exit codes used by apes:");
    for (const code of [0, 1, 2, 69, 75, 77, 78, 126, 127, 130])
      expect(r.stdout).toMatch(new RegExp(`^ *${code} `, "m"));
    const j = await run(["--json", "help", "exit-codes"]);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toContainEqual({
      code: 69,
      name: "unavailable",
      description: expect.stringContaining("DNS"),
    });
  });

  it("a missing argument exits 2", async () => {
    const r = await run(["dns", "check"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("missing required argument 'email'");
  });
});

describe("dist/apes writing into a closed pipe (`apes --help | head -0`)", () => {
  it("exits quietly instead of crashing with EPIPE", async () => {
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(bin, ["--help"], { cwd: "/", env: {}, stdio: ["ignore", "pipe", "pipe"] });
      // Close our read end before the child has started: its first write meets a closed pipe.
      child.stdout.destroy();
      let stderr = "";
      child.stderr.on("data", (d) => {
        stderr += d;
      });
      child.on("error", reject);
      child.on("close", (code) => resolve({ code, stderr }));
    });
    expect(r.stderr).not.toMatch(/EPIPE|Error|at /);
    expect(r.code).toBe(0);
  });
});

// `apes --help`, `-h` and `apes help` on a stdout that is not a terminal are answered by the SEA
// loader with a text the program made at build time (scripts/sea-loader.cjs, cli/help-text.ts).
describe("dist/apes --help answered without the program", () => {
  it("prints what the program and the source print, for every help argv and colour setting", async () => {
    // Any other argv runs the program: `--no-color` changes nothing in the help.
    const program = await run(["--no-color", "--help"]);
    expect(program.code).toBe(0);
    // What the source prints: a build older than the commands fails here.
    expect(program.stdout).toBe(await rootHelp());
    expect((await run(["--json", "--help"])).stdout).toBe(program.stdout);
    for (const argv of [["--help"], ["-h"], ["help"]]) {
      const envs: Record<string, string>[] = [
        {},
        { NO_COLOR: "1" },
        { FORCE_COLOR: "1" },
        { CLICOLOR_FORCE: "1" },
      ];
      for (const env of envs) {
        const r = await run(argv, env);
        expect(r.code).toBe(0);
        expect(r.stdout, `${argv} ${JSON.stringify(env)}`).toBe(program.stdout);
        expect(r.stderr).toBe("");
      }
    }
  });

  it("on a terminal, the program answers (it wraps to the terminal's width)", async () => {
    // script(1) (util-linux) runs the command on a pseudo-terminal of 120 columns.
    const onTerminal = async (args: string) => {
      const r = await collect(
        spawn("script", ["-qec", `stty cols 120 rows 40 && exec ${bin} ${args}`, "/dev/null"], {
          cwd: "/",
          env: { PATH: "/usr/bin:/bin", SHELL: "/bin/sh" },
          stdio: ["ignore", "pipe", "pipe"],
        }),
      );
      expect(r.code).toBe(0);
      return r.stdout.replaceAll("\r\n", "\n");
    };
    const program = await onTerminal("--no-color --help");
    expect(program).toMatch(/^Usage: apes /);
    expect(Math.max(...program.split("\n").map((l) => l.length))).toBeGreaterThan(80);
    for (const argv of ["--help", "-h", "help"]) expect(await onTerminal(argv), argv).toBe(program);
  });

  it("a full non-blocking stdout gets the whole help once its reader drains it", async () => {
    // perl (Debian's perl-base is essential) fills a non-blocking pipe, runs apes with it as stdout,
    // waits up to 2 s (apes blocks, or fails at once if it cannot wait), then reads it all.
    const script = String.raw`
      use strict; use Fcntl; use POSIX ":sys_wait_h";
      pipe(my $r, my $w) or die "pipe: $!";
      fcntl($w, F_SETFL, fcntl($w, F_GETFL, 0) | O_NONBLOCK) or die "fcntl: $!";
      my $filled = 0;
      for my $size (4096, 1) {
        while (defined(my $n = syswrite($w, "." x $size))) { $filled += $n }
        $!{EAGAIN} or die "fill: $!";
      }
      my $pid = fork() // die "fork: $!";
      if ($pid == 0) { close $r; open(STDOUT, ">&", $w) or die "dup: $!"; exec @ARGV or die "exec: $!" }
      close $w;
      my $status;
      for (1 .. 40) { if (waitpid($pid, WNOHANG) == $pid) { $status = $?; last } select(undef, undef, undef, 0.05) }
      my $all = do { local $/; <$r> };
      if (!defined $status) { waitpid($pid, 0); $status = $? }
      print STDERR "status=$status\n";
      print substr($all, $filled);
    `;
    const r = await collect(spawn("perl", ["-e", script, bin, "--help"], { cwd: "/", env: {} }));
    expect(r.stderr).toBe("status=0\n");
    expect(r.stdout).toBe(await rootHelp());
  });
});

// The setuid shim's helpers run from a bundle of their own (cli/elevation/helpers-main.ts), which the
// SEA loader picks by the first word: the same code as the program's fast route, a fraction of its size.
describe("dist/apes __request / __verify from the helpers' bundle", () => {
  const LOADER_LINE = /^debug: loader: (\w+)\.js, (\d+) bytes, code cache accepted\n/;

  it("runs the small bundle (with its code cache) for both helpers and the whole program otherwise", async () => {
    const size = async (args: string[]) => {
      const r = await run(args, { APES_DEBUG_LOADER: "1" });
      const m = LOADER_LINE.exec(r.stderr);
      expect(m, `${args.join(" ")}: ${r.stderr}`).not.toBeNull();
      return { bundle: m![1], bytes: Number(m![2]) };
    };
    const program = await size(["--no-color", "--help"]);
    expect(program.bundle).toBe("apes");
    for (const args of [["__verify"], ["__request"], ["__request", "--result-fd", "3", "--", "id"]]) {
      const helpers = await size(args);
      expect(helpers.bundle).toBe("helpers");
      // No command tree, no servers: today ~0.2 MB against ~3 MB.
      expect(helpers.bytes).toBeLessThan(program.bytes / 4);
    }
    // Without the variable the loader says nothing.
    expect((await run(["__verify"])).stderr).toBe("apes: usage: apes __verify --config-fd N\n");
  });

  // What the program printed before the helpers had their own bundle (main's build, 2026-12-02), and
  // what the source prints in-process: the same text and status from both entries.
  const REFUSALS: [string[], number, string][] = [
    [["__verify"], 2, "apes: usage: apes __verify --config-fd N\n"],
    [["__verify", "--config-fd"], 2, "apes: usage: apes __verify --config-fd N\n"],
    [["__verify", "--help"], 2, "apes: usage: apes __verify --config-fd N\n"],
    [["__verify", "--config-fd", "3", "extra"], 2, "apes: usage: apes __verify --config-fd N\n"],
    [["__verify", "--config-fd", "x"], 2, "apes: --config-fd must be a file descriptor number\n"],
    [["__verify", "--config-fd=12345"], 2, "apes: --config-fd must be a file descriptor number\n"],
    [["__request"], 2, "apes: __request needs --result-fd N first\n"],
    [["__request", "--help"], 2, "apes: __request needs --result-fd N first\n"],
    [["__request", "--result-fd", "x", "--", "id"], 2, "apes: __request needs --result-fd N first\n"],
    [
      ["__request", "--result-fd", "3"],
      2,
      "apes: missing -- before the command (apes [--reason R] -- cmd args...)\n" +
        "  usage: apes [--reason R] [--as USER] [options] -- cmd args...\n",
    ],
    [
      ["__request", "--result-fd", "3", "--approval", "bogus", "--", "id"],
      2,
      'apes: --approval must be once, timed or always (got "bogus")\n  see `apes run --help`\n',
    ],
  ];

  it("refuses a malformed argv with the same words and status as before, and as the source", async () => {
    for (const [args, code, stderr] of REFUSALS) {
      const r = await run(args);
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }, args.join(" ")).toEqual({
        code,
        stdout: "",
        stderr,
      });
      const source = await runInProcess(args);
      expect({ code: source.code, stdout: source.stdout, stderr: source.stderr }, args.join(" ")).toEqual({
        code,
        stdout: "",
        stderr,
      });
    }
    // Checks that need a real process: fd 1 is not an inherited pipe; a verifier with no request line.
    for (const args of [
      ["__request", "--result-fd", "1", "--", "id"],
      ["__request", "--result-fd=1", "--reason", "r", "--", "id"],
    ]) {
      const r = await run(args);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(
        "apes: --result-fd 1 is not an inherited pipe\n" +
          "  __request is run by the apes setuid shim; run `apes --reason R -- cmd` instead\n",
      );
    }
    const denied = await run(["__verify", "--config-fd", "9"]);
    expect(denied.code).toBe(77);
    expect(JSON.parse(denied.stdout)).toEqual({
      ok: false,
      reason: "request_invalid",
      detail: "no request line on stdin (or longer than 64 KiB)",
    });
    expect(denied.stderr).toBe(
      "apes: not allowed (request_invalid): no request line on stdin (or longer than 64 KiB)\n",
    );
  });

  it("a closed stdout or stderr ends a helper as before (no crash, its own status)", async () => {
    const closed = (args: string[], stream: "stdout" | "stderr") =>
      new Promise<{ code: number | null; other: string }>((resolve, reject) => {
        const child = spawn(bin, args, { cwd: "/", env: {}, stdio: ["ignore", "pipe", "pipe"] });
        child[stream].destroy();
        let other = "";
        child[stream === "stdout" ? "stderr" : "stdout"].on("data", (d) => {
          other += d;
        });
        child.on("error", reject);
        child.on("close", (code) => resolve({ code, other }));
      });
    expect(await closed(["__verify", "--config-fd", "9"], "stdout")).toEqual({
      code: 77,
      other: "apes: not allowed (request_invalid): no request line on stdin (or longer than 64 KiB)\n",
    });
    expect(
      await closed(["__request", "--result-fd", "3", "--approval", "bogus", "--", "id"], "stderr"),
    ).toEqual({
      code: 2,
      other: "",
    });
  });
});
