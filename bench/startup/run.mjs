// Start-up benchmark: dist/apes --version and --help against a bare single executable (a one-line
// `console.log("x")` program) built from the same pinned node with the same SEA settings
// (scripts/sea.mjs). Reports medians side by side and the ratios to the bare executable.
//
//   make bench-startup            (builds dist/apes first)
//   node bench/startup/run.mjs [--runs 30] [--warmup 5] [--before PATH]
//
// --before PATH adds an earlier build's --version and --help to the same interleaved rounds, for a
// before/after comparison of a change in one run (its ratios are reported, not held to the aims).
//
// Aims (issue 16): `--version` <= 1.1x and `--help` <= 1.2x the bare executable; exit 3 when a
// median ratio is above its aim.
//
// Method: every round runs the three commands once each, in a rotating order (interleaved, so drift
// in machine load hits all three alike); wall time of spawnSync (fork + exec + run + exit) with an
// empty environment from `/`. The first --warmup rounds are discarded. If hyperfine is installed,
// it is run too (-N, same runs) as a cross-check; the script works without it. CPU per run (user +
// system of the child, bench/common.mjs childTicks, 10 ms ticks summed over all runs) is reported
// too: on a loaded machine it moves far less than wall time.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { buildBareSea, childTicks, quantile as q, requireBuiltApes } from "../common.mjs";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "30" },
    warmup: { type: "string", default: "5" },
    before: { type: "string" },
  },
});
const runs = Number(values.runs);
const warmup = Number(values.warmup);

const apes = requireBuiltApes();

const work = mkdtempSync(join(tmpdir(), "apes-bench-startup-"));
try {
  const bare = buildBareSea(work);

  const cases = [
    { name: "bare SEA (console.log)", file: bare, args: [] },
    { name: "apes --version", file: apes, args: ["--version"], aim: 1.1 },
    { name: "apes --help", file: apes, args: ["--help"], aim: 1.2 },
  ];
  if (values.before) {
    cases.push(
      { name: "apes --version [before]", file: values.before, args: ["--version"] },
      { name: "apes --help [before]", file: values.before, args: ["--help"] },
    );
  }
  for (const c of cases) {
    const r = spawnSync(c.file, c.args, { cwd: "/", env: {}, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`${c.name} exited ${r.status}: ${r.stderr}`);
    c.times = [];
    c.ticks = 0;
  }

  for (let round = 0; round < warmup + runs; round++) {
    for (let k = 0; k < cases.length; k++) {
      const c = cases[(round + k) % cases.length];
      const k0 = childTicks();
      const t0 = process.hrtime.bigint();
      const r = spawnSync(c.file, c.args, { cwd: "/", env: {}, stdio: "ignore" });
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.status !== 0) throw new Error(`${c.name} exited ${r.status}`);
      if (round >= warmup) {
        c.times.push(ms);
        c.ticks += childTicks() - k0;
      }
    }
  }

  const base = q(cases[0].times, 0.5);
  console.log(`node ${process.version}, ${runs} interleaved runs each after ${warmup} warm-up rounds`);
  const cpuBase = cases[0].ticks;
  console.log("command                      median    min     p10     p90   ratio   cpu/run  ratio");
  const above = [];
  for (const c of cases) {
    const med = q(c.times, 0.5);
    const ratio = med / base;
    if (c.aim && ratio > c.aim) above.push(`${c.name} ${ratio.toFixed(2)} > ${c.aim}`);
    console.log(
      `${c.name.padEnd(26)} ${med.toFixed(1).padStart(6)} ms ${q(c.times, 0).toFixed(1).padStart(6)} ${q(c.times, 0.1).toFixed(1).padStart(6)} ${q(
        c.times,
        0.9,
      )
        .toFixed(1)
        .padStart(
          6,
        )}  ${ratio.toFixed(2)}  ${((c.ticks * 10) / runs).toFixed(1).padStart(5)} ms  ${(c.ticks / cpuBase).toFixed(2)}`,
    );
  }
  console.log(above.length === 0 ? "ok: every ratio within its aim" : `ABOVE AIM: ${above.join(", ")}`);

  let hyperfine = false;
  try {
    execFileSync("hyperfine", ["--version"], { stdio: "ignore" });
    hyperfine = true;
  } catch {
    console.log("(hyperfine not installed: skipped the cross-check)");
  }
  if (hyperfine) {
    const json = join(work, "hyperfine.json");
    execFileSync(
      "hyperfine",
      [
        "-N",
        "--warmup",
        String(warmup),
        "--runs",
        String(runs),
        "--export-json",
        json,
        ...cases.map((c) => [c.file, ...c.args].join(" ")),
      ],
      {
        stdio: ["ignore", "ignore", "inherit"],
        cwd: "/",
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
      },
    );
    const { results } = JSON.parse(await import("node:fs").then((fs) => fs.readFileSync(json, "utf8")));
    const hb = results[0].median;
    console.log("hyperfine (-N) medians:");
    results.forEach((r, i) => {
      console.log(
        `${cases[i].name.padEnd(24)} ${(r.median * 1000).toFixed(1).padStart(6)} ms  ${(r.median / hb).toFixed(2)}`,
      );
    });
  }
  process.exitCode = above.length === 0 ? 0 : 3;
} finally {
  rmSync(work, { recursive: true, force: true });
}
