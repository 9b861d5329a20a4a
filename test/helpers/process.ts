import type { ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

/** What a finished child process printed, and how it ended. */
export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Feeds `input` (or nothing) to a spawned child, collects its output and waits for it to close;
 * killed with SIGKILL after timeoutMs (default 20 s) so a hung process cannot hang the suite.
 */
export function collect(
  child: ChildProcess,
  opts: { input?: string | Buffer; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    let stdout = "";
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 20_000);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin?.on("error", () => {}); // the program may exit without reading its input
    child.stdin?.end(opts.input ?? "");
  });
}

/** The pids of pid's direct children, from /proc/N/stat (its 4th field is the parent's pid). */
export function childPids(pid: number): number[] {
  const kids: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) kids.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return kids;
}
