import { createHash } from "node:crypto";

/** Prefix of the unambiguous hash form (docs/protocol.md, section 3). */
export const CMD_HASH_PREFIX = "SHA-256:";

/**
 * Canonical cmd_hash: "SHA-256:" + lowercase hex SHA-256 of the UTF-8 bytes of JSON.stringify(argv).
 * JSON framing keeps element boundaries, so ["a b"] and ["a","b"] hash differently.
 */
export function cmdHash(argv: readonly string[]): string {
  assertArgv(argv);
  return CMD_HASH_PREFIX + createHash("sha256").update(JSON.stringify(argv), "utf8").digest("hex");
}

/**
 * The older, ambiguous form (bare hex over argv joined by spaces). Kept only to recognise what
 * existing IdPs send; never the only thing a verifier checks.
 */
export function legacyCmdHash(argv: readonly string[]): string {
  assertArgv(argv);
  return createHash("sha256").update(argv.join(" "), "utf8").digest("hex");
}

export function isCanonicalCmdHash(value: unknown): value is string {
  return typeof value === "string" && /^SHA-256:[0-9a-f]{64}$/.test(value);
}

function assertArgv(argv: readonly string[]): void {
  if (!Array.isArray(argv) || argv.length === 0) throw new TypeError("argv must be a non-empty array");
  for (const a of argv) if (typeof a !== "string") throw new TypeError("argv elements must be strings");
}

/** True when every element is well-formed Unicode (no lone surrogates), i.e. encodes to UTF-8 losslessly. */
export function isWellFormedArgv(argv: readonly string[]): boolean {
  return argv.every((a) => a.isWellFormed());
}
