// The single executable's entry point (dist/apes). The program itself (the esbuild bundle, wrapped
// like a CommonJS module) and a V8 code cache for it are SEA assets. Why not let node run the bundle
// as the SEA main with its own code cache: that cache is made by compiling without running, so it
// holds only top-level code, and every function that start-up calls (commander, each command's
// registration) is compiled again on every run. This cache is made after running the start-up paths
// (scripts/sea-cache.cjs), so `apes --help` starts ~6 ms sooner. If V8 rejects the cache (another
// node), the program still runs, only slower; APES_DEBUG=1 says so. The bundle contains no real
// `import()` (build.mjs turns those of built-ins into require), so the script needs no module loader.
const { getRawAsset } = require("node:sea");

// `apes --version` (scripts and installers call it often) is answered before the program is read and
// compiled (~4-7 ms of a ~30 ms start): with the line the program itself printed at build time
// (scripts/sea-cache.cjs), so there is one implementation of it (cli/main.ts).
const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
  try {
    require("node:fs").writeSync(1, Buffer.from(getRawAsset("apes.version")));
  } catch (e) {
    if (e.code !== "EPIPE") throw e; // a closed pipe is the reader's choice (as in cli/main.ts)
  }
} else {
  const { Script } = require("node:vm");
  const source = Buffer.from(getRawAsset("apes.js")).latin1Slice(); // the bundle is ASCII (esbuild)
  const script = new Script(source, {
    filename: "apes.js",
    cachedData: new Uint8Array(getRawAsset("apes.cache")),
  });
  if (script.cachedDataRejected && process.env.APES_DEBUG === "1") {
    process.stderr.write("debug: start-up code cache rejected (slower start)\n");
  }
  script.runInThisContext()(exports, require, module, __filename, __dirname);
}
