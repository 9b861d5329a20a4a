// Shared by the benchmark drivers: the preconditions every one checks, and the bare floor they compare to.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildSea } from "../scripts/sea.mjs";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * The `--key=value` arguments (a value may itself hold "="); a bare `--flag` is "1". Every driver
 * reads its options through this one parser.
 */
export function benchArgs(argv = process.argv.slice(2)) {
  return new Map(
    argv.map((a) => {
      const [k, ...v] = a.replace(/^--/, "").split("=");
      return [k, v.length ? v.join("=") : "1"];
    }),
  );
}

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

/**
 * CPU ticks (1/100 s, user + system) of this process's children that have been waited for
 * (cutime + cstime in /proc/self/stat): the difference around a spawnSync is that child's CPU,
 * summed over many runs a measure that a loaded machine moves far less than wall time.
 */
export function childTicks() {
  const f = readFileSync("/proc/self/stat", "utf8").split(") ")[1].split(" ");
  return Number(f[13]) + Number(f[14]);
}

/** User + system CPU ms that process `pid` has used so far (utime + stime in /proc/PID/stat; USER_HZ 100). */
export function processCpuMs(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** Quantile p (0..1) of xs, linearly interpolated between the nearest ranks. */
export function quantile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * p;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return s[lo] + (s[hi] - s[lo]) * (i - lo);
}
