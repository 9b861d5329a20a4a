import { exitOnClosedPipe, exitWith } from "../entry.ts";
import { runHelper } from "./fast.ts";

// The entry of the shim's helpers in dist/apes: scripts/sea-loader.cjs runs this bundle instead of
// the whole program (cli/main.ts) when the first word is `__request` or `__verify`, so each elevation's
// two processes read, compile and run ~0.2 MB instead of ~1.6 MB (bench/BENCHMARKS.md, Elevation).
// Everything here is the program's own code (fast.ts), as cli/program.ts runs it.
exitOnClosedPipe();
exitWith(runHelper(process.argv.slice(2)));
