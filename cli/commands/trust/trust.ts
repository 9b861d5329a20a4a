import type { Command } from "commander";
import { DEFAULT_RUN_AS } from "../../../protocol/names.ts";
import { ELEVATION_AUDIENCE } from "../../../protocol/types.ts";
import type { Context } from "../../context.ts";
import { CliError, usageError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";
import { defaultTrustDeps, show, summary, type TrustDeps, toJson } from "../../trust/policy-view.ts";

/**
 * `sudo apes trust ...` writes the elevation policy ($(SYSCONFDIR)/apes/config.toml, root:root 0600,
 * atomically) after checking that the real uid is 0 and (unless --skip-validation) that the IdP's
 * discovery document and JWKS are usable. `apes trust --show` prints the current policy.
 */

export interface TrustOptions {
  idp?: string[];
  approvers?: string[];
  map?: string[];
  audience?: string[];
  runAs?: string[];
  host?: string;
  caFile?: string;
  allowSelfApproval?: boolean;
  skipValidation?: boolean;
  show?: boolean;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];
const collectList = (value: string, previous: string[] = []) => [
  ...previous,
  ...value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean),
];

export function register(program: Command, getContext: GetContext): void {
  program
    .command("trust")
    .description("write the elevation policy (as root): which IdP, approvers and identities the shim trusts")
    .option("--idp <url>", "the IdP whose grants are accepted (repeatable)", collect)
    .option(
      "--approvers <list>",
      "identities whose approval counts, comma-separated (repeatable)",
      collectList,
    )
    .option("--map <user=ids>", "Unix user = identity[,identity] it may act as (repeatable)", collect)
    .option("--audience <aud>", 'accepted grant audiences (default "escapes"; repeatable)', collectList)
    .option("--run-as <list>", "Unix users commands may run as (default root)", collectList)
    .option("--host <name>", "this machine's name in grants (default: the hostname)")
    .option(
      "--ca-file <pem>",
      "the IdP's TLS CA certificate(s): copied into the policy and pinned (system roots then not trusted)",
    )
    .option("--allow-self-approval", "accept grants approved by their own requester (off by default)")
    .option("--skip-validation", "do not fetch the IdP's discovery document and JWKS before writing")
    .option("--show", "print the current policy instead of writing one (root only: the file is 0600)")
    .addHelpText(
      "after",
      `
The policy replaces the previous one as a whole. It is written atomically to
$(SYSCONFDIR)/apes/config.toml (default /etc/apes/config.toml), owned by root, mode 0600;
the path comes from the installation (paths.json next to the installed executable),
never from the command line. Every key is described in README.md ("## Elevation").

The IdP must be https: a plain http IdP, even on 127.0.0.1, is refused, because
while it is down any local user can bind its port, serve keys of their own and
have any command run as root. For a private CA, --ca-file copies the CA into the
policy and pins it (the system roots are then not trusted).

Examples:
  $ sudo apes trust --idp https://id.example.com --approvers alice@example.com \\
      --map deploy=agent-deploy@example.com --run-as root,postgres
  $ sudo apes trust --idp https://127.0.0.1:8443 --ca-file ./ca.pem \\
      --approvers alice@example.com --map deploy=agent@example.com
  $ sudo apes trust --show --json`,
    )
    .action(async (opts: TrustOptions) => {
      const ctx = getContext();
      const deps = await defaultTrustDeps();
      if (opts.show) await show(ctx, deps);
      else await trust(ctx, opts, deps);
    });
}

