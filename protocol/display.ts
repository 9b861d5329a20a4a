/**
 * Showing untrusted strings to a person. Every string that came from an IdP, a grant, a DNS record or
 * an error detail goes through one of these before it reaches a terminal (or, later, a page), so that
 * what a person reads is what the bytes say: no escape sequence, carriage return, backspace, bidi
 * override or invisible character can move the cursor, hide text or reorder it.
 *
 * The escapes follow bash's ANSI-C quoting ($'...'): `\x1b`, `\u202e`, `\U0001f600`, `\\`, so an argv
 * rendered by `visibleArgv` can be pasted back into a shell and gives the same bytes.
 */

/**
 * Characters that are never shown as themselves: every control (C0, DEL, C1), format characters
 * (bidi marks, overrides and isolates, zero-width joiners and spaces, soft hyphen, BOM), line and
 * paragraph separators, every space other than U+0020 (look-alike blanks), private-use, unassigned and
 * lone surrogates.
 */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}\p{Cs}\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]/u;
const UNSAFE_GLOBAL = new RegExp(UNSAFE.source, "gu");

/** True when `text` holds a character that `visible` would escape (a control, format or odd space). */
export function hasUnsafeChars(text: string): boolean {
  return UNSAFE.test(text);
}

function escapeChar(ch: string): string {
  const cp = ch.codePointAt(0) ?? 0;
  if (cp === 0x0a) return "\\n";
  if (cp === 0x09) return "\\t";
  if (cp === 0x0d) return "\\r";
  if (cp < 0x100) return `\\x${cp.toString(16).padStart(2, "0")}`;
  if (cp < 0x10000) return `\\u${cp.toString(16).padStart(4, "0")}`;
  return `\\U${cp.toString(16).padStart(8, "0")}`;
}

export interface VisibleOptions {
  /** Cut after this many characters of the input and say how many were left out. */
  max?: number;
}

function cut(text: string, max: number | undefined): { text: string; omitted: number } {
  if (max === undefined || text.length <= max) return { text, omitted: 0 };
  return { text: text.slice(0, max), omitted: text.length - max };
}

/**
 * `text` with every unsafe character (and the backslash, so that escapes cannot be faked) written as
 * an escape. Plain text, including non-ASCII letters, is left as it is.
 */
export function visible(text: string, options: VisibleOptions = {}): string {
  const { text: head, omitted } = cut(text, options.max);
  const shown = head.replaceAll("\\", "\\\\").replace(UNSAFE_GLOBAL, escapeChar);
  return omitted > 0 ? `${shown}… (${omitted} more characters)` : shown;
}

/** Characters a shell word may hold unquoted. */
const SHELL_PLAIN = /^[A-Za-z0-9_@%+=:,./-]+$/;

/**
 * One argument as a shell word that shows its exact bytes: bare when plain, in single quotes when it
 * only needs quoting, and in `$'...'` with escapes when it holds anything unsafe or a backslash.
 * `nonAscii: true` also escapes every non-ASCII character (for a program name, where a homoglyph
 * such as a Cyrillic "с" would otherwise pass for a Latin "c").
 */
export function shellWord(arg: string, options: { nonAscii?: boolean } = {}): string {
  if (SHELL_PLAIN.test(arg)) return arg;
  const needsEscapes =
    hasUnsafeChars(arg) || arg.includes("\\") || (options.nonAscii && /[^\x20-\x7e]/.test(arg));
  if (!needsEscapes) return `'${arg.replaceAll("'", `'\\''`)}'`;
  let body = "";
  for (const ch of arg) {
    const cp = ch.codePointAt(0) ?? 0;
    if (ch === "\\") body += "\\\\";
    else if (ch === "'") body += "\\'";
    else if (UNSAFE.test(ch) || (options.nonAscii && (cp < 0x20 || cp > 0x7e))) body += escapeChar(ch);
    else body += ch;
  }
  return `$'${body}'`;
}

/**
 * An argv as the shell command that runs exactly it: every element a separate, unambiguous word
 * (an empty argument shows as ''), the program name with non-ASCII escaped too.
 */
export function visibleArgv(argv: readonly string[]): string {
  return argv.map((arg, i) => (arg === "" ? "''" : shellWord(arg, { nonAscii: i === 0 }))).join(" ");
}

/**
 * The warning every display of a command shows when its argv is not what it looks like: it holds a
 * control, invisible or bidi character, or its program name is not plain ASCII (a homoglyph such as
 * "сurl" with a Cyrillic "с"). Undefined for an ordinary command. Derived from the command itself,
 * so any grant from any IdP is marked the same way.
 */
export function commandWarning(argv: readonly string[]): string | undefined {
  const unsafe = argv.some(hasUnsafeChars);
  const foreignProgram = argv.length > 0 && /[^\x20-\x7e]/.test(argv[0]!);
  if (!unsafe && !foreignProgram) return undefined;
  const what = [
    ...(unsafe ? ["control or invisible characters"] : []),
    ...(foreignProgram ? ["a non-ASCII program name"] : []),
  ].join(" and ");
  return `warning: this command contains ${what} (shown escaped)`;
}
