import type { Command } from "commander";
import type { GetContext } from "../program.ts";

type Register = (program: Command, getContext: GetContext) => void;

/**
 * The command tree. Each command lives in commands/<noun>/<verb>.ts and exports
 * `register(parent, getContext)`; a noun's group.ts registers its verbs.
 *
 * Registration is lazy: a run loads and registers only the top-level command its argv names (and, for
 * `apes help X`, X); every other one is a stub with the name, usage term and description the top-level
 * help lists (issue 16: `apes --help` and the common commands start without ~50 command modules).
 * test/unit/cli-lazy-commands.test.ts keeps each stub equal to its real command.
 */
export interface TopLevelCommand {
  name: string;
  /** The usage term the top-level help shows (commander's `subcommandTerm`). */
  term: string;
  description: string;
  hidden?: boolean;
  load(): Promise<Register>;
}

export const TOP_LEVEL: readonly TopLevelCommand[] = [
  {
    name: "help",
    term: "help [topic...]",
    description: "show help for a command, or a topic: exit-codes",
    load: async () => (await import("./help/exit-codes.ts")).register,
  },
  {
    name: "idp",
    term: "idp",
    description: "run and administer the reference identity provider",
    load: async () => (await import("./idp/group.ts")).registerIdpCommands,
  },
  {
    name: "troop",
    term: "troop",
    description: "run the control plane (nests connect to it; owners submit intents)",
    load: async () => (await import("./troop/group.ts")).registerTroopCommands,
  },
  {
    name: "dns",
    term: "dns",
    description: "DNS discovery (DDISA) diagnostics for admins",
    load: async () => (await import("./dns/group.ts")).registerDnsCommands,
  },
  // Sessions, grants, delegations (issue 4).
  {
    name: "login",
    term: "login [options] [email]",
    description:
      "log in with an Ed25519 key, or as a human in the browser (passkey at the IdP) or with a device code",
    load: async () => (await import("./login/login.ts")).register,
  },
  {
    name: "logout",
    term: "logout",
    description:
      "end the session: revokes a browser/device session's refresh token at the IdP, deletes auth.json",
    load: async () => (await import("./logout/logout.ts")).register,
  },
  {
    name: "whoami",
    term: "whoami",
    description: "show the logged-in identity: email, human or agent, IdP, token expiry, key fingerprint",
    load: async () => (await import("./whoami/whoami.ts")).register,
  },
  {
    name: "keygen",
    term: "keygen [options]",
    description: "create an Ed25519 key pair (OpenSSH format) for `apes login`",
    load: async () => (await import("./keygen/keygen.ts")).register,
  },
  {
    name: "agents",
    term: "agents",
    description: "agents you own (enroll with their public key)",
    load: async () => (await import("./agents/group.ts")).registerAgentsCommands,
  },
  {
    name: "grants",
    term: "grants",
    description: "grants: ask for, decide, use and verify approvals of commands and permissions",
    load: async () => (await import("./grants/group.ts")).registerGrantsCommands,
  },
  {
    name: "delegate",
    term: "delegate [options]",
    description: "let someone (an agent, a daemon) act for you at one service: a delegation, approved by you",
    load: async () => (await import("./delegate/delegate.ts")).register,
  },
  {
    name: "delegations",
    term: "delegations",
    description: "delegations you gave or received",
    load: async () => (await import("./delegations/group.ts")).registerDelegationsCommands,
  },
  {
    name: "token",
    term: "token",
    description: "tokens for services (token exchange on a delegation)",
    load: async () => (await import("./token/group.ts")).registerTokenCommands,
  },
  {
    name: "notify",
    term: "notify",
    description: "notifications: be told when a grant waits for your decision, or yours was decided",
    load: async () => (await import("./notify/group.ts")).registerNotifyCommands,
  },
  // Elevation: `apes [run] -- cmd`, the policy, and the shim's hidden helpers (issue 5).
  {
    name: "run",
    term: "run [options] <command...>",
    description: "run a command as root (or --as USER) once a human approves: `apes --reason R -- cmd`",
    load: async () => (await import("./run/run.ts")).register,
  },
  {
    name: "trust",
    term: "trust [options]",
    description: "write the elevation policy (as root): which IdP, approvers and identities the shim trusts",
    load: async () => (await import("./trust/trust.ts")).register,
  },
  {
    name: "verifier",
    term: "verifier",
    description: "run the elevation verifier as a resident service (faster elevations)",
    load: async () => (await import("./verifier/group.ts")).registerVerifierCommands,
  },
  {
    name: "__request",
    term: "__request [options] <command...>",
    description: "internal: request, wait for and deliver an elevation grant (run by the shim)",
    hidden: true,
    load: async () => (await import("./internal/request.ts")).register,
  },
  {
    name: "__verify",
    term: "__verify [options]",
    description: "internal: verify an elevation grant against the policy (run by the shim)",
    hidden: true,
    load: async () => (await import("./internal/verify.ts")).register,
  },
  // The operator's tools (issue 15).
  {
    name: "doctor",
    term: "doctor",
    description: "check what elevation and login depend on: shim, policy, IdP, clock, session, DNS",
    load: async () => (await import("./doctor/doctor.ts")).register,
  },
  {
    name: "audit",
    term: "audit [options]",
    description: "show the elevation audit log (as root): who ran what, approved or denied, and why",
    load: async () => (await import("./audit/audit.ts")).register,
  },
  // The Nest (issue 13).
  {
    name: "daemon",
    term: "daemon",
    description: "the Nest: this machine's agent supervisor, itself an ape with its own identity",
    load: async () => (await import("./daemon/group.ts")).registerDaemonCommands,
  },
  {
    name: "nest",
    term: "nest",
    description: "command nests through the troop: spawn, stop, restart, pause, resume, remove agents",
    load: async () => (await import("./nest/group.ts")).registerNestCommands,
  },
];

/** Stubs, and the usage term the top-level help shows for each (a stub has no options or arguments). */
export const stubTerms = new WeakMap<Command, string>();

/**
 * Registers the top-level commands: those `wanted` says yes to in full, the others as stubs.
 * Without `wanted`, all of them in full (tests, man pages and completions).
 */
export async function registerCommands(
  program: Command,
  getContext: GetContext,
  wanted?: (name: string) => boolean,
): Promise<void> {
  const full = TOP_LEVEL.filter((c) => !wanted || wanted(c.name));
  const registers = await Promise.all(full.map((c) => c.load()));
  for (const c of TOP_LEVEL) {
    const i = full.indexOf(c);
    if (i >= 0) registers[i]!(program, getContext);
    else
      stubTerms.set(
        program.command(c.name, { hidden: c.hidden === true }).description(c.description),
        c.term,
      );
  }
}

/**
 * The top-level commands an argv (after routeArgv) runs: its first word that is not a global flag,
 * and for `help`, the command it asks about. Empty for `apes`, `apes --help` and unknown words.
 */
export function commandWords(argv: readonly string[]): Set<string> {
  const out = new Set<string>();
  const at = argv.findIndex((a) => !GLOBAL.has(a));
  const first = argv[at];
  if (first === undefined || first.startsWith("-")) return out;
  out.add(first);
  const topic = argv.slice(at + 1).find((a) => !a.startsWith("-"));
  if (first === "help" && topic !== undefined) out.add(topic);
  return out;
}

/** The root's own options (flags only: none takes a value, so the first other word is the command). */
const GLOBAL = new Set(["--json", "--debug", "--no-color", "--color", "-V", "--version", "-h", "--help"]);
