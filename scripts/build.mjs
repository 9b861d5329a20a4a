// Build dist/apes: esbuild bundles cli/main.ts into one CommonJS file, Node's single-executable
// application support turns it into a blob (with a V8 code cache), and postject injects the blob
// into a copy of the pinned node binary. Runs offline; uses only what `npm ci` installed.
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

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

// Per-process names so concurrent builds (parallel test runs, several developers) never collide.
const bundle = join(work, `apes.${process.pid}.cjs`);
const started = Date.now();
await build({
  entryPoints: [join(root, "cli/main.ts")],
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
});

const seaConfig = join(work, `sea-config.${process.pid}.json`);
const blob = join(work, `apes.${process.pid}.blob`);
writeFileSync(
  seaConfig,
  JSON.stringify({ main: bundle, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true }),
);
execFileSync(nodeBinary, ["--experimental-sea-config", seaConfig], { stdio: ["ignore", "ignore", "inherit"] });

const out = join(dist, "apes");
const tmp = `${out}.${process.pid}.tmp`;
rmSync(tmp, { force: true });
copyFileSync(nodeBinary, tmp);
chmodSync(tmp, 0o755);
execFileSync(
  process.execPath,
  [
    join(root, "node_modules/postject/dist/cli.js"),
    tmp,
    "NODE_SEA_BLOB",
    blob,
    "--sentinel-fuse",
    "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2",
  ],
  { stdio: ["ignore", "ignore", "pipe"] },
);
// rename is atomic: a running test never sees a half-written binary.
renameSync(tmp, out);
for (const f of [bundle, seaConfig, blob]) rmSync(f, { force: true });
const mb = (statSync(out).size / 1e6).toFixed(0);
console.log(`built dist/apes (${mb} MB, node ${process.version}) in ${Date.now() - started} ms`);
