// Build dist/apes: esbuild bundles cli/main.ts into one CommonJS file, Node's single-executable
// application support turns it into a blob (with a V8 code cache), and postject injects the blob
// into a copy of the pinned node binary (scripts/sea.mjs). Runs offline; uses only what `npm ci` installed.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { buildSea } from "./sea.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const work = join(root, "build");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const nodeBinary = process.execPath;

if (!process.version.startsWith("v24.")) {
  console.error(`build: expected the pinned Node 24 (node_modules/.bin/node), got ${process.version}`);
  process.exit(1);
}

mkdirSync(dist, { recursive: true });
mkdirSync(work, { recursive: true });

// Start-up: built-in modules that are imported at the top of a module but only used inside functions
// are loaded on first use instead (commander imports node:child_process for executable subcommands,
// which apes does not use; config and session code import fs/promises and readline). Each costs about
// a millisecond or more on every start. The stand-in is a Proxy that loads the real module on the
// first property read. Its key list is taken here, from the same pinned node the executable runs, so
// esbuild's interop (__toESM copies keys for default and namespace imports) needs no early load.
const LAZY_BUILTINS = ["child_process", "fs/promises", "readline", "readline/promises"];
const requireBuiltin = createRequire(import.meta.url);
const lazyBuiltins = {
  name: "lazy-builtins",
  setup(b) {
    const filter = new RegExp(`^(node:)?(${LAZY_BUILTINS.join("|").replaceAll("/", "\\/")})$`);
    b.onResolve({ filter }, (args) =>
      args.namespace === "lazy-builtin"
        ? undefined
        : { path: args.path.replace(/^node:/, ""), namespace: "lazy-builtin" },
    );
    b.onLoad({ filter: /.*/, namespace: "lazy-builtin" }, (args) => {
      const id = `node:${args.path}`;
      const keys = Object.getOwnPropertyNames(requireBuiltin(id));
      return {
        loader: "js",
        contents: `let real;
const load = () => (real ??= require(${JSON.stringify(id)}));
const keys = ${JSON.stringify(keys)};
module.exports = new Proxy({}, {
  get: (_, key) => (key === "__esModule" ? undefined : load()[key]),
  set: (_, key, value) => { load()[key] = value; return true; },
  has: (_, key) => key in load(),
  ownKeys: () => keys,
  getOwnPropertyDescriptor: (_, key) =>
    keys.includes(key) ? { value: undefined, writable: true, enumerable: true, configurable: true } : undefined,
});`,
      };
    });
  },
};

// `await import("node:dgram")` would stay a real dynamic import in the CommonJS bundle, which needs an
// ES module loader at run time (scripts/sea-loader.cjs runs the bundle as a plain script): load
// built-ins with require instead. The namespace object is the same shape (named exports + default).
const dynamicBuiltins = {
  name: "dynamic-import-of-builtins",
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) =>
      args.kind === "dynamic-import" ? { path: args.path, namespace: "dynamic-builtin" } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "dynamic-builtin" }, (args) => ({
      loader: "js",
      contents: `module.exports = require(${JSON.stringify(args.path)});`,
    }));
  },
};

// esbuild escapes non-ASCII in strings but keeps some comments as they are (class bodies): a
// dependency's line comment with an em dash (pg-protocol) would make the bundle non-ASCII.
const asciiComments = {
  name: "ascii-comments",
  setup(b) {
    b.onLoad({ filter: /[\\/]node_modules[\\/].*\.js$/ }, (args) => {
      const text = readFileSync(args.path, "utf8");
      if (!/[^\x00-\x7f]/.test(text)) return undefined;
      return {
        contents: text.replace(/^(\s*\/\/.*)$/gm, (line) => line.replace(/[^\x00-\x7f]/g, "?")),
        loader: "js",
      };
    });
  },
};

// Per-process names so concurrent builds (parallel test runs, several developers) never collide.
const started = Date.now();
const { NODE_OPTIONS: _ignored, ...cacheEnv } = process.env; // flags must match the runtime's

/**
 * Bundles `entry` (esbuild) into build/<name>.<pid>.js, wrapped like a CommonJS module for the SEA
 * loader (scripts/sea-loader.cjs runs it through vm.Script), and returns that file and the metafile.
 */
