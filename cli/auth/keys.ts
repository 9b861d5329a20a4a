import { readFile, stat } from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { defaultKeyCandidates, homeDir } from "../../client/keys.ts";
import { parseSshPublicKey } from "../../protocol/keys.ts";
import type { Context } from "../context.ts";
import { usageError } from "../errors.ts";

/**
 * Choosing a key on the command line (`--key`, the default locations of client/keys.ts, which also
 * loads keys) and reading an email from its `.pub`.
 */

export function expandPath(ctx: Context, p: string): string {
  if (p === "~") return homeDir(ctx);
  if (p.startsWith("~/")) return join(homeDir(ctx), p.slice(2));
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
