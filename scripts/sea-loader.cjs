// The single executable's entry point (dist/apes). The program itself (the esbuild bundle, wrapped
// like a CommonJS module) and a V8 code cache for it are SEA assets. Why not let node run the bundle
// as the SEA main with its own code cache: that cache is made by compiling without running, so it
// holds only top-level code, and every function that start-up calls (commander, each command's
// registration) is compiled again on every run. This cache is made after running the start-up paths
// (scripts/sea-cache.cjs), so `apes --help` starts ~6 ms sooner. If V8 rejects the cache (another
// node), the program still runs, only slower; APES_DEBUG=1 says so. The bundle contains no real
// `import()` (build.mjs turns those of built-ins into require), so the script needs no module loader.
const { getRawAsset } = require("node:sea");

// `apes --version` (scripts and installers call it often) and the root help are answered before the
// program is read and compiled (~4-7 ms of a ~30 ms start; the help skips ~15 ms more of building the
// command tree): with the text the program itself printed at build time (scripts/sea-cache.cjs), so
// there is one implementation of each (cli/main.ts, cli/help-text.ts). Commander wraps help to a
// terminal's width: on a terminal the program answers.
const args = process.argv.slice(2);
const one = args.length === 1 ? args[0] : undefined;
if (one === "--version" || one === "-V") {
  print(getRawAsset("apes.version"));
} else if ((one === "--help" || one === "-h" || one === "help") && !require("node:tty").isatty(1)) {
  print(getRawAsset("apes.help"));
} else if (args[0] === "__request" || args[0] === "__verify") {
  // The setuid shim's two helpers (every elevation): their own small bundle
  // (cli/elevation/helpers-main.ts; cli/elevation/fast.ts `isInternal` is the same test).
  run("helpers");
} else {
  run("apes");
}

/** Compiles the bundle asset `<name>.js` with its code cache `<name>.cache` and runs it. */
function run(name) {
  const { Script } = require("node:vm");
  const source = Buffer.from(getRawAsset(`${name}.js`)).latin1Slice(); // the bundle is ASCII (esbuild)
  const script = new Script(source, {
    filename: `${name}.js`,
    cachedData: new Uint8Array(getRawAsset(`${name}.cache`)),
  });
  if (script.cachedDataRejected && process.env.APES_DEBUG === "1") {
    process.stderr.write("debug: start-up code cache rejected (slower start)\n");
  }
  // For the build's and the tests' checks (which bundle ran, its cache taken): one line on stderr.
  if (process.env.APES_DEBUG_LOADER === "1") {
    const cache = script.cachedDataRejected ? "rejected" : "accepted";
    process.stderr.write(`debug: loader: ${name}.js, ${source.length} bytes, code cache ${cache}\n`);
  }
  script.runInThisContext()(exports, require, module, __filename, __dirname);
}

/** Writes all of an asset to stdout, as process.stdout would, without creating it unless needed. */
function print(asset) {
  const bytes = Buffer.from(asset);
  let done = 0;
  try {
    while (done < bytes.length) done += require("node:fs").writeSync(1, bytes, done);
  } catch (e) {
    if (e.code === "EAGAIN") {
      // A non-blocking stdout that is full (its reader is slow): process.stdout waits for it.
      process.stdout.on("error", (err) => {
        if (err.code !== "EPIPE") throw err;
      });
      process.stdout.write(bytes.subarray(done));
    } else if (e.code !== "EPIPE") throw e; // a closed pipe is the reader's choice (as in cli/main.ts)
  }
}
