// Man pages and shell completions, generated from the commander definitions (cli/program.ts), so
// they never drift from the commands: `node scripts/gen-docs.ts OUT_DIR` writes
//   OUT_DIR/man/apes.1, apes-<command>.1 (one per top-level command or group), apes-config.5
//   OUT_DIR/completions/apes.bash, _apes (zsh), apes.fish
// Hidden commands and options (the shim's helpers) are left out, as in `--help`. The page date is
// SOURCE_DATE_EPOCH's when set (reproducible builds), else today's. Runs offline on the pinned node.
import type { EventEmitter } from "node:events";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command, Help, Option } from "commander";
import { EXIT_CODE_DESCRIPTIONS } from "../cli/exit-codes.ts";
import { buildProgram } from "../cli/program.ts";
import { VERSION } from "../cli/version.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

export interface OptionDoc {
  flags: string;
  short?: string;
  long?: string;
  /** The value's placeholder (`<d>` → "d"); undefined for a flag. */
  value?: string;
  description: string;
  choices?: string[];
}

export interface CommandDoc {
  /** Words after `apes` (empty for the program itself). */
  path: string[];
  usage: string;
  description: string;
  options: OptionDoc[];
  /** Text added with addHelpText("after", ...) (examples, notes), as `--help` prints it. */
  after: string;
  subcommands: CommandDoc[];
}

/** The visible command tree, read through commander's own Help (what `--help` shows). */
export async function commandTree(program?: Command): Promise<CommandDoc> {
  program ??= (await buildProgram()).program;
  const help = program.createHelp();
  const walk = (cmd: Command, path: string[]): CommandDoc => ({
    path,
    usage: help.commandUsage(cmd),
    description: cmd.description(),
    options: help.visibleOptions(cmd).map((o) => optionDoc(help, o)),
    after: afterHelp(cmd),
    subcommands: help.visibleCommands(cmd).map((sub) => walk(sub, [...path, sub.name()])),
  });
  return walk(program, []);
}

function optionDoc(help: Help, o: Option): OptionDoc {
  const value = /[<[]([^>\]]+)[>\]]/.exec(o.flags)?.[1];
  return {
    flags: o.flags,
    ...(o.short ? { short: o.short } : {}),
    ...(o.long ? { long: o.long } : {}),
    ...(value ? { value } : {}),
    description: help.optionDescription(o),
    ...(o.argChoices ? { choices: [...o.argChoices] } : {}),
  };
}

/** addHelpText("after") registers a listener on the afterHelp event: ask it for its text. */
function afterHelp(cmd: Command): string {
  let text = "";
  // Command is an EventEmitter at run time; its typings do not say so.
  (cmd as unknown as EventEmitter).emit("afterHelp", {
    error: false,
    command: cmd,
    write: (s: string) => (text += s),
  });
  return text.replace(/^\n+/, "").replace(/\s+$/, "");
}

/** Every command in the tree, depth first. */
export function allCommands(tree: CommandDoc): CommandDoc[] {
  return [tree, ...tree.subcommands.flatMap(allCommands)];
}

// ---- roff ----------------------------------------------------------------------------------------

