import type { ClientWarning } from "../client/context.ts";
import {
  ClientError,
  type ClientFailure,
  type HttpProblem,
  type SessionFileRefusal,
} from "../client/errors.ts";
import { hasUnsafeChars, visible } from "../protocol/display.ts";
import { ExitCode, type ExitCodeValue } from "./exit-codes.ts";

/**
 * An error meant for the user: what happened (message), what to do next (hint), and the exit
 * status. Commands throw it; main prints it once on stderr.
 */
export class CliError extends Error {
  readonly exitCode: ExitCodeValue;
  readonly hint?: string;
  constructor(message: string, options: { exitCode?: ExitCodeValue; hint?: string; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = "CliError";
    this.exitCode = options.exitCode ?? ExitCode.ERROR;
    this.hint = options.hint;
  }
}

export const usageError = (message: string, hint?: string) =>
  new CliError(message, { exitCode: ExitCode.USAGE, hint });
export const configError = (message: string, hint?: string) =>
  new CliError(message, { exitCode: ExitCode.CONFIG, hint });
export const unavailableError = (message: string, hint?: string, cause?: unknown) =>
  new CliError(message, { exitCode: ExitCode.UNAVAILABLE, hint, cause });
export const notPermittedError = (message: string, hint?: string) =>
  new CliError(message, { exitCode: ExitCode.NOPERM, hint });

/**
 * The one mapping from client/'s failures (client/errors.ts) to what the CLI says: the exit status and
 * the next step, as a shell command where there is one. Every failure code has its entry (tsc checks
 * the table is complete); the message is the client's own.
 */
type Mapping = { [F in ClientFailure]: (e: ClientError<F>) => { exitCode: ExitCodeValue; hint?: string } };

const AGAIN = "then log in again with `apes login <email>`";
const WRITABLE = (dir: string) => `check that ${dir} is writable by you`;

const SESSION_FILE_FIX: Record<SessionFileRefusal, (file: string) => string> = {
  symlink: () => `remove it (\`apes logout\`), ${AGAIN}`,
  not_file: () => `move it out of the way, ${AGAIN}`,
  foreign_owner: () => `remove it (\`apes logout\`), ${AGAIN}`,
  open_mode: (file) => `\`chmod 600 ${file}\`; if others could have used it, \`apes logout\`, ${AGAIN}`,
};

const MAPPING: Mapping = {
  insecure_url: () => ({
    exitCode: ExitCode.CONFIG,
    hint: "the IdP must be reached over https:// (plain http only on a loopback address); fix `--idp` or the `idp` config key",
  }),
  idp_unreachable: () => ({
    exitCode: ExitCode.UNAVAILABLE,
    hint: "check that the IdP is running and the URL is right (`apes whoami` shows the IdP), then try again",
  }),
  answer_too_large: () => ({
    exitCode: ExitCode.UNAVAILABLE,
    hint: "the IdP (or something between it and you) is misbehaving; ask its operator",
  }),
  not_json: () => ({
    exitCode: ExitCode.UNAVAILABLE,
    hint: "is the URL an apes/OpenApe IdP? check `--idp` or the `idp` config key",
  }),
  http_problem: (e) => httpProblemExit(e as HttpProblem),
  ca_file_unreadable: () => ({
    exitCode: ExitCode.CONFIG,
    hint: "fix `ca_file` in config.toml or APES_CA_FILE",
  }),
  ca_file_not_pem: () => ({
    exitCode: ExitCode.CONFIG,
    hint: "point `ca_file` / APES_CA_FILE at a PEM CA certificate",
  }),
  ca_file_unusable: () => ({ exitCode: ExitCode.CONFIG }),
  idp_url_invalid: (e) => ({
    exitCode: ExitCode.USAGE,
    hint: e.details.problem === "not_url" ? "give the IdP as https://id.example.com" : undefined,
  }),
  discovery_invalid: () => ({
    exitCode: ExitCode.UNAVAILABLE,
    hint: "is this an OpenID / DDISA IdP? check `--idp` or the `idp` config key",
  }),
  endpoint_refused: () => ({
    exitCode: ExitCode.UNAVAILABLE,
    hint:
      "apes only talks to the IdP's own origin; if this IdP really serves that endpoint from another " +
      "host, add its origin to `idp_endpoint_origins` in config.toml",
  }),
  endpoint_missing: () => ({
    exitCode: ExitCode.UNAVAILABLE,
    hint: "this IdP does not support the feature; ask its operator or use another IdP",
  }),
  invalid_email: () => ({
    exitCode: ExitCode.USAGE,
    hint: "give an email address such as alice@example.com",
  }),
  configured_idp_invalid: (e) => ({
    exitCode: ExitCode.CONFIG,
    hint: `fix \`idp\` in ${e.details.source ?? "config.toml"} or APES_IDP`,
  }),
  dns_unavailable: (e) => ({
    exitCode: ExitCode.UNAVAILABLE,
    hint: e.details.doh
      ? "check the network, `dns.servers` and `dns.doh_url` in config.toml (or APES_DNS_SERVERS, APES_DOH_URL)"
      : "check the network and `dns.servers` in config.toml (or APES_DNS_SERVERS); `dns.doh_url` adds a DNS-over-HTTPS fallback",
  }),
  dns_config: () => ({ exitCode: ExitCode.CONFIG, hint: "fix [dns] in config.toml or APES_DNS_SERVERS" }),
  no_ddisa_record: ({ details: { email, name } }) => ({
    exitCode: ExitCode.ERROR,
    hint:
      `run \`apes dns check ${email}\` to see what DNS returns; the domain's admin publishes\n` +
      `${name} TXT "v=ddisa1 idp=https://id.example.com; mode=open"\n` +
      'or set the IdP yourself: `idp = "https://..."` in config.toml, or APES_IDP',
  }),
  ddisa_denied: ({ details: { email, domain } }) => ({
    exitCode: ExitCode.NOPERM,
    hint: `ask the admins of ${domain}; \`apes dns check ${email}\` shows the record`,
  }),
  issuer_mismatch: () => ({
    exitCode: ExitCode.UNAVAILABLE,
    hint: "an IdP's issuer is the URL it is reached at; if you meant that issuer, log in with `--idp <issuer>`",
  }),
  signing_failed: () => ({ exitCode: ExitCode.ERROR }),
  raw_signature_refused: () => ({
    exitCode: ExitCode.CONFIG,
    hint: "upgrade the IdP; or, only if this key is registered at no other IdP, set `allow_raw_login_signature = true` in config.toml (docs/signatures.md)",
  }),
  bad_challenge: () => ({ exitCode: ExitCode.UNAVAILABLE }),
  no_token: () => ({ exitCode: ExitCode.UNAVAILABLE }),
  identity_mismatch: () => ({
    exitCode: ExitCode.NOPERM,
    hint: "the IdP must confirm the identity you log in as; check `--idp` and the email's DDISA record",
  }),
  login_refused: () => ({
    exitCode: ExitCode.NOPERM,
    hint: "check the email, and that this key's public half is registered for it at the IdP (`apes keygen` prints it)",
  }),
  key_unreadable: (e) => ({
    exitCode: ExitCode.CONFIG,
    hint: e.details.email
      ? `if the key moved, log in again with it: \`apes login ${e.details.email} --key <path>\``
      : "pass the right file with `--key PATH`, or create one with `apes keygen`",
  }),
  key_encrypted: ({ details: { path } }) => ({
    exitCode: ExitCode.CONFIG,
    hint: `create a dedicated key with \`apes keygen\` and register its .pub at your IdP,\nor remove the passphrase from a copy: \`cp ${path} ${path}.apes && ssh-keygen -p -N "" -f ${path}.apes\``,
  }),
  key_invalid: () => ({
    exitCode: ExitCode.CONFIG,
    hint: "give an Ed25519 private key (OpenSSH or PKCS#8 PEM) with `--key PATH`",
  }),
  no_session: () => ({
    exitCode: ExitCode.NOPERM,
    hint: "run `apes login <email>` (with `--key PATH` for a key outside the default locations)",
  }),
  session_no_key: (e) => ({
    exitCode: ExitCode.NOPERM,
    hint: `log in again: \`apes login ${e.details.email}\``,
  }),
  key_moved: (e) => ({
    exitCode: ExitCode.CONFIG,
    hint: `log in with it to record the new path: \`apes login ${e.details.email} --key ${e.details.found}\``,
  }),
  key_mismatch: ({ details: { email, keyPath } }) => ({
    exitCode: ExitCode.CONFIG,
    hint: `if the new key is registered for ${email}, log in with it: \`apes login ${email} --key ${keyPath}\``,
  }),
  renewal_failed: (e) => ({
    exitCode: ExitCode.NOPERM,
    hint:
      (e.cause instanceof ClientError ? fromClientError(e.cause).hint : undefined) ??
      `log in again: \`apes login ${e.details.email} --key ${e.details.keyPath}\``,
  }),
  session_file_refused: ({ details: { file, refusal } }) => ({
    exitCode: ExitCode.CONFIG,
    hint: SESSION_FILE_FIX[refusal](file),
  }),
  session_unreadable: () => ({
    exitCode: ExitCode.CONFIG,
    hint: "fix its permissions, or `apes logout` and log in again",
  }),
  session_broken: () => ({
    exitCode: ExitCode.CONFIG,
    hint: "remove it with `apes logout`, then log in again with `apes login <email>`",
  }),
  session_write_failed: (e) => ({ exitCode: ExitCode.CONFIG, hint: WRITABLE(e.details.dir) }),
  lock_create_failed: (e) => ({ exitCode: ExitCode.CONFIG, hint: WRITABLE(e.details.dir) }),
  lock_busy: () => ({
    exitCode: ExitCode.TEMPFAIL,
    hint: "try again; if no apes process is running, remove the lock file",
  }),
  not_a_grant_id: () => ({
    exitCode: ExitCode.USAGE,
    hint: "grant ids look like 3f2b…-uuid; `apes grants list` shows them",
  }),
  unexpected_answer: () => ({ exitCode: ExitCode.UNAVAILABLE }),
  exchange_needs_key: (e) => ({
    exitCode: ExitCode.CONFIG,
    hint: `log in with a key: \`apes login ${e.details.email} --key <path>\``,
  }),
  oauth_refused: () => ({
    exitCode: ExitCode.NOPERM,
    hint: "run `apes login <email>` again; `--debug` shows the requests",
  }),
  login_denied: (e) => ({
    exitCode: ExitCode.NOPERM,
    hint: `to try again: \`apes login ${e.details.email}\``,
  }),
  id_token_refused: () => ({
    exitCode: ExitCode.NOPERM,
    hint: "nothing was stored; check `--idp` and the email's DDISA record",
  }),
  session_ended: (e) => ({
    exitCode: ExitCode.NOPERM,
    hint: `log in again: \`apes login ${e.details.email}\``,
  }),
  login_timed_out: (e) => ({
    exitCode: ExitCode.TEMPFAIL,
    hint:
      e.details.flow === "browser"
        ? `run \`apes login ${e.details.email}\` again; on a machine without a browser: \`apes login --device ${e.details.email}\``
        : `run \`apes login --device ${e.details.email}\` again`,
  }),
  wait_timed_out: (e) => ({
    exitCode: ExitCode.TEMPFAIL,
    hint: `wait again with \`apes grants wait ${e.details.id}\`, or ask an approver to look at \`apes grants list --inbox\``,
  }),
};

/** 5xx -> 69, 401/403 -> 77, 429 -> 75, other 4xx -> 1. */
function httpProblemExit(e: HttpProblem): { exitCode: ExitCodeValue; hint?: string } {
  if (e.status >= 500) {
    return {
      exitCode: ExitCode.UNAVAILABLE,
      hint: "the IdP has a problem; try again later or ask its operator",
    };
  }
  if (e.status === 401) return { exitCode: ExitCode.NOPERM, hint: "log in again: `apes login <email>`" };
  if (e.status === 403) return { exitCode: ExitCode.NOPERM };
  if (e.status === 429) {
    return {
      exitCode: ExitCode.TEMPFAIL,
      hint: e.retryAfter ? `try again in ${e.retryAfter} s` : "try again later",
    };
  }
  return { exitCode: ExitCode.ERROR };
}

/** The CliError for a client failure: the client's message, the CLI's exit status and hint. */
export function fromClientError(e: ClientError): CliError {
  const { exitCode, hint } = (
    MAPPING[e.failure] as (e: ClientError) => { exitCode: ExitCodeValue; hint?: string }
  )(e);
  return new CliError(e.message, { exitCode, hint, cause: e.cause });
}

/** `e` as the CLI reports it: a ClientError becomes its CliError; anything else stays as it is. */
export function asCliError(e: unknown): unknown {
  return e instanceof ClientError ? fromClientError(e) : e;
}

/** The stderr line for a client warning. */
export function warningLine(w: ClientWarning): string {
  switch (w.kind) {
    case "key_mode":
      return `apes: warning: ${w.path} is readable by others (mode ${w.mode.toString(8)}); run \`chmod 600 ${w.path}\`\n`;
    case "raw_login_signature":
      return `apes: warning: signing the bare challenge of ${w.idp} (allow_raw_login_signature): this signature is not bound to the IdP\n`;
  }
}

/**
 * Prints a command's failure on stderr the one way apes does (message, hint, with `debug` the cause
 * or stack) and returns its exit status. cli/program.ts adds commander's own ends in front of it.
 */
export function reportFailure(
  thrown: unknown,
  stderr: { write(s: string): unknown },
  debug: () => boolean,
): number {
  // client/'s failures carry no exit status or hint: the CLI's one mapping (above) adds them.
  const e = asCliError(thrown);
  if (e instanceof CliError) {
    stderr.write(`apes: ${guarded(e.message)}\n`);
    if (e.hint) stderr.write(`  ${e.hint.split("\n").map(guarded).join("\n  ")}\n`);
    if (safe(debug) && e.cause) stderr.write(`  cause: ${guarded(describeCause(e.cause))}\n`);
    return e.exitCode;
  }
  stderr.write(
    `apes: unexpected error: ${visible(e instanceof Error ? e.message : String(e), { max: MESSAGE_MAX })}\n`,
  );
  if (safe(debug) && e instanceof Error && e.stack) stderr.write(`${e.stack}\n`);
  else stderr.write("  run again with --debug for details\n");
  return ExitCode.ERROR;
}

const MESSAGE_MAX = 2000;

/**
 * A message apes built, shown as it is, unless something in it (text from an IdP or a file that its
 * source forgot to pass through `visible`) holds a control character or is unboundedly long: then
 * the whole line is escaped and cut, so no error can drive the terminal.
 */
function guarded(text: string): string {
  return hasUnsafeChars(text) || text.length > MESSAGE_MAX ? visible(text, { max: MESSAGE_MAX }) : text;
}

function describeCause(cause: unknown): string {
  if (cause instanceof Error) {
    const inner = (cause as Error & { cause?: unknown }).cause;
    return inner ? `${cause.message} (${describeCause(inner)})` : cause.message;
  }
  return String(cause);
}

function safe(f: () => boolean): boolean {
  try {
    return f();
  } catch {
    return false;
  }
}
