import { domainToUnicode } from "node:url";
import { hasUnsafeChars } from "./display.ts";

/**
 * Identities (the email-shaped names of humans and agents): one rule, used by the IdP for every
 * identity it stores, looks up or compares and by the CLI for the ones it is given, so that two
 * names a person cannot tell apart are never two users.
 *
 * - Unicode NFC, then lower-cased (Unicode default case mapping, locale-independent: "I" is "i",
 *   never a Turkish dotless "ı"), local part and domain alike; that form is stored and compared.
 * - Refused: control, bidi and invisible characters (protocol/display.ts), compatibility
 *   characters (fullwidth letters, ligatures, mathematical letters: NFKC would change them),
 *   the dotless ı/ȷ, long s ſ and dotted İ, and letters of more than one script in the local part
 *   or in one domain label (Latin with Cyrillic or Greek ...; Latin with Han, kana or Hangul is
 *   allowed, as UTS #39 "highly restrictive" does).
 * - Shape: `local@domain`, local part of 1-64 characters without spaces or `@<>()[]\,;:"`, domain
 *   of LDH labels in ASCII (an internationalised domain in its `xn--` form; its Unicode form is
 *   checked for mixed scripts too); at most 254 characters.
 *
 * Not caught: a name written wholly in another script that looks like a Latin one (Cyrillic
 * "аlісе" is its own, single-script name).
 */

export type IdentityCheck = { ok: true; identity: string } | { ok: false; reason: string };

const MAX_LENGTH = 254;

const SHAPE =
  /^[^\s@<>()[\]\\,;:"]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** Latin letters that pass for others: dotless i and j, long s, capital I with dot. */
const LOOKALIKE_LATIN = /[\u0131\u0237\u017f\u0130]/u;

/** Scripts told apart (a letter in none of them counts as "other"). */
const SCRIPTS: readonly [string, RegExp][] = [
  "Latin",
  "Greek",
  "Cyrillic",
  "Armenian",
  "Hebrew",
  "Arabic",
  "Devanagari",
  "Bengali",
  "Tamil",
  "Thai",
  "Georgian",
  "Ethiopic",
  "Cherokee",
  "Hangul",
  "Hiragana",
  "Katakana",
  "Han",
  "Bopomofo",
].map((s) => [s, new RegExp(`\\p{Script=${s}}`, "u")]);

/** The script combinations UTS #39 allows in one "highly restrictive" identifier. */
const ALLOWED_MIXES: readonly (readonly string[])[] = [
  ["Latin", "Han", "Hiragana", "Katakana"],
  ["Latin", "Han", "Bopomofo"],
  ["Latin", "Han", "Hangul"],
];

function scriptsOf(text: string): Set<string> {
  const scripts = new Set<string>();
  for (const ch of text) {
    if (!/\p{L}/u.test(ch)) continue; // digits, punctuation, combining marks: no script of their own
    scripts.add(SCRIPTS.find(([, re]) => re.test(ch))?.[0] ?? "other");
  }
  return scripts;
}

function mixedScripts(text: string): boolean {
  const scripts = [...scriptsOf(text)];
  if (scripts.length <= 1) return false;
  return !ALLOWED_MIXES.some((mix) => scripts.every((s) => mix.includes(s)));
}

/** The stored and compared form of an identity, or why it is refused. */
export function normalizeIdentity(value: unknown): IdentityCheck {
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_LENGTH * 4) {
    return { ok: false, reason: "an identity is an email address of at most 254 characters" };
  }
  if (hasUnsafeChars(value)) return { ok: false, reason: "contains control, bidi or invisible characters" };
  if (!value.isWellFormed()) return { ok: false, reason: "contains malformed Unicode" };
  const nfc = value.normalize("NFC");
  if (nfc.normalize("NFKC") !== nfc) {
    return { ok: false, reason: "contains compatibility characters (e.g. fullwidth letters or ligatures)" };
  }
  if (LOOKALIKE_LATIN.test(nfc))
    return { ok: false, reason: "contains a dotless i or j, a long s or a dotted I" };
  const identity = nfc.toLowerCase().normalize("NFC");
  if (identity.length > MAX_LENGTH || !SHAPE.test(identity)) {
    return { ok: false, reason: "is not an email address (local@domain, the domain in ASCII or xn-- form)" };
  }
  const at = identity.lastIndexOf("@");
  if (mixedScripts(identity.slice(0, at))) {
    return { ok: false, reason: "mixes letters of different scripts in the local part" };
  }
  for (const label of identity.slice(at + 1).split(".")) {
    if (!label.startsWith("xn--")) continue;
    const unicode = domainToUnicode(label);
    if (unicode === "" || unicode.startsWith("xn--") || hasUnsafeChars(unicode))
      return { ok: false, reason: "has an invalid xn-- domain label" };
    if (mixedScripts(unicode))
      return { ok: false, reason: "mixes letters of different scripts in a domain label" };
  }
  return { ok: true, identity };
}

/** The normalised identity, or undefined when it is refused (for lookups: a refused name is nobody). */
export function canonicalIdentity(value: unknown): string | undefined {
  const r = normalizeIdentity(value);
  return r.ok ? r.identity : undefined;
}

/**
 * Grant ids as any IdP may mint them: URL-unreserved characters (RFC 3986), so one is safe in a
 * path segment, an argument and a terminal as it is. This IdP's own are UUIDs.
 */
export const GRANT_ID = /^[A-Za-z0-9._~-]{1,128}$/;

export function isGrantId(value: unknown): value is string {
  return typeof value === "string" && GRANT_ID.test(value);
}

/**
 * Unix user names, for `--as`, the policy's `run_as` and `[users]`: POSIX-portable (useradd's
 * default rule), plus the `$` of machine accounts.
 */
export const UNIX_USER = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/;

export function isUnixUser(value: unknown): value is string {
  return typeof value === "string" && UNIX_USER.test(value);
}

/** The user a command runs as when neither `--as` nor the grant's `run_as` names one (the shim's too). */
export const DEFAULT_RUN_AS = "root";
