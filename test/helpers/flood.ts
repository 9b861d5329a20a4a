import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";

/**
 * Hostile-client load for the IdP's resource limits (loopback only, bounded in connections and
 * time): shared by the flood test and bench/idp-flood.
 */

export interface FloodResult {
  /** Bytes written by all connections. */
  bytes: number;
  /** Connections opened (the attacker reconnects whenever the server closes one). */
  connections: number;
  /** Status codes of the answers the attackers saw, with their counts. */
  statuses: Record<string, number>;
}

/**
 * `connections` parallel POSTs to `path` whose body is an endless stream of 1-byte chunks (chunked
 * transfer encoding), reconnecting whenever the server closes, until `seconds` have passed.
 */
export async function chunkFlood(opts: {
  url: string;
  path: string;
  connections: number;
  seconds: number;
}): Promise<FloodResult> {
  const { hostname, port } = new URL(opts.url);
  const head = Buffer.from(
    `POST ${opts.path} HTTP/1.1\r\nhost: ${hostname}\r\ncontent-type: application/json\r\n` +
      "transfer-encoding: chunked\r\n\r\n",
  );
  const batch = Buffer.from("1\r\nx\r\n".repeat(2048));
  const until = Date.now() + opts.seconds * 1000;
  const result: FloodResult = { bytes: 0, connections: 0, statuses: {} };

  const one = () =>
    new Promise<void>((resolve) => {
      const socket: Socket = connect(Number(port), hostname);
      result.connections++;
      let answer = "";
      const pump = () => {
        while (Date.now() < until && !socket.destroyed) {
          result.bytes += batch.length;
          if (!socket.write(batch)) return; // resumed on 'drain'
        }
        if (Date.now() >= until) socket.destroy();
      };
      // The server may stop reading (no 'drain' then): the deadline ends the connection anyway.
      const stop = setTimeout(() => socket.destroy(), Math.max(0, until - Date.now()));
      socket.on("connect", () => {
        socket.write(head);
        pump();
      });
      socket.on("drain", pump);
      socket.setEncoding("latin1");
      socket.on("data", (d: string) => {
        if (answer.length < 64) answer += d;
      });
      socket.on("error", () => {});
      socket.on("close", () => {
        clearTimeout(stop);
        const status = /^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? "none";
        result.statuses[status] = (result.statuses[status] ?? 0) + 1;
        resolve();
      });
    });

  await Promise.all(
    Array.from({ length: opts.connections }, async () => {
      while (Date.now() < until) await one();
    }),
  );
  return result;
}

/** The resident set size of a process in MiB (Linux /proc). */
export function rssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) / 1024;
}

/** Samples rssMiB(pid) every `everyMs` until stopped; returns the largest value seen. */
export function watchRss(pid: number, everyMs = 100): { stop(): number } {
  let max = rssMiB(pid);
  const timer = setInterval(() => {
    try {
      max = Math.max(max, rssMiB(pid));
    } catch {
      // the process has exited: the test notices on its own
    }
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return max;
    },
  };
}
