// Build step (scripts/build.mjs): `node sea-cache.cjs <wrapped.js> <out.cache> <out.version> <out.help>`
// runs the program's start-up paths once (help output only: no files, no network) and writes the V8
// code cache of everything that ran, the `--version` line and the root help text, for
// scripts/sea-loader.cjs. Run with the pinned node that becomes dist/apes: V8 accepts a cache only
// from the same version and flags.
const { readFileSync, writeFileSync } = require("node:fs");
const { Script } = require("node:vm");

// `node sea-cache.cjs --helpers <wrapped.js> <out.cache>`: the same for the shim's helpers' bundle
// (cli/elevation/helpers-main.ts), warmed with runs that end before any file, fd or network is used.
if (process.argv[2] === "--helpers") warmHelpers(process.argv[3], process.argv[4]);
else warmProgram(...process.argv.slice(2));

function warmProgram(wrapped, out, versionOut, helpOut) {
  // The same source and options as the loader's, so V8 accepts the cache there.
  const script = new Script(readFileSync(wrapped, "latin1"), { filename: "apes.js" });
  const main = script.runInThisContext();
  const WARM = [["--help"], ["help", "exit-codes"], ["dns", "check", "--help"], ["grants", "--help"]];

  process.stderr.write = () => true;
  (async () => {
    // The `--version` line the loader prints without loading the program: what the program prints.
    let version = "";
    process.stdout.write = (s) => {
      version += s;
      return true;
    };
    process.argv = [process.argv[0], "apes", "--version"];
    const first = { exports: {} };
    main(first.exports, require, first, "/apes", "/");
    await new Promise((resolve) => setTimeout(resolve, 100));
    if (!/^apes \S+\n$/.test(version))
      throw new Error(`sea-cache: unexpected --version output ${JSON.stringify(version)}`);
    writeFileSync(versionOut, version);
    // The root help the loader prints when stdout is not a terminal (cli/help-text.ts makes it the way
    // `apes --help` does and checks it does not depend on colour or on which of the help argvs ran).
    writeFileSync(helpOut, await first.exports.rootHelp());
    process.stdout.write = () => true;
    await runEach(main, WARM);
    writeFileSync(out, script.createCachedData());
  })();
}

/** Runs the bundle's main once per argv, each given time to finish (it runs asynchronously: a
 * dynamic import, then the command; what is warmed here is done in far less than 100 ms). */
async function runEach(main, argvs) {
  for (const args of argvs) {
    process.argv = [process.argv[0], "apes", ...args];
    const mod = { exports: {} };
    main(mod.exports, require, mod, "/apes", "/");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  process.exitCode = 0;
}

function warmHelpers(wrapped, out) {
  const script = new Script(readFileSync(wrapped, "latin1"), { filename: "helpers.js" });
  const main = script.runInThisContext();
  // Usage errors, then a requester that gets as far as its result fd (999: not open) and a verifier
  // whose policy fd is not open and whose stdin (the build's, /dev/null) has no request line: each
  // ends in a refusal on stderr. No HOME: nothing under the builder's home is looked at.
  const WARM_HELPERS = [
    ["__verify"],
    ["__request"],
    ["__request", "--result-fd", "999", "--reason", "warm", "--", "/bin/true"],
    ["__verify", "--config-fd", "999"],
  ];
  for (const key of Object.keys(process.env)) delete process.env[key];
  process.stdout.write = () => true;
  process.stderr.write = () => true;
  (async () => {
    await runEach(main, WARM_HELPERS);
    writeFileSync(out, script.createCachedData());
  })();
}
