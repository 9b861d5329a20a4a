import { execFile } from "node:child_process";
import type { KeyObject } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatOpenSshPrivateKey } from "../../protocol/keys.ts";
import { apesBin, newKey } from "../helpers/idp.ts";

/**
 * One person or agent on this machine for the CLI integration tests: its own HOME and XDG dirs,
 * its own key, and `run(...)` driving the built dist/apes with that environment only.
 */
export interface CliUser {
  email: string;
  home: string;
  keyPath: string;
  privateKey: KeyObject;
  publicLine: string;
  env: Record<string, string>;
  run(
    args: string[],
    extraEnv?: Record<string, string>,
  ): Promise<{ code: number; stdout: string; stderr: string }>;
  authJson(): Record<string, unknown>;
}

export function cliUser(email: string, idpUrl: string, format: "openssh" | "pkcs8" = "openssh"): CliUser {
  const home = mkdtempSync(join(tmpdir(), "apes-cli-home-"));
  const { privateKey, publicLine } = newKey(email);
  mkdirSync(join(home, ".ssh"), { mode: 0o700 });
  const keyPath = join(home, ".ssh", "id_ed25519");
  writeFileSync(
    keyPath,
    format === "openssh"
      ? formatOpenSshPrivateKey(privateKey, email)
      : (privateKey.export({ format: "pem", type: "pkcs8" }) as string),
    { mode: 0o600 },
  );
  writeFileSync(`${keyPath}.pub`, `${publicLine}\n`);
  // A minimal environment: nothing of the test runner's own HOME or config leaks in.
  const env: Record<string, string> = {
    HOME: home,
    XDG_CONFIG_HOME: join(home, ".config"),
    XDG_CACHE_HOME: join(home, ".cache"),
    XDG_STATE_HOME: join(home, ".local/state"),
    XDG_DATA_HOME: join(home, ".local/share"),
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    APES_IDP: idpUrl,
  };
  const user: CliUser = {
    email,
    home,
    keyPath,
    privateKey,
    publicLine,
    env,
    run: (args, extraEnv = {}) => runWith(args, { ...env, ...extraEnv }),
    authJson: () => JSON.parse(readFileSync(join(home, ".config/apes/auth.json"), "utf8")),
  };
  return user;
}

export function runWith(
  args: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(apesBin(), args, { env, timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Counts successful key logins of `email` in the IdP's JSON log. */
export function loginCount(logs: string, email: string): number {
  let n = 0;
  for (const line of logs.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const e = JSON.parse(line) as { msg?: string; sub?: string };
      if (e.msg === "login" && e.sub === email) n++;
    } catch {
      // partial line
    }
  }
  return n;
}

export function jwtClaims(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"));
}