/** The policy the options describe (pure apart from reading --ca-file). Throws a usage error. */
export async function policyFromOptions(opts: TrustOptions, hostname: string) {
  const { parsePolicy, PolicyError, serializePolicy } = await import("../../../verifier/policy.ts");
  if (!opts.idp?.length) throw usageError("--idp is required", "e.g. --idp https://id.example.com");
  if (!opts.approvers?.length)
    throw usageError("--approvers is required", "e.g. --approvers alice@example.com,bob@example.com");
  if (!opts.map?.length) throw usageError("--map is required", "e.g. --map deploy=agent-deploy@example.com");
  const users: Record<string, string[]> = {};
  for (const m of opts.map) {
    const eq = m.indexOf("=");
    const user = m.slice(0, eq).trim();
    const ids = m
      .slice(eq + 1)
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    if (eq <= 0 || ids.length === 0) throw usageError(`--map "${m}" is not user=identity[,identity]`);
    users[user] = [...new Set([...(users[user] ?? []), ...ids])];
  }
  let caPem: string | undefined;
  if (opts.caFile) {
    const { readFile } = await import("node:fs/promises");
    try {
      caPem = await readFile(opts.caFile, "utf8");
    } catch (e) {
      throw usageError(`cannot read --ca-file ${opts.caFile}: ${(e as Error).message}`);
    }
    if (!caPem.includes("-----BEGIN CERTIFICATE-----"))
      throw usageError(`${opts.caFile} holds no PEM certificate`);
  }
  const draft = {
    version: 1 as const,
    issuers: opts.idp,
    approvers: opts.approvers,
    audiences: opts.audience?.length ? opts.audience : [ELEVATION_AUDIENCE],
    host: opts.host ?? hostname,
    runAs: opts.runAs?.length ? opts.runAs : [DEFAULT_RUN_AS],
    allowSelfApproval: Boolean(opts.allowSelfApproval),
    ...(caPem ? { caPem } : {}),
    users,
  };
  // Round-trip through the parser: what we write is exactly what the verifier will accept.
  try {
    const text = serializePolicy(
      draft,
      'apes elevation policy, written by `apes trust`; see README.md "## Elevation"',
    );
    return { policy: parsePolicy(text, "the new policy", { hostname }), text };
  } catch (e) {
    if (e instanceof PolicyError) throw usageError(e.message.replace(/^the new policy: /, ""));
    throw e;
  }
}

export async function trust(ctx: Context, opts: TrustOptions, deps: TrustDeps): Promise<void> {
  if (deps.getuid() !== 0) {
    throw new CliError("apes trust writes the root-owned policy: run it as root", {
      exitCode: ExitCode.NOPERM,
      hint: "sudo apes trust ...",
    });
  }
  const { policy, text } = await policyFromOptions(opts, deps.hostname());
  if (!opts.skipValidation) {
    const [{ httpForPolicy }, { fetchIssuerKeys }, { publicKeyFromJwk }] = await Promise.all([
      import("../../../verifier/verify.ts"),
      import("../../../protocol/jwks.ts"),
      import("../../../protocol/jwt.ts"),
    ]);
    const http = httpForPolicy(policy);
    const getJson = (url: string) => http(url, { method: "GET", headers: { accept: "application/json" } });
    for (const issuer of policy.issuers) {
      try {
        // The same discovery rules the verifier applies (protocol/jwks.ts), with its grants endpoint.
        const meta = await fetchIssuerKeys(getJson, issuer, "apes-trust", deps.nowS(), [
          "openape_grants_endpoint",
        ]);
        const ed = meta.keys.filter((k) => publicKeyFromJwk(k) !== undefined);
        if (ed.length === 0) throw new Error(`${meta.jwksUri} publishes no Ed25519 key`);
        ctx.io.stderr.write(
          `apes: ${issuer}: discovery and JWKS ok (${ed.length} Ed25519 key${ed.length > 1 ? "s" : ""})\n`,
        );
      } catch (e) {
        throw new CliError(`cannot validate the IdP ${issuer}: ${(e as Error).message}`, {
          exitCode: ExitCode.UNAVAILABLE,
          hint: "check the URL and that the IdP runs (for a private CA add --ca-file), or write anyway with --skip-validation",
        });
      }
    }
  }
  const paths = deps.paths();
  await writePolicyFile(paths.configFile, text);
  printData(
    ctx,
    { path: paths.configFile, policy: toJson(policy) },
    () => `wrote ${paths.configFile} (root:root 0600)\n${summary(policy)}`,
  );
}

/** Atomic write: a temp file in the same directory (0600, O_EXCL), fsync, chown root, rename. */
export async function writePolicyFile(file: string, text: string): Promise<void> {
  const { mkdir, open, rename, rm, chown } = await import("node:fs/promises");
  const { dirname } = await import("node:path");
  const dir = dirname(file);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const tmp = `${file}.${process.pid}.tmp`;
  const fh = await open(tmp, "wx", 0o600);
  try {
    await fh.writeFile(text, "utf8");
    await fh.chmod(0o600);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await chown(tmp, 0, 0);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
