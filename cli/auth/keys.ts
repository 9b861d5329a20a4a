import type { KeyObject } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { fingerprint, KeyFormatError, parsePrivateKey, parseSshPublicKey } from "../../protocol/keys.ts";
import type { Context } from "../context.ts";
import { CliError, configError, usageError } from "../errors.ts";

/**
 * Private keys for Ed25519 login. Default location, in order: `$XDG_CONFIG_HOME/apes/id_ed25519`
 * (what `apes keygen` writes), then `~/.ssh/id_ed25519`.
 */

export interface LoadedKey {
  path: string;
  key: KeyObject;
  fingerprint: string;
}

export function apesKeyPath(ctx: Context): string {
  return join(ctx.paths.configDir, "id_ed25519");
}

function home(ctx: Context): string {
  if (ctx.env.HOME) return ctx.env.HOME;
  try {
    return homedir();
  } catch {
    return "/";
  }
}

export function defaultKeyCandidates(ctx: Context): string[] {
  return [apesKeyPath(ctx), join(home(ctx), ".ssh", "id_ed25519")];
}

export function expandPath(ctx: Context, p: string): string {
  if (p === "~") return home(ctx);
  if (p.startsWith("~/")) return join(home(ctx), p.slice(2));
  return isAbsolute(p) ? p : resolve(p);
}

/** The key path to use: the explicit one, or the first default that exists. */
export async function chooseKeyPath(ctx: Context, explicit?: string): Promise<string> {
  if (explicit) return expandPath(ctx, explicit);
  const candidates = defaultKeyCandidates(ctx);
  for (const c of candidates) {
    if (await exists(c)) return c;
  }
  throw usageError(
    `no private key found (looked at ${candidates.join(", ")})`,
    "create one with `apes keygen` and register its .pub at your IdP, or pass `--key PATH`",
  );
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Reads and parses a private key. `context` says how we got here, so a missing key during
 * re-authentication names the command that fixes it.
 */
export async function loadPrivateKey(
  ctx: Context,
  path: string,
  options: { fixCommand?: string } = {},
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
    throw configError(
      `the private key ${path} ${what}`,
      options.fixCommand
        ? `if the key moved, log in again with it: \`${options.fixCommand}\``
        : "pass the right file with `--key PATH`, or create one with `apes keygen`",
    );
  }
  try {
    const st = await stat(path);
    if ((st.mode & 0o077) !== 0) {
      ctx.io.stderr.write(
        `apes: warning: ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)}); run \`chmod 600 ${path}\`\n`,
      );
    }
  } catch {
    // stat after a successful read only feeds the warning.
  }
  let key: KeyObject;
  try {
    key = parsePrivateKey(text);
  } catch (e) {
    if (e instanceof KeyFormatError && e.encrypted) {
      throw new CliError(
        `the private key ${path} is protected by a passphrase; apes signs unattended and needs an unencrypted key`,
        {
          exitCode: 78,
          hint: `create a dedicated key with \`apes keygen\` and register its .pub at your IdP,\nor remove the passphrase from a copy: \`cp ${path} ${path}.apes && ssh-keygen -p -N "" -f ${path}.apes\``,
        },
      );
    }
    throw configError(
      `cannot use ${path}: ${(e as Error).message}`,
      "give an Ed25519 private key (OpenSSH or PKCS#8 PEM) with `--key PATH`",
    );
  }
  return { path, key, fingerprint: fingerprint(key) };
}

/** The comment of `<key>.pub` when it looks like an email (what `apes keygen --email` writes). */
export async function emailFromPublicKey(keyPath: string): Promise<string | undefined> {
  try {
    const { comment } = parseSshPublicKey(await readFile(`${keyPath}.pub`, "utf8"));
    return looksLikeEmail(comment) ? comment : undefined;
  } catch {
    return undefined;
  }
}

export function looksLikeEmail(s: string): boolean {
  return /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(s) || /^[^\s@]+@[^\s@]+$/.test(s);
}
