// The flood of bench/idp-flood/run.mjs in its own thread: its write loops must not delay the
// measuring client's event loop (that would be counted as server latency).
import { parentPort, workerData } from "node:worker_threads";
import { chunkFlood } from "../../test/helpers/flood.ts";

parentPort.postMessage(await chunkFlood(workerData));
