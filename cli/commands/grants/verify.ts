import type { Command } from "commander";
import type { JsonHttp } from "../../../client/http.ts";
import type { Context } from "../../context.ts";
import { configError, usageError } from "../../errors.ts";
import type { GetContext } from "../../program.ts";

export interface GrantsVerifyOptions {
  tokenFile?: string;
  audience?: string;
  permission: string[];
  host?: string;
  issuer: string[];
  consume?: boolean;
}

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("verify")
    .description("on the target system: check an AuthZ-JWT (exit 0 valid, 77 invalid, 69 unreachable)")
    .argument("[args...]", "`-` reads the token from stdin (the default); the command to check, after --")
    .option("--token-file <file>", "read the AuthZ-JWT from this file (`-`: stdin, the default)")
    .option("--audience <aud>", "this system's name: the token's aud must be it (required)")
    .option(
      "--permission <name>",
      "a permission the token must grant (repeatable; all required)",
      collect,
      [],
    )
    .option("--host <host>", "the token's target_host must be this")
    .option(
      "--issuer <url>",
      "an IdP whose tokens are accepted (repeatable; default: the configured idp)",
      collect,
      [],
    )
    .option("--consume", "spend the grant at the IdP: a once-grant is then used up (replays are refused)")
    .addHelpText(
      "after",
      `
The token is read from stdin or a file, never from the command line (argv is visible to
every user in ps). Only the allowed issuers' keys are fetched (discovery + JWKS, cached);
the signature must be EdDSA; iss, aud, exp and iat are checked with a 60 s clock leeway,
then every --permission, and with \`-- cmd ...\` the granted command element by element
and its cmd_hash. Invalid tokens exit 77 and name one reason code; --json prints
{valid, reason?, detail?, claims} on stdout.

Examples:
  $ apes grants token "$id" | apes grants verify --audience prod-server --permission deploy --consume
  $ apes grants verify --token-file /run/deploy/token --audience prod-server --json
  $ apes grants verify - --audience web1 --host web1 -- systemctl restart nginx < token`,
    )
    .action(async (args: string[], options: GrantsVerifyOptions) => {
      await grantsVerify(getContext(), args, options);
    });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** Three base64url parts, the first a JSON object: what a JWT on argv looks like (not `a.tar.gz`). */
function looksLikeJwt(arg: string): boolean {
  const parts = arg.split(".");
  if (parts.length !== 3 || !parts.every((p) => /^[A-Za-z0-9_-]*$/.test(p))) return false;
  try {
    const header: unknown = JSON.parse(Buffer.from(parts[0]!, "base64url").toString("utf8"));
    return !!header && typeof header === "object";
  } catch {
    return false;
  }
}

/** Longer than any token we accept (protocol/jwt.ts MAX_JWT_LENGTH), so an oversized one is named as such. */
const MAX_INPUT_BYTES = 64 * 1024;
const STDIN_TIMEOUT_MS = 30_000;

