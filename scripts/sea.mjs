// Node single-executable application (SEA) building, shared by scripts/build.mjs (dist/apes) and
// bench/startup (a bare one-line executable built with exactly the same settings, for comparison).
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** The settings every apes executable is built with (code cache on, no experimental warning). */
export const SEA_SETTINGS = Object.freeze({ disableExperimentalSEAWarning: true, useCodeCache: true });
export const SEA_FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";

/**
 * Turn one CommonJS file (plus optional `assets`, name -> file, read with node:sea) into a single
 * executable at `out`: SEA blob (with a V8 code cache), a copy
 * of `nodeBinary` (default: the running, pinned node), postject. Work files get per-process names in
 * `workDir` so concurrent builds never collide, and `out` is replaced by an atomic rename, so a
 * running test never sees a half-written binary.
 */
export function buildSea({
  main,
  out,
  workDir,
  nodeBinary = process.execPath,
  tag = String(process.pid),
  assets = undefined,
}) {
  const seaConfig = join(workDir, `sea-config.${tag}.json`);
  const blob = join(workDir, `sea.${tag}.blob`);
  writeFileSync(
    seaConfig,
    JSON.stringify({ main, output: blob, ...SEA_SETTINGS, ...(assets ? { assets } : {}) }),
  );
  try {
    execFileSync(nodeBinary, ["--experimental-sea-config", seaConfig], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    const tmp = `${out}.${tag}.tmp`;
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
        SEA_FUSE,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    renameSync(tmp, out);
  } finally {
    for (const f of [seaConfig, blob]) rmSync(f, { force: true });
  }
  return out;
}