/** Text for roff: backslashes and dashes escaped, non-ASCII as \[uXXXX], no line starting a request. */
export function roff(text: string): string {
  let out = "";
  for (const ch of text.replaceAll("\\", "\\e").replaceAll("-", "\\-")) {
    const cp = ch.codePointAt(0)!;
    out += cp > 0x7e ? `\\[u${cp.toString(16).toUpperCase().padStart(4, "0")}]` : ch;
  }
  return out.replace(/^([.'])/gm, "\\&$1");
}

/**
 * The after-help text: "Heading:" lines at column 0 become sections (`.SH HEADING`, in a page of its
 * own) or an italic lead-in (inside a command's subsection); the rest keeps its layout.
 */
function roffAfter(text: string, level: "section" | "inline"): string[] {
  if (!text) return [];
  const out: string[] = [];
  let inBlock = false;
  const close = () => {
    if (inBlock) out.push(".fi", ".RE");
    inBlock = false;
  };
  for (const line of text.split("\n")) {
    const title = /^([A-Z][^:]*):$/.exec(line);
    if (title) {
      close();
      if (level === "section") out.push(`.SH ${roff(title[1]!.toUpperCase())}`);
      else out.push(".PP", `.I ${quoted(`${roff(title[1]!)}:`)}`);
      continue;
    }
    if (line.trim() === "") {
      if (inBlock) out.push("");
      continue;
    }
    if (!inBlock) out.push(".RS 4", ".nf");
    inBlock = true;
    out.push(roff(line.replace(/^ {2}/, "")));
  }
  close();
  // No blank line right before the end of a block.
  return out.filter((l, i, a) => !(l === "" && a[i + 1] === ".fi"));
}

/** `-V, --version` in bold; the value placeholder of `--reason <text>` in italics. */
function optionTerm(o: OptionDoc): string {
  const m = /^(.*?)\s*([<[][^>\]]+[>\]])?$/.exec(o.flags)!;
  return `\\fB${roff(m[1]!)}\\fR${m[2] ? ` \\fI${roff(m[2])}\\fR` : ""}`;
}

function roffOptions(options: OptionDoc[]): string[] {
  return options.flatMap((o) => [".TP", optionTerm(o), roff(o.description)]);
}

/** A macro argument with spaces: quoted, a quote inside doubled (groff's rule). */
function quoted(s: string): string {
  return `"${s.replaceAll('"', '""')}"`;
}

function pageName(path: string[]): string {
  return ["apes", ...path].join("-");
}

function header(name: string, section: number, date: string): string[] {
  return [
    `.\\" Generated by scripts/gen-docs.ts from the command definitions; do not edit.`,
    `.TH ${roff(name.toUpperCase())} ${section} ${date} "apes ${roff(VERSION)}" "apes manual"`,
  ];
}

function leafSection(cmd: CommandDoc, level: ".SH" | ".SS"): string[] {
  const usage = roff(cmd.usage);
  const lines = [`${level} ${quoted(level === ".SH" ? "OPTIONS" : usage)}`];
  if (level === ".SS") lines.push(roff(cmd.description));
  lines.push(...roffOptions(cmd.options));
  lines.push(...roffAfter(cmd.after, level === ".SH" ? "section" : "inline"));
  return lines;
}

/** apes-<name>(1): a top-level command, or a group with all its subcommands. */
function commandPage(cmd: CommandDoc, globals: OptionDoc[], date: string): string {
  const name = pageName(cmd.path);
  const lines = [
    ...header(name, 1, date),
    ".SH NAME",
    `${roff(name)} \\- ${roff(cmd.description)}`,
    ".SH SYNOPSIS",
  ];
  const leaves = allCommands(cmd).filter((c) => c.subcommands.length === 0);
  for (const leaf of leaves) lines.push(`.B ${quoted(roff(leaf.usage))}`, ".br");
  lines.pop();
  lines.push(".SH DESCRIPTION", roff(cmd.description), ".PP", "Global options (see", ".BR apes (1))");
  const words = globals.map((o) => roff(o.long!));
  lines.push("may be given too:", ...words.map((w, i) => `.BR ${w} ${i === words.length - 1 ? "." : ","}`));
  if (cmd.subcommands.length === 0) {
    lines.push(...leafSection(cmd, ".SH"));
  } else {
    lines.push(...roffAfter(cmd.after, "section"));
    lines.push(".SH COMMANDS");
    for (const sub of allCommands(cmd).slice(1)) {
      if (sub.subcommands.length > 0) {
        lines.push(`.SS ${quoted(roff(sub.usage))}`, roff(sub.description));
        lines.push(...roffAfter(sub.after, "inline"));
      } else {
        lines.push(...leafSection(sub, ".SS"));
      }
    }
  }
  lines.push(
    ".SH EXIT STATUS",
    "See",
    ".BR apes (1).",
    ".SH SEE ALSO",
    ".BR apes (1),",
    ".BR apes\\-config (5)",
  );
  return `${lines.join("\n")}\n`;
}

/** apes(1): the program, its global options, every command, the exit statuses and the files. */
function mainPage(tree: CommandDoc, date: string): string {
  const lines = [
    ...header("apes", 1, date),
    ".SH NAME",
    `apes \\- ${roff(tree.description)}`,
    ".SH SYNOPSIS",
    ".B apes",
    "[\\fIglobal options\\fR] \\fIcommand\\fR [\\fIoptions\\fR] [\\fIarguments\\fR]",
    ".br",
    ".B apes",
    "[\\fB\\-\\-reason\\fR \\fIreason\\fR] [\\fIrun options\\fR] \\fB\\-\\-\\fR \\fIcommand\\fR [\\fIargs\\fR...]",
    ".SH DESCRIPTION",
    "In apes, AI agents, humans and daemons each have their own Ed25519 identity at an identity",
    "provider (IdP), and every privileged action an agent takes is approved by a human first.",
    "The form with",
    ".B \\-\\-",
    "is",
    '.BR "apes run" :',
    "it asks the IdP for a grant for exactly that command, waits until a human approves it, and the",
    "setuid shim runs the command as root (or",
    ".B \\-\\-as",
    "\\fIuser\\fR) once the grant is verified against the policy",
    ".RB ( apes\\-config (5)).",
    ".SH GLOBAL OPTIONS",
    ...roffOptions(tree.options),
    ".SH COMMANDS",
  ];
  for (const cmd of tree.subcommands) {
    lines.push(".TP", `.B apes ${roff(cmd.path.join(" "))}`, roff(cmd.description));
    lines.push(`(see \\fB${roff(pageName(cmd.path))}\\fR(1))`);
  }
  lines.push(...roffAfter(tree.after, "section"));
  lines.push(".SH EXIT STATUS", ".TP 6");
  for (const [code, name, text] of EXIT_CODE_DESCRIPTIONS) {
    lines.push(`.B ${code}`, `${roff(name)}: ${roff(text)}`, ".TP 6");
  }
  lines.pop();
  lines.push(
    ".SH ENVIRONMENT",
    ".TP",
    ".B APES_IDP, APES_CA_FILE, APES_DNS_SERVERS, APES_DOH_URL, APES_ALLOW_LOOPBACK_HTTP",
    "override the keys of the user configuration, see",
    ".BR apes\\-config (5).",
    ".TP",
    ".B APES_DEBUG=1",
    "as",
    ".BR \\-\\-debug .",
    ".TP",
    ".B NO_COLOR",
    "as",
    ".BR \\-\\-no\\-color .",
    ".SH FILES",
    ".TP",
    ".I ~/.config/apes/config.toml",
    "the user configuration (XDG_CONFIG_HOME), see",
    ".BR apes\\-config (5).",
    ".TP",
    ".I ~/.config/apes/auth.json",
    "the session of",
    '.BR "apes login"',
    "(0600): IdP, identity, token, key path.",
    ".TP",
    ".I /etc/apes/config.toml",
    "the elevation policy, root:root 0600, written by",
    '.BR "sudo apes trust" .',
    ".TP",
    ".I /var/log/apes/audit.log",
    "one JSON line per elevation decision (root only).",
    ".SH SEE ALSO",
    [...tree.subcommands.map((c) => `.BR ${roff(pageName(c.path))} (1),`), ".BR apes\\-config (5)"].join(
      "\n",
    ),
  );
  return `${lines.join("\n")}\n`;
}

function manDate(env: Readonly<Record<string, string | undefined>>): string {
  const epoch = Number(env.SOURCE_DATE_EPOCH);
  const when = Number.isFinite(epoch) && epoch > 0 ? new Date(epoch * 1000) : new Date();
  return when.toISOString().slice(0, 10);
}

// ---- completions ---------------------------------------------------------------------------------

/** `case` arms of a shell function from path -> words, in a fixed order. */
function caseArms(tree: CommandDoc, words: (cmd: CommandDoc) => string[], terminator: string): string[] {
  return allCommands(tree).map(
    (c) => `    ${shellQuote(c.path.join(" "))}) echo ${shellQuote(words(c).join(" "))}${terminator}`,
  );
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

const optionWords = (o: OptionDoc) => [o.short, o.long].filter((w): w is string => Boolean(w));
/** Program options that commander also accepts after a subcommand. */
const inherited = (tree: CommandDoc) =>
  tree.options.filter((o) => o.long !== "--version" && o.long !== "--help");
const optionsOf = (tree: CommandDoc, cmd: CommandDoc) =>
  cmd.path.length === 0 ? cmd.options : [...cmd.options, ...inherited(tree)];

/** `case` arms "path|option") ... for the options with a fixed set of values. */
function choiceArms(tree: CommandDoc, arm: (values: string[]) => string): string[] {
  return allCommands(tree).flatMap((c) =>
    optionsOf(tree, c)
      .filter((o) => o.choices)
      .flatMap((o) =>
        optionWords(o).map((w) => `    ${shellQuote(`${c.path.join(" ")}|${w}`)}) ${arm(o.choices!)} ;;`),
      ),
  );
}

export function bashCompletion(tree: CommandDoc): string {
  const choices = choiceArms(tree, (values) => `echo ${shellQuote(values.join(" "))}`);
  return `# bash completion for apes; generated by scripts/gen-docs.ts from the command definitions, do not edit.
_apes_subcommands() {
  case $1 in
${caseArms(tree, (c) => c.subcommands.map((s) => s.path.at(-1)!), " ;;").join("\n")}
  esac
}
_apes_options() {
  case $1 in
${caseArms(tree, (c) => optionsOf(tree, c).flatMap(optionWords), " ;;").join("\n")}
  esac
}
# Options that take a value: the next word is that value, not a command.
_apes_valued() {
  case $1 in
${caseArms(
  tree,
  (c) =>
    optionsOf(tree, c)
      .filter((o) => o.value)
      .flatMap(optionWords),
  " ;;",
).join("\n")}
  esac
}
_apes_choices() {
  case $1 in
${choices.join("\n")}
  esac
}
_apes() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} path="" word i
  COMPREPLY=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=\${COMP_WORDS[i]}
    if [[ $word == -- ]]; then
      # After \`--\` comes the command to run: a command name, then its arguments.
      if ((i == COMP_CWORD - 1)); then
        mapfile -t COMPREPLY < <(compgen -c -- "$cur")
      else
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      fi
      return
    elif [[ $word == -* ]]; then
      [[ $word != *=* && " $(_apes_valued "$path") " == *" $word "* ]] && ((i++))
    elif [[ " $(_apes_subcommands "$path") " == *" $word "* ]]; then
      path="\${path:+$path }$word"
    fi
  done
  if [[ $prev == -* && " $(_apes_valued "$path") " == *" $prev "* ]]; then
    local values
    values=$(_apes_choices "$path|$prev")
    if [[ -n $values ]]; then
      mapfile -t COMPREPLY < <(compgen -W "$values" -- "$cur")
    else
      mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    fi
  elif [[ $cur == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$(_apes_options "$path")" -- "$cur")
  else
    mapfile -t COMPREPLY < <(compgen -W "$(_apes_subcommands "$path")" -- "$cur")
  fi
}
complete -o default -F _apes apes
`;
}

function zshEscape(s: string): string {
  return s.replaceAll("\\", "\\\\").replaceAll(":", "\\:");
}

export function zshCompletion(tree: CommandDoc): string {
  const described = (pairs: Array<[string, string]>) =>
    pairs.map(([w, d]) => shellQuote(`${zshEscape(w)}:${d}`)).join(" ");
  const arms = (f: (c: CommandDoc) => Array<[string, string]>) =>
    allCommands(tree).map((c) => `    ${shellQuote(c.path.join(" "))}) reply=(${described(f(c))}) ;;`);
  return `#compdef apes
# zsh completion for apes; generated by scripts/gen-docs.ts from the command definitions, do not edit.
_apes_subcommands() {
  case $1 in
${arms((c) => c.subcommands.map((s) => [s.path.at(-1)!, s.description])).join("\n")}
    *) reply=() ;;
  esac
}
_apes_options() {
  case $1 in
${arms((c) => optionsOf(tree, c).flatMap((o) => optionWords(o).map((w): [string, string] => [w, o.description]))).join("\n")}
    *) reply=() ;;
  esac
}
_apes_valued() {
  case $1 in
${arms((c) =>
  optionsOf(tree, c)
    .filter((o) => o.value)
    .flatMap((o) => optionWords(o).map((w): [string, string] => [w, o.value!])),
).join("\n")}
    *) reply=() ;;
  esac
}
_apes_choices() {
  case $1 in
${choiceArms(tree, (values) => `reply=(${values.map(shellQuote).join(" ")})`).join("\n")}
    *) reply=() ;;
  esac
}
_apes() {
  local path="" word i
  local -a reply names
  for ((i = 2; i < CURRENT; i++)); do
    word=$words[i]
    if [[ $word == -- ]]; then
      # After \`--\` comes the command to run.
      shift $i words
      (( CURRENT -= i ))
      _normal
      return
    elif [[ $word == -* ]]; then
      _apes_valued "$path"
      names=(\${reply%%:*})
      [[ $word != *=* && \${names[(Ie)$word]} -gt 0 ]] && ((i++))
    else
      _apes_subcommands "$path"
      names=(\${reply%%:*})
      (( \${names[(Ie)$word]} )) && path="\${path:+$path }$word"
    fi
  done
  _apes_valued "$path"
  names=(\${reply%%:*})
  if [[ -n $words[CURRENT-1] && \${names[(Ie)$words[CURRENT-1]]} -gt 0 ]]; then
    _apes_choices "$path|$words[CURRENT-1]"
    if (( $#reply )); then compadd -a reply; else _files; fi
  elif [[ $PREFIX == -* ]]; then
    _apes_options "$path"
    _describe -t options option reply
  else
    _apes_subcommands "$path"
    (( $#reply )) && _describe -t commands command reply
  fi
}
_apes "$@"
`;
}

export function fishCompletion(tree: CommandDoc): string {
  const q = shellQuote;
  const lines = [
    "# fish completion for apes; generated by scripts/gen-docs.ts from the command definitions, do not edit.",
    "function __apes_subcommands",
    "    switch $argv[1]",
    ...allCommands(tree).map(
      (c) =>
        `        case ${q(c.path.join(" "))}\n            echo ${q(c.subcommands.map((s) => s.path.at(-1)).join(" "))}`,
    ),
    "    end",
    "end",
    "function __apes_valued",
    "    switch $argv[1]",
    ...allCommands(tree).map(
      (c) =>
        `        case ${q(c.path.join(" "))}\n            echo ${q(
          optionsOf(tree, c)
            .filter((o) => o.value)
            .flatMap(optionWords)
            .join(" "),
        )}`,
    ),
    "    end",
    "end",
    "# The command path typed so far (option values skipped); -- or --args after `--`.",
    "function __apes_path",
    "    set -l words (commandline -opc)",
    "    set -e words[1]",
    '    set -l path ""',
    "    set -l skip 0",
    "    for i in (seq (count $words))",
    "        set -l word $words[$i]",
    "        if test $skip = 1",
    "            set skip 0",
    "        else if test $word = --",
    "            # After `--` comes the command to run, then its arguments.",
    "            test $i = (count $words); and echo -- --; or echo -- --args",
    "            return",
    "        else if string match -q -- '-*' $word",
    '            if not string match -q -- "*=*" $word; and contains -- $word (string split -- " " (__apes_valued "$path"))',
    "                set skip 1",
    "            end",
    '        else if contains -- $word (string split -- " " (__apes_subcommands "$path"))',
    '            set path (string trim "$path $word")',
    "        end",
    "    end",
    '    echo "$path"',
    "end",
    "# Every completion line asks this: the path is worked out once per command line.",
    "function __apes_at",
    "    set -l line (commandline -opc | string join ' ')",
    '    if test "$line" != "$__apes_line"; or not set -q __apes_current',
    "        set -g __apes_line $line",
    "        set -g __apes_current (__apes_path)",
    "    end",
    '    test "$__apes_current" = "$argv[1]"',
    "end",
    "complete -c apes -e",
    "complete -c apes -n '__apes_at --' -x -a '(__fish_complete_command)'",
    "complete -c apes -n '__apes_at --args' -F",
  ];
  for (const c of allCommands(tree)) {
    const at = q(`__apes_at ${q(c.path.join(" "))}`);
    for (const s of c.subcommands) {
      lines.push(`complete -c apes -n ${at} -f -a ${q(s.path.at(-1)!)} -d ${q(s.description)}`);
    }
    for (const o of optionsOf(tree, c)) {
      const parts = [`complete -c apes -n ${at}`];
      if (o.short) parts.push(`-s ${o.short.slice(1)}`);
      if (o.long) parts.push(`-l ${o.long.slice(2)}`);
      if (o.choices) parts.push(`-x -a ${q(o.choices.join(" "))}`);
      else if (o.value) parts.push("-r");
      lines.push(`${parts.join(" ")} -d ${q(o.description)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}

// ---- main ----------------------------------------------------------------------------------------

export async function generate(
  outDir: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<void> {
  const tree = await commandTree();
  const date = manDate(env);
  const man = join(outDir, "man");
  const completions = join(outDir, "completions");
  mkdirSync(man, { recursive: true });
  mkdirSync(completions, { recursive: true });
  writeFileSync(join(man, "apes.1"), mainPage(tree, date));
  for (const cmd of tree.subcommands) {
    writeFileSync(join(man, `${pageName(cmd.path)}.1`), commandPage(cmd, inherited(tree), date));
  }
  // apes-config(5) is prose (the keys of two files), kept next to the code that parses them.
  const config = readFileSync(join(ROOT, "packaging/man/apes-config.5"), "utf8");
  writeFileSync(
    join(man, "apes-config.5"),
    config.replace("@DATE@", date).replace("@VERSION@", roff(VERSION)),
  );
  writeFileSync(join(completions, "apes.bash"), bashCompletion(tree));
  writeFileSync(join(completions, "_apes"), zshCompletion(tree));
  writeFileSync(join(completions, "apes.fish"), fishCompletion(tree));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = process.argv[2];
  if (!out) {
    console.error("usage: node scripts/gen-docs.ts OUT_DIR");
    process.exit(2);
  }
  await generate(out);
  console.log(`wrote man pages and completions to ${out}`);
}
