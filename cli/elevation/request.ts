import { closeSync, fstatSync, realpathSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import type { GrantsClient, NewGrantRequest } from "../../client/grants.ts";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { shellWord, visibleArgv } from "../../protocol/display.ts";
import { READY_LINE, REQUESTER_REASONS, type RequesterReason } from "../../protocol/elevation.ts";
import { DEFAULT_RUN_AS } from "../../protocol/names.ts";
import { ELEVATION_AUDIENCE, type Grant, type GrantStatus } from "../../protocol/types.ts";
import type { Context } from "../context.ts";
import { asCliError, CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { awaitDecision, cancelGrant, grantSettledBy } from "../grants/await-decision.ts";
import { grantWarning, shown, shownCommand } from "../grants/format.ts";
import { formatElapsed } from "../grants/progress.ts";
import { continueCommand, type ElevationRequest } from "./grammar.ts";

/**
 * The requester: `apes __request --result-fd N ... -- CMD` (run by the shim as the invoking user),
 * and `apes --no-wait -- CMD` without the shim. Creates (or reuses, or continues with --grant) a
 * grant bound to the exact command, waits for a human's decision, fetches the AuthZ-JWT and writes
 * it to the inherited fd, which is the ONLY place the token ever goes.
 */

export interface RequesterDeps {
  client(ctx: Context): Promise<GrantsClient>;
  wait(
    ctx: Context,
    client: GrantsClient,
    id: string,
    options: {
      timeoutMs?: number;
      signal?: AbortSignal;
      onProgress?(ms: number, g: Grant | undefined): void;
    },
  ): Promise<Grant>;
  /** Writes the token to the result fd and closes it. */
  deliver(fd: number, token: string): void;
  /** Tells the shim the grant is approved (READY_LINE), so it starts the verifier during the token fetch. */
  ready(fd: number): void;
  /** Refuses a result fd that is not an inherited pipe. */
  checkFd(fd: number): void;
  hostname(): string;
}

export interface RequesterOptions {
  /** The shim's pipe; undefined when apes runs without the shim (then only --no-wait is possible). */
  resultFd?: number;
  /** Aborted by SIGINT/SIGTERM or a broken stdout/stderr (a CliError reason says which): a grant
   * created by this run is revoked, as on any other failure after its creation. */
  signal?: AbortSignal;
  deps?: Partial<RequesterDeps>;
}

export const defaultDeps: RequesterDeps = {
  async client(ctx) {
    const { grantsClient } = await import("../../client/grants.ts");
    // The long poll that reports the approval brings the AuthZ-JWT too: no token round trip after it.
    return grantsClient(ctx, { foldTokens: true });
  },
  async wait(ctx, client, id, options) {
    const { waitForDecision } = await import("../../client/wait.ts");
    return waitForDecision(ctx, client, id, options);
  },
  deliver: writeToken,
  ready: (fd) => writeSync(fd, READY_LINE),
  checkFd: checkResultFd,
  hostname: () => hostname(),
};

/** The grant request for a command: audience "escapes", this host, the exact argv and its hash. */
export function grantRequestFor(req: ElevationRequest, host: string): NewGrantRequest {
  return {
    audience: ELEVATION_AUDIENCE,
    target_host: host,
    grant_type: req.approval,
    command: [...req.command],
    cmd_hash: cmdHash(req.command),
    run_as: req.runAs,
    ...(req.durationS !== undefined ? { duration: req.durationS } : {}),
    ...(req.reason !== undefined ? { reason: req.reason } : {}),
  };
}

/** Why an existing grant (--grant ID) cannot serve this command, or undefined when it can. */
export function grantMismatch(grant: Grant, req: ElevationRequest, host: string): string | undefined {
  const r = grant.request;
  if (grant.type !== "command")
    return `grant ${shown(grant.id)} is a ${shown(grant.type)} grant, not a command grant`;
  const cmd = r.command ?? [];
  if (cmd.length !== req.command.length || cmd.some((a, i) => a !== req.command[i])) {
    return `grant ${shown(grant.id)} is for ${shownCommand(grant) ?? "no command"}, not ${visibleArgv(req.command)}`;
  }
  if ((r.run_as ?? DEFAULT_RUN_AS) !== req.runAs)
    return `grant ${shown(grant.id)} runs as ${shown(r.run_as ?? DEFAULT_RUN_AS)}, not ${shellWord(req.runAs)}`;
  if (r.target_host !== host)
    return `grant ${shown(grant.id)} is for host ${shown(r.target_host)}, this is ${shown(host)}`;
  if (r.audience !== ELEVATION_AUDIENCE)
    return `grant ${shown(grant.id)} has audience ${shown(r.audience)}, not ${ELEVATION_AUDIENCE}`;
  return undefined;
}

/**
 * A program given as a path (`./x.sh`, `../bin/tool`) becomes its canonical directory plus its last
 * component as given, so the grant, the approver and the hash name where it is, not whatever the cwd
 * holds later; the name stays (a multi-call program such as busybox dispatches on it). The shim does
 * the same before it starts the requester (and is the authority); this makes `--no-wait` grants match.
 */
export function canonicalCommand(
  command: readonly string[],
  realpath: (path: string) => string = realpathSync,
): string[] {
  const [program, ...args] = command;
  if (program === undefined || !program.includes("/")) return [...command];
  const slash = program.lastIndexOf("/");
  const name = program.slice(slash + 1);
  if (name === "" || name === "." || name === "..")
    throw new CliError(`${program}: not a program file`, { exitCode: ExitCode.CANNOT_EXECUTE });
  let dir: string;
  try {
    dir = realpath(slash === 0 ? "/" : program.slice(0, slash));
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? "no such directory" : (e as Error).message;
    throw new CliError(`${program}: ${why}`, { exitCode: ExitCode.NOT_FOUND });
  }
  return [`${dir === "/" ? "" : dir}/${name}`, ...args];
}

/** Resolves 0 once the token is delivered; every other outcome is a CliError with its exit status. */
export async function runRequester(
  ctx: Context,
  given: ElevationRequest,
  options: RequesterOptions = {},
): Promise<number> {
  const deps = { ...defaultDeps, ...options.deps };
  const req = { ...given, command: canonicalCommand(given.command) };
  const timing = ctx.env.APES_TIMING === "1";
  const t0 = performance.now();
  // "start": from the process's start (performance's time origin) to here: runtime and bundle start-up.
  if (timing) ctx.io.stderr.write(`apes-timing: requester start ${t0.toFixed(1)}\n`);
  let prev = t0;
  const mark = (phase: string) => {
    if (!timing) return;
    const now = performance.now();
    ctx.io.stderr.write(`apes-timing: requester ${phase} ${(now - prev).toFixed(1)}\n`);
    prev = now;
  };
  if (options.resultFd === undefined) return requestInner(ctx, req, options, deps, mark, t0);
  deps.checkFd(options.resultFd);
  try {
    return await requestInner(ctx, req, options, deps, mark, t0);
  } catch (e) {
    // Tell the shim why, for its audit line (one reason code, never a token); pending needs none.
    const reason = requesterReason(e);
    if (reason) {
      try {
        deps.deliver(options.resultFd, reason);
      } catch {
        // the shim may be gone already
      }
    }
    throw e;
  }
}

async function requestInner(
  ctx: Context,
  req: ElevationRequest,
  options: RequesterOptions,
  deps: RequesterDeps,
  mark: (phase: string) => void,
  t0: number,
): Promise<number> {
  const host = deps.hostname();
  const client = await deps.client(ctx);
  mark("session");
  const who = client.session.email;

  let grant: Grant;
  let createdHere = false;
  let folded: string | undefined; // the AuthZ-JWT of a reuse answer (Prefer: authz-jwt)
  if (req.grantId) {
    grant = await client.get(req.grantId);
    const mismatch = grantMismatch(grant, req, host);
    if (mismatch) {
      throw withReason("grant_mismatch", mismatch, {
        exitCode: ExitCode.NOPERM,
        hint: "run without --grant to request a new grant for this command",
      });
    }
    if (grant.request.requester !== who) {
      throw withReason(
        "grant_not_yours",
        `grant ${shown(grant.id)} was requested by ${shown(grant.request.requester)}, not by you (${who})`,
        {
          exitCode: ExitCode.NOPERM,
        },
      );
    }
  } else {
    // Through the shim, a reused grant's token comes in the same answer (one round trip less).
    const created = await client.create(grantRequestFor(req, host), {
      authzJwt: options.resultFd !== undefined,
    });
    grant = created.grant;
    createdHere = !created.reused;
    folded = created.reused && grant.status === "approved" ? created.authz_jwt : undefined;
  }
  try {
    return await useGrant(ctx, req, options, deps, mark, t0, client, grant, createdHere, folded);
  } catch (e) {
    if (createdHere && !keepsGrant(e)) await cancelCreated(ctx, client, grant.id, e);
    throw e;
  }
}

/** A pending exit (75) keeps the grant for `--grant ID`; a denied, revoked or used one needs nothing. */
function keepsGrant(e: unknown): boolean {
  if (grantSettledBy(e)) return true; // the wait cancelled it (or kept a --grant one) already
  const err = asCliError(e);
  if (err instanceof CliError && err.exitCode === ExitCode.TEMPFAIL) return true;
  return e instanceof RequesterError && KEEPS_GRANT.has(e.reason);
}

/** The requester's codes that end a run on a grant that needs no cancelling (or is not this run's). */
const KEEPS_GRANT: ReadonlySet<RequesterReason> = new Set([
  "grant_denied",
  "grant_revoked",
  "grant_expired",
  "grant_used",
  "grant_mismatch",
  "grant_not_yours",
]);

/** Revokes the grant this run created, so nobody approves a request no one waits for (best effort). */
async function cancelCreated(ctx: Context, client: GrantsClient, id: string, why: unknown): Promise<void> {
  const what = why instanceof CliError && why.exitCode === ExitCode.INTERRUPTED ? "interrupted" : "failed";
  ctx.io.stderr.write(`apes: ${what}; ${await cancelGrant(client, id)}\n`);
}

async function useGrant(
  ctx: Context,
  req: ElevationRequest,
  options: RequesterOptions,
  deps: RequesterDeps,
  mark: (phase: string) => void,
  t0: number,
  client: GrantsClient,
  found: Grant,
  createdHere: boolean,
  folded?: string,
): Promise<number> {
  const timing = ctx.env.APES_TIMING === "1";
  let grant = found;
  if (!createdHere && !req.grantId && grant.status === "approved") {
    const until = grant.expires_at ? ` until ${new Date(grant.expires_at * 1000).toISOString()}` : "";
    ctx.io.stderr.write(
      `apes: using ${shown(grant.request.grant_type)} grant ${shown(grant.id)}, approved by ${shown(grant.decided_by)}${until}\n`,
    );
  }
  mark("grant");

  if (grant.status === "pending") {
    const direct = options.resultFd === undefined;
    if (req.noWait || direct) pendingExit(ctx, grant, req, client);
    grant = await waitWithCancel(ctx, client, grant, req, options.signal, deps, createdHere);
    mark("wait");
  }
  if (grant.status !== "approved") throw notUsable(grant, req);
  if (options.resultFd === undefined) {
    throw new CliError(
      `grant ${shown(grant.id)} is approved, but this apes cannot elevate: it is not the setuid shim`,
      {
        exitCode: ExitCode.CONFIG,
        hint: `install the shim (\`sudo make install\`), then run \`${continueCommand(grant.id, req)}\``,
      },
    );
  }
  // Not before the grant is approved: no verifier waits beside a request pending for a human.
  deps.ready(options.resultFd);
  const authz_jwt = folded ?? (await client.token(grant.id)).authz_jwt;
  mark("token"); // ~0 when folded into the reuse answer
  // Interrupted before the wait (or right after it ended): deliver nothing.
  if (options.signal?.aborted) throw abortError(options.signal);
  deps.deliver(options.resultFd!, authz_jwt);
  mark("deliver");
  if (timing) ctx.io.stderr.write(`apes-timing: requester total ${(performance.now() - t0).toFixed(1)}\n`);
  return ExitCode.OK;
}

/** Prints the grant id (stdout) and how to continue, and ends with exit 75. */
function pendingExit(ctx: Context, grant: Grant, req: ElevationRequest, client: GrantsClient): never {
  const next = continueCommand(grant.id, req);
  if (ctx.globals.json) {
    ctx.io.stdout.write(
      `${JSON.stringify({ grant_id: grant.id, status: grant.status, idp: client.session.idp, continue: next })}\n`,
    );
  } else {
    ctx.io.stdout.write(`${shown(grant.id)}\n`);
  }
  throw new CliError(`grant ${shown(grant.id)} awaits approval (${describe(grant)})`, {
    exitCode: ExitCode.TEMPFAIL,
    hint: `approve: apes grants approve ${shown(grant.id)}   (an approver of ${client.session.email}, IdP ${client.session.idp})\nthen:    ${next}`,
  });
}

async function waitWithCancel(
  ctx: Context,
  client: GrantsClient,
  grant: Grant,
  req: ElevationRequest,
  signal: AbortSignal | undefined,
  deps: RequesterDeps,
  createdHere: boolean,
): Promise<Grant> {
  const who = await approversOf(ctx, client);
  ctx.io.stderr.write(
    `apes: grant ${shown(grant.id)} needs approval (${describe(grant)})\n` +
      `  who:     ${who}\n` +
      `  approve: apes grants approve ${shown(grant.id)}   (IdP ${client.session.idp})\n`,
  );
  const label = `waiting for approval of ${shown(grant.id)}`;
  return awaitDecision(ctx, client, grant.id, {
    timeoutMs: req.timeoutMs,
    // The requester's own signal (SIGINT, SIGTERM, a broken stdout/stderr), never a handler of the wait's.
    signal: signal ?? new AbortController().signal,
    label: (ms) => (ms === undefined ? label : `${label} (${formatElapsed(ms)})`),
    decided: (g) =>
      g.status === "approved" ? `apes: approved by ${shown(g.decided_by)}` : `apes: grant ${shown(g.status)}`,
    // A grant this run created is cancelled; one given with --grant stays for the next try.
    cancelOnInterrupt: createdHere,
    continueHint: `continue later with \`${continueCommand(grant.id, req)}\``,
    wait: deps.wait,
  });
}

/**
 * Who can approve: the requester's owner and approvers from the IdP's userinfo endpoint (best
 * effort, short timeout: only shown while waiting for a person anyway).
 */
export async function approversOf(ctx: Context, client: GrantsClient): Promise<string> {
  const me = client.session.email;
  const fallback = `an approver of ${me}`;
  const url = (client.endpoints as { document?: Record<string, unknown> }).document?.userinfo_endpoint;
  if (typeof url !== "string") return fallback;
  try {
    const { request } = await import("../../client/http.ts");
    const res = await request<{ owner?: unknown; approvers?: unknown; kind?: unknown }>(ctx, {
      url,
      token: client.session.token,
      timeoutMs: 2000,
    });
    return describeApprovers(me, res.body) ?? fallback;
  } catch {
    return fallback;
  }
}

/** "alice@x (owner) or bob@x" from a userinfo body; undefined when it names nobody. */
export function describeApprovers(me: string, body: unknown): string | undefined {
  if (!body || typeof body !== "object") return undefined;
  const b = body as { owner?: unknown; approvers?: unknown; kind?: unknown };
  const names: string[] = [];
  if (typeof b.owner === "string") names.push(`${shown(b.owner)} (owner)`);
  if (Array.isArray(b.approvers)) {
    for (const a of b.approvers) if (typeof a === "string" && a !== b.owner) names.push(shown(a));
  }
  // A human may approve its own grants at the IdP (the policy may still refuse self-approval).
  if (b.kind === "human") names.push(`${me} (yourself)`);
  return names.length > 0 ? names.join(" or ") : undefined;
}

/** A CliError that also names the audit reason the requester reports to the shim. */
export class RequesterError extends CliError {
  readonly reason: RequesterReason;
  constructor(reason: RequesterReason, message: string, options: ConstructorParameters<typeof CliError>[1]) {
    super(message, options);
    this.reason = reason;
  }
}

function withReason(
  reason: RequesterReason,
  message: string,
  options: ConstructorParameters<typeof CliError>[1],
) {
  return new RequesterError(reason, message, options);
}

/**
 * The reason code for the shim's audit line when the requester fails (protocol/elevation.ts lists
 * them): the grant's fate when it has one, else the kind of failure, found by its exit status. The
 * shim adds the `requester_` prefix (the audit line says `requester_config`), so no code here
 * carries it. Undefined for "pending" (75), which the shim audits as such.
 */
export function requesterReason(e: unknown): RequesterReason | undefined {
  if (e instanceof RequesterError) return e.reason;
  const err = asCliError(e);
  if (!(err instanceof CliError)) return "error";
  if (err.exitCode === ExitCode.TEMPFAIL) return undefined;
  return BY_EXIT.get(err.exitCode) ?? "error";
}

/** The codes that stand for a kind of failure: one per exit status. */
const BY_EXIT: ReadonlyMap<number, RequesterReason> = new Map(
  (["interrupted", "idp_unreachable", "not_permitted", "config", "usage"] as const).map((r) => [
    REQUESTER_REASONS[r].exit,
    r,
  ]),
);

/** The error an aborted run ends with: the abort's own CliError (a broken stderr), else "interrupted". */
function abortError(signal: AbortSignal): CliError {
  if (signal.reason instanceof CliError) return signal.reason;
  return new CliError("interrupted", { exitCode: ExitCode.INTERRUPTED });
}

/** The requester's code for a decided grant that cannot be used, by its status. */
const NOT_USABLE: Partial<Record<GrantStatus, RequesterReason>> = {
  denied: "grant_denied",
  revoked: "grant_revoked",
  expired: "grant_expired",
  used: "grant_used",
};

function notUsable(grant: Grant, req: ElevationRequest): CliError {
  const by = grant.decided_by ? ` by ${shown(grant.decided_by)}` : "";
  const what: Record<string, string> = {
    denied: `grant ${shown(grant.id)} was denied${by}`,
    revoked: `grant ${shown(grant.id)} was revoked${by}`,
    expired: `grant ${shown(grant.id)} has expired`,
    used: `grant ${shown(grant.id)} was already used (once grants run one time)`,
  };
  const message = what[grant.status] ?? `grant ${shown(grant.id)} is ${shown(grant.status)}`;
  const options = {
    exitCode: ExitCode.NOPERM,
    hint: `request a new grant: apes --reason "..." -- ${visibleArgv(req.command)}`,
  };
  const reason = NOT_USABLE[grant.status];
  return reason ? withReason(reason, message, options) : new CliError(message, options);
}

function describe(grant: Grant): string {
  const r = grant.request;
  const dur = r.grant_type === "timed" && r.duration ? ` ${formatElapsed(r.duration * 1000)}` : "";
  const warning = grantWarning(grant);
  const what = `${shown(r.grant_type)}${dur}: ${shownCommand(grant) ?? "-"} as ${shown(r.run_as ?? DEFAULT_RUN_AS)} on ${shown(r.target_host)}`;
  return warning ? `${what}; ${warning}` : what;
}

/** The result fd must be an inherited pipe (or socket), never a file or terminal the token could land in. */
function checkResultFd(fd: number): void {
  let ok = false;
  try {
    const st = Number.isInteger(fd) && fd >= 3 ? fstatSync(fd) : undefined;
    ok = st !== undefined && (st.isFIFO() || st.isSocket());
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new CliError(`--result-fd ${fd} is not an inherited pipe`, {
      exitCode: ExitCode.USAGE,
      hint: "__request is run by the apes setuid shim; run `apes --reason R -- cmd` instead",
    });
  }
}

export function writeToken(fd: number, token: string): void {
  const buf = Buffer.from(token, "utf8");
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
  closeSync(fd);
}