export async function grantsVerify(
  ctx: Context,
  args: string[],
  options: GrantsVerifyOptions,
): Promise<void> {
  const [
    { verifyAuthzJwt, verifyOptionsProblem, grantKeysCache },
    { requestJson },
    { fileKeyStore, trustAnchorId },
    { join },
    { CliError },
    { ExitCode },
    fmt,
    { printData },
  ] = await Promise.all([
    import("../../../client/verify-grant.ts"),
    import("../../../client/http.ts"),
    import("../../../protocol/jwks-store.ts"),
    import("node:path"),
    import("../../errors.ts"),
    import("../../exit-codes.ts"),
    import("../../grants/format.ts"),
    import("../../output.ts"),
  ]);
  const fromArgv = [options.tokenFile, ...args].find((a) => a !== undefined && looksLikeJwt(a));
  if (fromArgv !== undefined)
    throw usageError(
      "refusing a token on the command line: every user of this machine can read it in ps",
      "pipe it in: `apes grants token <id> | apes grants verify --audience ...`, or use --token-file",
    );
  const stdinDash = args[0] === "-";
  const command = stdinDash ? args.slice(1) : args;
  if (stdinDash && options.tokenFile !== undefined && options.tokenFile !== "-")
    throw usageError("give the token either on stdin (-) or with --token-file, not both");
  if (!options.audience) throw usageError("--audience is required: the name this system verifies tokens for");
  const config = await ctx.config();
  const issuers = options.issuer.length > 0 ? options.issuer : config.idp ? [config.idp] : [];
  if (issuers.length === 0)
    throw usageError("no issuer: name the IdP whose tokens are accepted with --issuer URL");
  const checks = {
    issuers,
    audience: options.audience,
    permissions: options.permission,
    ...(command.length > 0 ? { command } : {}),
    ...(options.host !== undefined ? { host: options.host } : {}),
    consume: options.consume === true,
  };
  const problem = verifyOptionsProblem(checks);
  if (problem) throw usageError(problem);

  const jwt = await readToken(ctx, options.tokenFile);
  let ca: string | undefined;
  if (config.caFile) {
    const { readFile } = await import("node:fs/promises");
    ca = await readFile(config.caFile, "utf8").catch((e: Error) => {
      throw configError(`cannot read ca_file ${config.caFile}: ${e.message}`);
    });
  }
  const http: JsonHttp = ca ? (url, init) => requestJson(url, { ...init, ca }) : requestJson;
  // Keys cached on disk: each verify is its own process, and the issuer is asked at most every 5 min.
  // Keys fetched under one CA never serve another: the anchor is part of every cache key.
  const store = fileKeyStore(join(ctx.paths.cacheDir, "jwks"), { create: true });
  const cache = grantKeysCache(http, store, trustAnchorId(ca));
  const result = await verifyAuthzJwt(jwt, { ...checks, http, cache });
  printData(ctx, { ...result, claims: result.claims ?? null }, () =>
    result.valid
      ? `valid: grant ${fmt.shown(result.claims.grant_id)} of ${fmt.shown(result.claims.sub)}, approved by ${fmt.shown(result.claims.decided_by)}${result.consumed ? ` (${result.consumed})` : ""}`
      : "",
  );
  if (result.valid) return;
  const unreachable = result.reason === "jwks_unavailable" || result.reason === "idp_unreachable";
  throw new CliError(`invalid grant token: ${result.reason}: ${fmt.shown(result.detail)}`, {
    exitCode: unreachable ? ExitCode.UNAVAILABLE : ExitCode.NOPERM,
  });
}

/** The token from the file or stdin, bounded in size (and stdin in time: a writer that never closes). */
async function readToken(ctx: Context, file: string | undefined): Promise<string> {
  const text = file !== undefined && file !== "-" ? await readTokenFile(file) : await readStdin(ctx);
  const token = text.trim();
  if (token === "")
    throw usageError(
      "no token: pipe the AuthZ-JWT in on stdin or name a --token-file",
      "`apes grants token <id> | apes grants verify --audience ...`",
    );
  return token;
}

async function readTokenFile(file: string): Promise<string> {
  const { open } = await import("node:fs/promises");
  const handle = await open(file, "r").catch((e: Error) => {
    throw usageError(`cannot read --token-file ${file}: ${e.message}`);
  });
  try {
    const buf = Buffer.alloc(MAX_INPUT_BYTES + 1);
    const { bytesRead } = await handle.read(buf, 0, MAX_INPUT_BYTES + 1, 0);
    if (bytesRead > MAX_INPUT_BYTES)
      throw usageError(`--token-file ${file} is larger than ${MAX_INPUT_BYTES} bytes`);
    return buf.subarray(0, bytesRead).toString("utf8");
  } finally {
    await handle.close();
  }
}

async function readStdin(ctx: Context): Promise<string> {
  const stdin = ctx.io.stdin as NodeJS.ReadableStream & { isTTY?: boolean; destroy?: (e?: Error) => void };
  if (stdin.isTTY)
    throw usageError(
      "the token is read from stdin, which is a terminal",
      "pipe it in: `apes grants token <id> | apes grants verify --audience ...`, or use --token-file",
    );
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    stdin.destroy?.(new Error("timeout"));
  }, STDIN_TIMEOUT_MS);
  let size = 0;
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stdin) {
      const b = typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer);
      size += b.length;
      if (size > MAX_INPUT_BYTES)
        throw usageError(`the token on stdin is larger than ${MAX_INPUT_BYTES} bytes`);
      chunks.push(b);
    }
  } catch (e) {
    if (timedOut)
      throw usageError(`no token on stdin within ${STDIN_TIMEOUT_MS / 1000} s (is stdin closed?)`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
  return Buffer.concat(chunks).toString("utf8");
}
