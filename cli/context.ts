import { type ClientWarning, type Clock, type Fetch, systemClock } from "../client/context.ts";
import { loadUserConfig, type UserConfig } from "./config.ts";
import { warningLine } from "./errors.ts";
import { type Paths, xdgPaths } from "./paths.ts";

/**
 * What a command may touch; it is also a client/ ClientContext as it is (client/context.ts). Commands receive it; tests build one with fakes (see test/helpers/fake-context.ts). */
export interface Output {
  write(chunk: string): unknown;
  /** True when a person is watching (progress lines, colour). */
  isTTY?: boolean;
}

export interface Io {
  stdout: Output;
  stderr: Output;
  stdin: NodeJS.ReadableStream;
}

export type { Clock, Fetch };
export { systemClock };

export interface GlobalOptions {
  json: boolean;
  debug: boolean;
  color: boolean;
}

export interface Context {
  io: Io;
  env: Readonly<Record<string, string | undefined>>;
  http: Fetch;
  clock: Clock;
  paths: Paths;
  globals: GlobalOptions;
  /** Loaded on first use, so commands that need no config pay nothing. */
  config(): Promise<UserConfig>;
  /** Debug line on stderr when --debug is on. */
  debug(message: string): void;
  /** A client warning, as an `apes: warning:` line on stderr. */
  warn(warning: ClientWarning): void;
}

export function createContext(globals: GlobalOptions, overrides: Partial<Context> = {}): Context {
  const env = overrides.env ?? process.env;
  const paths = overrides.paths ?? xdgPaths(env);
  // Node makes each stream on first access: process.stdin alone costs up to ~2 ms (a file or
  // /dev/null), which a command that never reads it (the shim's requester, every elevation) need not pay.
  const io: Io = overrides.io ?? {
    get stdout() {
      return process.stdout;
    },
    get stderr() {
      return process.stderr;
    },
    get stdin() {
      return process.stdin;
    },
  };
  let configPromise: Promise<UserConfig> | undefined;
  return {
    io,
    env,
    // node:http rather than the runtime's fetch: the first fetch call costs ~30 ms of start-up in
    // the single executable, more than the whole request (bench/BENCHMARKS.md, CLI section).
    http:
      overrides.http ??
      (async (input, init) =>
        (await import("../client/http.ts")).nodeFetch(input as string | URL | Request, init)),
    clock: overrides.clock ?? systemClock,
    paths,
    globals,
    config:
      overrides.config ??
      (() => {
        configPromise ??= loadUserConfig(paths.configDir, env);
        return configPromise;
      }),
    debug(message) {
      if (globals.debug) io.stderr.write(`debug: ${message}\n`);
    },
    warn(warning) {
      io.stderr.write(warningLine(warning));
    },
  };
}
