import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { queryTxtUdp } from "../../protocol/resolver.ts";

/**
 * A real DNS server for tests: dnsmasq (Debian package dnsmasq-base) on a loopback port, serving
 * the given TXT records and answering NXDOMAIN for everything else under `local` (never a forward).
 * test/integration/dns.test.ts runs it the same way.
 */

export const DNSMASQ = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/bin/dnsmasq"].find((p) => existsSync(p));

export interface Dnsmasq {
  /** `127.0.0.1:PORT`, for the resolver's server list. */
  server: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** `records`: [name, TXT text]; `local`: the zones answered locally (e.g. ["example", "org"]). */
export async function startDnsmasq(records: [string, string][], local: string[]): Promise<Dnsmasq> {
  if (!DNSMASQ) throw new Error("dnsmasq is not installed: apt-get install -y dnsmasq-base (see .ci/run)");
  const dir = mkdtempSync(join(tmpdir(), "apes-dnsmasq-"));
  let log = "";
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort(); // a free TCP port is almost always a free UDP port too
    const conf = join(dir, "dnsmasq.conf");
    writeFileSync(
      conf,
      `${[
        "no-resolv",
        "no-hosts",
        "no-poll",
        `port=${port}`,
        "listen-address=127.0.0.1",
        "bind-interfaces",
        "pid-file=",
        "local-ttl=30",
        ...local.map((z) => `local=/${z}/`),
        ...records.map(([name, text]) => `txt-record=${name},"${text}"`),
      ].join("\n")}\n`,
    );
    const child: ChildProcess = spawn(DNSMASQ, ["--no-daemon", `--conf-file=${conf}`], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout?.on("data", (d) => {
      log += d;
    });
    child.stderr?.on("data", (d) => {
      log += d;
    });
    for (let i = 0; i < 50 && child.exitCode === null; i++) {
      try {
        await queryTxtUdp(records[0]![0], { host: "127.0.0.1", port, family: 4 }, 200);
        return {
          server: `127.0.0.1:${port}`,
          stop: async () => {
            if (child.exitCode === null) {
              const exited = new Promise((r) => child.once("exit", r));
              child.kill("SIGTERM");
              await exited;
            }
            rmSync(dir, { recursive: true, force: true });
          },
        };
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    child.kill("SIGKILL");
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error(`dnsmasq did not start:\n${log}`);
}