async function bundleProgram(entry, name) {
  const bundle = join(work, `${name}.${process.pid}.cjs`);
  const built = await build({
    entryPoints: [join(root, entry)],
    bundle: true,
    platform: "node",
    target: "node24",
    format: "cjs",
    outfile: bundle,
    minifySyntax: true,
    keepNames: false,
    legalComments: "none",
    sourcemap: false,
    define: { __APES_VERSION__: JSON.stringify(pkg.version), "import.meta.url": "__apes_import_meta_url" },
    banner: { js: 'var __apes_import_meta_url = require("node:url").pathToFileURL(__filename).href;' },
    logLevel: "warning",
    metafile: true,
    plugins: [dynamicBuiltins, lazyBuiltins, asciiComments],
  });
  try {
    const code = readFileSync(bundle, "latin1");
    if (/[^\x00-\x7f]/.test(code))
      throw new Error(`build: ${name}'s bundle is not ASCII (esbuild charset changed?)`);
    const dynamicImport = /\bimport\(\s*["'`]/.exec(code);
    if (dynamicImport)
      throw new Error(
        `build: a dynamic import() is left in ${name}'s bundle: ${code.slice(dynamicImport.index, dynamicImport.index + 60)}`,
      );
    const wrapped = join(work, `${name}.${process.pid}.js`);
    writeFileSync(
      wrapped,
      `(function (exports, require, module, __filename, __dirname) {${code}\n})`,
      "latin1",
    );
    return { wrapped, metafile: built.metafile };
  } finally {
    rmSync(bundle, { force: true });
  }
}

// The program, run through scripts/sea-loader.cjs with a code cache warmed by running start-up
// (scripts/sea-cache.cjs); see the loader for why.
const program = await bundleProgram("cli/main.ts", "apes");
const wrapped = program.wrapped;
const cache = join(work, `apes.${process.pid}.cache`);
const versionLine = join(work, `apes.${process.pid}.version`);
const rootHelp = join(work, `apes.${process.pid}.help`);
execFileSync(nodeBinary, [join(root, "scripts/sea-cache.cjs"), wrapped, cache, versionLine, rootHelp], {
  env: cacheEnv,
  stdio: ["ignore", "ignore", "inherit"],
});

// The setuid shim's two helpers (`apes __request`, `apes __verify`: two processes on every
// elevation) get a bundle of their own with only their code, which the loader runs for them. It must
// stay small: the command tree (commander, cli/commands/, cli/program.ts) has no place in it.
const helpers = await bundleProgram("cli/elevation/helpers-main.ts", "helpers");
const helpersCache = join(work, `helpers.${process.pid}.cache`);
const intruder = Object.keys(helpers.metafile.inputs).find((f) =>
  /(^|\/)node_modules\/commander\/|^cli\/commands\/|^cli\/program\.ts$/.test(f),
);
if (intruder)
  throw new Error(`build: the helpers' bundle (cli/elevation/helpers-main.ts) imports ${intruder}`);
execFileSync(nodeBinary, [join(root, "scripts/sea-cache.cjs"), "--helpers", helpers.wrapped, helpersCache], {
  env: cacheEnv,
  stdio: ["ignore", "ignore", "inherit"],
});
// Web assets: every file of a top-level folder's web/assets/ (flat) is an SEA asset named
// "<folder>/<file>", read by server/web/assets.ts; run from source, that reads the folder instead.
function webAssets() {
  const assets = {};
  for (const app of readdirSync(root, { withFileTypes: true })) {
    if (!app.isDirectory() || app.name.startsWith(".") || app.name === "node_modules") continue;
    const dir = join(root, app.name, "web", "assets");
    let files;
    try {
      files = readdirSync(dir, { withFileTypes: true });
    } catch {
      continue;
    }
    for (const f of files) {
      if (f.isFile() && !f.name.startsWith(".")) assets[`${app.name}/${f.name}`] = join(dir, f.name);
    }
    // Vendored browser files (a package's bundle): web/vendor.json maps asset name -> path from it.
    const vendorFile = join(root, app.name, "web", "vendor.json");
    let vendor = {};
    try {
      vendor = JSON.parse(readFileSync(vendorFile, "utf8"));
    } catch (e) {
      if (e.code !== "ENOENT") throw e;
    }
    for (const [name, path] of Object.entries(vendor)) {
      assets[`${app.name}/${name}`] = join(dirname(vendorFile), path);
    }
  }
  return assets;
}

// dist/bundled-packages.json: every npm package whose code the executable carries (what esbuild
// bundled, by its metafile, and the vendored browser files), with its license, for the Debian
// package's copyright file (scripts/deb-copyright.mjs): taken from the build itself, so it cannot drift.
function bundledPackages(inputs, assets) {
  const dirs = new Set();
  for (const file of [...inputs, ...assets]) {
    const rel = relative(root, file).split(sep).join("/");
    const m = /^(?:.*\/)?node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(rel);
    if (m) dirs.add(rel.slice(0, m.index + m[0].length - 1));
  }
  return [...dirs].sort().map((dir) => {
    const meta = JSON.parse(readFileSync(join(root, dir, "package.json"), "utf8"));
    const license = typeof meta.license === "string" ? meta.license : meta.license?.type;
    const licenseFile = readdirSync(join(root, dir)).find((f) =>
      /^(licen[cs]e|copying)(\.(md|txt))?$/i.test(f),
    );
    if (!meta.name || !meta.version || !license)
      throw new Error(`build: ${dir}/package.json lacks a name, version or license`);
    return {
      name: meta.name,
      version: meta.version,
      license,
      dir,
      licenseFile: licenseFile && `${dir}/${licenseFile}`,
    };
  });
}
const assets = webAssets();
writeFileSync(
  join(dist, "bundled-packages.json"),
  `${JSON.stringify(
    bundledPackages(
      [...Object.keys(program.metafile.inputs), ...Object.keys(helpers.metafile.inputs)].map((f) =>
        join(root, f),
      ),
      Object.values(assets),
    ),
    null,
    2,
  )}\n`,
);

const out = join(dist, "apes");
try {
  buildSea({
    main: join(root, "scripts/sea-loader.cjs"),
    out,
    workDir: work,
    nodeBinary,
    assets: {
      "apes.js": wrapped,
      "apes.cache": cache,
      "apes.version": versionLine,
      "apes.help": rootHelp,
      "helpers.js": helpers.wrapped,
      "helpers.cache": helpersCache,
      ...assets,
    },
  });
} finally {
  for (const f of [wrapped, cache, versionLine, rootHelp, helpers.wrapped, helpersCache])
    rmSync(f, { force: true });
}
// A rejected cache still works, only slower: catch it here rather than in a benchmark. (`--help`
// alone is answered by the loader without the program; `--no-color --help` runs the program.)
const check = spawnSync(out, ["--no-color", "--help"], { env: { APES_DEBUG: "1" }, encoding: "utf8" });
if (
  check.status !== 0 ||
  !check.stdout.startsWith("Usage: apes") ||
  check.stderr.includes("cache rejected")
) {
  throw new Error(`build: dist/apes --help failed or rejected its code cache: ${check.stderr}`);
}
// The loader's `--help` must be what the program prints (test/integration/binary.test.ts checks more).
const fastHelp = spawnSync(out, ["--help"], { env: {}, encoding: "utf8" });
if (fastHelp.status !== 0 || fastHelp.stdout !== check.stdout) {
  throw new Error("build: dist/apes --help (the loader's text) differs from the program's help");
}
// The shim's helpers run from their own bundle, with its cache (a usage error: no fd or file needed).
const helperCheck = spawnSync(out, ["__verify"], { env: { APES_DEBUG_LOADER: "1" }, encoding: "utf8" });
if (
  helperCheck.status !== 2 ||
  !/^debug: loader: helpers\.js, \d+ bytes, code cache accepted\napes: usage: apes __verify --config-fd N\n$/.test(
    helperCheck.stderr,
  )
) {
  throw new Error(
    `build: dist/apes __verify did not run the helpers' bundle with its cache: ${helperCheck.stderr}`,
  );
}
// The loader answers --version itself (scripts/sea-loader.cjs): it must be the package's version.
const version = spawnSync(out, ["--version"], { env: {}, encoding: "utf8" });
if (version.status !== 0 || version.stdout !== `apes ${pkg.version}\n`) {
  throw new Error(
    `build: dist/apes --version printed ${JSON.stringify(version.stdout)}, not apes ${pkg.version}`,
  );
}
const mb = (statSync(out).size / 1e6).toFixed(0);
console.log(`built dist/apes (${mb} MB, node ${process.version}) in ${Date.now() - started} ms`);
