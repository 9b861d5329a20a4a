import { execFileSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { chmodSync, chownSync, lstatSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import {
  fingerprint,
  formatOpenSshPrivateKey,
  formatSshPublicKey,
  parsePrivateKey,
} from "../../protocol/keys.ts";
import { type InstalledPaths, installedPaths } from "../elevation/paths.ts";
import { CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";

/**
 * Where the Nest and its agents live on this machine, and the root-only steps that set them up
 * (service users, HOMEs, keys). Every path derives from the installation (paths.json next to the
 * installed executable, as for the shim's policy: cli/elevation/paths.ts), never from argv or the
 * environment; a test installs into a temporary prefix to move them.
 *
 *   $(LOCALSTATEDIR)/lib/apes-nest            HOME of _apes-nest (0700): key, session, .local/state/apes/
 *   $(SYSCONFDIR)/apes/nest.toml              the Nest's settings (root:root 0644)
 *   $(LOCALSTATEDIR)/lib/apes-agents/<name>   HOME of agent <name> (0700, its own user)
 *   $(SYSCONFDIR)/apes/agents/<name>.json     what `apes agents run <name>` starts (root:root 0644)
 *   $(SYSCONFDIR)/apes/secrets/<secret>       secrets by name (root:root 0600), copied at provision
 *                                             into the agent's HOME (0400, the agent's own)
 */

export const NEST_USER = "_apes-nest";

export interface NestLayout {
  installed: InstalledPaths;
  home: string;
  configDir: string;
  keyPath: string;
  stateDir: string;
  config: string;
  agentsHome: string;
  agentSpecs: string;
  secrets: string;
}

export function nestLayout(installed: InstalledPaths = installedPaths()): NestLayout {
  const home = join(installed.localstatedir, "lib", "apes-nest");
  const configDir = join(home, ".config", "apes");
  return {
    installed,
    home,
    configDir,
    keyPath: join(configDir, "id_ed25519"),
    stateDir: join(home, ".local", "state", "apes"),
    config: join(installed.sysconfdir, "apes", "nest.toml"),
    agentsHome: join(installed.localstatedir, "lib", "apes-agents"),
    agentSpecs: join(installed.sysconfdir, "apes", "agents"),
    secrets: join(installed.sysconfdir, "apes", "secrets"),
  };
}

export function requireRoot(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new CliError(`${what} must run as root`, {
      exitCode: ExitCode.NOPERM,
      hint: "run it with sudo, or through the elevation path: apes --reason ... -- apes ...",
    });
  }
}

export interface SystemUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

export function lookupUser(name: string): SystemUser | undefined {
  try {
    const f = execFileSync("/usr/bin/getent", ["passwd", name], { encoding: "utf8" }).trim().split(":");
    return { name, uid: Number(f[2]), gid: Number(f[3]), home: f[5]!, shell: f[6]! };
  } catch {
    return undefined;
  }
}

/**
 * Creates a system user (its own group, no shell, no login) when missing; idempotent. Retries while
 * another useradd holds the passwd lock. An existing user with a login shell is refused: that is not
 * one we made.
 */
export function ensureSystemUser(name: string, home: string): { user: SystemUser; created: boolean } {
  for (let attempt = 0; ; attempt++) {
    const found = lookupUser(name);
    if (found) {
      if (!/\/(nologin|false)$/.test(found.shell))
        throw new CliError(
          `the user ${name} exists with the login shell ${found.shell}; refusing to use it`,
          {
            exitCode: ExitCode.CONFIG,
          },
        );
      return { user: found, created: attempt > 0 };
    }
    try {
      execFileSync(
        "/usr/sbin/useradd",
        [
          "--system",
          "--user-group",
          "--no-create-home",
          "--shell",
          "/usr/sbin/nologin",
          "--home-dir",
          home,
          name,
        ],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
    } catch (e) {
      if (attempt >= 20) throw new CliError(`cannot create the user ${name}: ${(e as Error).message}`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    }
  }
}

/** A directory owned by the user, 0700; an existing one is tightened (never a symlink). */
export function ownedDir(path: string, user: SystemUser, mode = 0o700): void {
  // Parents the recursive mkdir creates get 0755 (a 0700 root-owned /var/lib would lock the user out).
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  mkdirSync(path, { mode, recursive: true });
  const st = lstatSync(path);
  if (!st.isDirectory()) throw new CliError(`${path} is not a directory`, { exitCode: ExitCode.CONFIG });
  chownSync(path, user.uid, user.gid);
  chmodSync(path, mode);
}

/**
 * The identity's Ed25519 key at `path` (OpenSSH format, as `apes keygen` writes it): kept when there
 * (idempotent), else created 0600 for the user with its `.pub` beside it.
 */
export function ensureKey(
  path: string,
  user: SystemUser,
  comment: string,
): { publicLine: string; fingerprint: string; created: boolean } {
  let created = false;
  let text: string;
  try {
    const st = lstatSync(path);
    if (!st.isFile()) throw new CliError(`${path} is not a regular file`, { exitCode: ExitCode.CONFIG });
    text = readFileSync(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    const { privateKey } = generateKeyPairSync("ed25519");
    text = formatOpenSshPrivateKey(privateKey, comment);
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, text, { mode: 0o600, flag: "wx" });
    chownSync(tmp, user.uid, user.gid);
    renameSync(tmp, path);
    created = true;
  }
  chownSync(path, user.uid, user.gid);
  chmodSync(path, 0o600);
  const key = parsePrivateKey(text);
  const publicLine = formatSshPublicKey(key, comment);
  writeFileSync(`${path}.pub`, `${publicLine}\n`, { mode: 0o644 });
  chownSync(`${path}.pub`, user.uid, user.gid);
  return { publicLine, fingerprint: fingerprint(key), created };
}

/** This machine's short name, as an agent name part: lower case, [a-z0-9-]. */
export function hostPart(name: string = hostname()): string {
  const short = name
    .split(".")[0]!
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, "-")
    .replace(/^-+|-+$/g, "");
  return (short || "host").slice(0, 30);
}
