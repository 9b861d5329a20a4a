import type { KeyObject } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { fingerprint, KeyFormatError, parsePrivateKey } from "../protocol/keys.ts";
import type { ClientContext } from "./context.ts";
import { ClientError } from "./errors.ts";

/**
 * Private keys for Ed25519 login. Default location, in order: `<configDir>/id_ed25519` (what
 * `apes keygen` writes), then `~/.ssh/id_ed25519`.
 */

export interface LoadedKey {
  path: string;
  key: KeyObject;
  fingerprint: string;
}

type KeyContext = Pick<ClientContext, "paths" | "env">;

export function apesKeyPath(ctx: Pick<ClientContext, "paths">): string {
  return join(ctx.paths.configDir, "id_ed25519");
}

export function homeDir(ctx: Pick<ClientContext, "env">): string {
  if (ctx.env.HOME) return ctx.env.HOME;
  try {
    return homedir();
  } catch {
    return "/";
  }
}

export function defaultKeyCandidates(ctx: KeyContext): string[] {
  return [apesKeyPath(ctx), join(homeDir(ctx), ".ssh", "id_ed25519")];
}

/**
 * Reads and parses a private key. `email` is set when a session's renewal needs the key, so the
 * caller can say how to log in again with a moved one.
 */
export async function loadPrivateKey(
  ctx: Pick<ClientContext, "warn">,
  path: string,
  options: { email?: string } = {},
): Promise<LoadedKey> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what =
      code === "ENOENT"
        ? "does not exist"
        : code === "EACCES"
          ? "is not readable by you"
          : (e as Error).message;
    throw new ClientError("key_unreadable", `the private key ${path} ${what}`, {
      path,
      ...(code ? { code } : {}),
      ...(options.email ? { email: options.email } : {}),
    });
  }
  try {
    const st = await stat(path);
    if ((st.mode & 0o077) !== 0) ctx.warn({ kind: "key_mode", path, mode: st.mode & 0o777 });
  } catch {
    // stat after a successful read only feeds the warning.
  }
  let key: KeyObject;
  try {
    key = parsePrivateKey(text);
  } catch (e) {
    if (e instanceof KeyFormatError && e.encrypted) {
      throw new ClientError(
        "key_encrypted",
        `the private key ${path} is protected by a passphrase; apes signs unattended and needs an unencrypted key`,
        { path },
      );
    }
    throw new ClientError("key_invalid", `cannot use ${path}: ${(e as Error).message}`, { path });
  }
  return { path, key, fingerprint: fingerprint(key) };
}
