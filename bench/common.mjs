// Shared by the benchmark drivers: the preconditions every one checks, and the bare floor they compare to.
import { existsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildSea } from "../scripts/sea.mjs";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Exits with a clear message unless run by the pinned node and dist/apes is built; returns its path. */
export function requireBuiltApes() {
  if (!process.version.startsWith("v24.")) {
    console.error(`bench: run with the pinned node (node_modules/.bin/node), got ${process.version}`);
    process.exit(1);
  }
  const apes = join(root, "dist", "apes");
  if (!existsSync(apes)) {
    console.error("bench: dist/apes is missing: run `make build` first");
    process.exit(1);
  }
  return apes;
}

/** A one-line `console.log` single executable, built exactly like dist/apes (scripts/sea.mjs), in `work`. */
export function buildBareSea(work) {
  const main = join(work, "bare.cjs");
  writeFileSync(main, 'console.log("x");\n');
  return buildSea({ main, out: join(work, "bare"), workDir: work });
}

/** Quantile p (0..1) of xs, linearly interpolated between the nearest ranks. */
export function quantile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * p;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return s[lo] + (s[hi] - s[lo]) * (i - lo);
}
