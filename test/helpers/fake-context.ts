import { Readable } from "node:stream";
import { defaultConfig, type UserConfig } from "../../cli/config.ts";
import type { Clock, Context, Fetch, GlobalOptions } from "../../cli/context.ts";
import { warningLine } from "../../cli/errors.ts";
import { runCli } from "../../cli/program.ts";

/** A captured output stream. */
export class Capture {
  text = "";
  isTTY = false;
  write(chunk: string) {
    this.text += chunk;
    return true;
  }
}

/** A clock tests move by hand; sleep resolves once `advance` passes its deadline. */
export class FakeClock implements Clock {
  private t: number;
  private sleepers: { at: number; resolve: () => void }[] = [];
  constructor(start = Date.UTC(2026, 10, 22)) {
    this.t = start;
  }
  now() {
    return this.t;
  }
  sleep(ms: number, signal?: AbortSignal) {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      this.sleepers.push({ at: this.t + ms, resolve });
      signal?.addEventListener("abort", () => reject(signal.reason), { once: true });
    });
  }
  advance(ms: number) {
    this.t += ms;
    const due = this.sleepers.filter((s) => s.at <= this.t);
    this.sleepers = this.sleepers.filter((s) => s.at > this.t);
    for (const s of due) s.resolve();
  }
}

/** A clock whose sleep returns at once and moves time forward by the amount slept. */
export class StepClock implements Clock {
  t = Date.UTC(2026, 10, 22);
  now() {
    return this.t;
  }
  async sleep(ms: number) {
    this.t += ms;
  }
}

export interface FakeContextOptions {
  env?: Record<string, string | undefined>;
  http?: Fetch;
  clock?: Clock;
  config?: Partial<UserConfig>;
  globals?: Partial<GlobalOptions>;
  stdin?: string;
  home?: string;
  /** A Capture subclass that reacts to what is written (e.g. sends a signal on a given line). */
  stderr?: Capture;
}

export interface FakeContext extends Context {
  stdout: Capture;
  stderr: Capture;
}

/** A Context for unit tests: captured output, no network unless `http` is given, a fixed HOME. */
export function fakeContext(options: FakeContextOptions = {}): FakeContext {
  const stdout = new Capture();
  const stderr = options.stderr ?? new Capture();
  const home = options.home ?? "/nonexistent-home";
  const env = { HOME: home, ...options.env };
  const globals: GlobalOptions = { json: false, debug: false, color: false, ...options.globals };
  const config: UserConfig = { ...defaultConfig(), ...options.config };
  return {
    stdout,
    stderr,
    io: { stdout, stderr, stdin: Readable.from([options.stdin ?? ""]) },
    env,
    http:
      options.http ??
      (async () => {
        throw new Error("no network in unit tests: pass `http` to fakeContext");
      }),
    clock: options.clock ?? new FakeClock(),
    paths: {
      configDir: `${home}/.config/apes`,
      dataDir: `${home}/.local/share/apes`,
      stateDir: `${home}/.local/state/apes`,
      cacheDir: `${home}/.cache/apes`,
    },
    globals,
    config: async () => config,
    debug(message: string) {
      if (globals.debug) stderr.write(`debug: ${message}\n`);
    },
    warn(warning) {
      stderr.write(warningLine(warning));
    },
  };
}

/** Runs the whole CLI in-process with injected io: `const r = await runInProcess(["dns","check","a@b.c"], {...})`. */
export async function runInProcess(
  argv: string[],
  options: FakeContextOptions = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const ctx = fakeContext(options);
  const { stdout, stderr, globals: _g, ...rest } = ctx;
  const code = await runCli(argv, { ...rest, io: ctx.io, config: ctx.config });
  return { code, stdout: stdout.text, stderr: stderr.text };
}
