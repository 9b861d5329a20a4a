import { type Context, createContext } from "../context.ts";
import { reportFailure } from "../errors.ts";
import { requesterGlobals } from "./grammar.ts";

/**
 * The setuid shim runs `apes __request ...` and `apes __verify ...` on every elevation; they skip
 * building the commander tree (~7 ms each, see bench/BENCHMARKS.md) and parse their fixed argv
 * themselves (cli/commands/internal/ registers the same actions for `--help` and tests). dist/apes
 * runs them from a bundle of their own (helpers-main.ts), cli/program.ts from the whole program.
 * The SEA loader (scripts/sea-loader.cjs) picks that bundle by the same first word.
 */
export function isInternal(argv: readonly string[]): boolean {
  return argv[0] === "__request" || argv[0] === "__verify";
}

/** Runs a helper and returns its exit status; a failure is reported on stderr as any command's. Never throws. */
export async function runHelper(argv: readonly string[], overrides: Partial<Context> = {}): Promise<number> {
  // process.stderr is created on first access (a stream and its modules): only touch it for an error.
  const stderr = overrides.io?.stderr ?? { write: (s: string) => process.stderr.write(s) };
  try {
    return await runInternal(argv, overrides);
  } catch (e) {
    return reportFailure(e, stderr, () => (overrides.env ?? process.env).APES_DEBUG === "1");
  }
}

/** Returns 0 or throws (CliError) like any command. */
export async function runInternal(argv: readonly string[], overrides: Partial<Context>): Promise<number> {
  const env = overrides.env ?? process.env;
  if (argv[0] === "__verify") {
    const { configFdArg, verifyAction } = await import("./verify-action.ts");
    const fd = configFdArg(argv);
    const ctx = createContext({ json: false, debug: false, color: false }, overrides);
    await verifyAction(ctx, fd);
    return 0;
  }
  if (argv[0] === "__request" && argv[1] === "--serve") {
    const { serveWarmRequester } = await import("./resident.ts");
    return serveWarmRequester(argv);
  }
  // __request --result-fd N [elevation options] -- CMD: the globals are among the options.
  let rest = argv[1]?.startsWith("--result-fd=") ? argv.slice(2) : argv.slice(3);
  if (rest[0] === "--resident") rest = rest.slice(2);
  const ctx = createContext(requesterGlobals(rest, env), overrides);
  const { requestAction } = await import("./request-action.ts");
  await requestAction(ctx, argv);
  return 0;
}
