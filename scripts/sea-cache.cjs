// Build step (scripts/build.mjs): `node sea-cache.cjs <wrapped.js> <out.cache> <out.version> <out.help>`
// runs the program's start-up paths once (help output only: no files, no network) and writes the V8
// code cache of everything that ran, the `--version` line and the root help text, for
// scripts/sea-loader.cjs. Run with the pinned node that becomes dist/apes: V8 accepts a cache only
// from the same version and flags.
const { readFileSync, writeFileSync } = require("node:fs");
const { Script } = require("node:vm");

const [wrapped, out, versionOut, helpOut] = process.argv.slice(2);
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
  for (const args of WARM) {
    process.argv = [process.argv[0], "apes", ...args];
    const mod = { exports: {} };
    main(mod.exports, require, mod, "/apes", "/");
    // main runs asynchronously (a dynamic import, then commander); help output is done in far less.
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  process.exitCode = 0;
  writeFileSync(out, script.createCachedData());
})();
