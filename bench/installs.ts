// Earlier builds measured beside this one in a run (bench-elevate, bench-push): each was installed
// into a temp prefix by `node bench/elevate/run.ts --install-only=F` from that build's checkout,
// which describes the install in F; `--compare=F1,F2,...` names them.
import { readFileSync, rmSync } from "node:fs";
import { basename } from "node:path";

export interface EarlierInstall {
  /** F's base name without .json: how tables name the build. */
  name: string;
  root: string;
  shim: string;
  exec: string;
  config: string;
  /** The verifier's HOME (its JWKS cache). */
  cacheDir: string;
}

/** The installs described in the comma-separated files; removed at the end unless `keep` (they hold a setuid shim). */
export function earlierInstalls(
  files: string | undefined,
  keep: boolean,
  cleanups: (() => unknown)[],
): EarlierInstall[] {
  const installs = (files ? files.split(",") : []).map((file) => ({
    name: basename(file).replace(/\.json$/, ""),
    ...(JSON.parse(readFileSync(file, "utf8")) as Omit<EarlierInstall, "name">),
  }));
  if (!keep) for (const b of installs) cleanups.push(() => rmSync(b.root, { recursive: true, force: true }));
  return installs;
}
