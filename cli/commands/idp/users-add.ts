import { existsSync, readFileSync } from "node:fs";
import type { Command } from "commander";
import { hasUnsafeChars } from "../../../protocol/display.ts";
import { CliError, usageError } from "../../errors.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";
import {
  databaseKeyFileOption,
  databaseOption,
  databasePasswordFileOption,
  dataOption,
  inviteIssuerOption,
  inviteSettings,
  inviteText,
  inviteTtl,
  inviteTtlOption,
  makeInvite,
  openStore,
  type StoreOpts,
} from "./common.ts";

interface AddOpts extends StoreOpts {
  human?: boolean;
  agent?: boolean;
  owner?: string;
  approver: string[];
  key?: string;
  admin?: boolean;
  name?: string;
  invite?: boolean;
  ttl?: string;
  issuer?: string;
}

const collect = (v: string, prev: string[]) => [...prev, v];

/** `--key` takes the public key line itself or a file holding it. */
function readKeyArg(value: string): string {
  if (value.trim().startsWith("ssh-")) return value.trim();
  if (!existsSync(value))
    throw usageError(`--key: no such file ${value}`, "give an ssh-ed25519 public key line or a .pub file");
  return readFileSync(value, "utf8").trim().split("\n")[0]!.trim();
}

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("add")
    .description("add a human or an agent (an agent needs an owner)")
    .argument("<email>", "the identity's email")
    .option("--human", "a person")
    .option("--agent", "an AI agent or daemon (needs --owner)")
    .option("--owner <email>", "the human owning the agent (decides its grants)")
    .option("--approver <email>", "a human who may also decide this user's grants (repeatable)", collect, [])
    .option("--key <key>", "ssh-ed25519 public key line, or a file containing it")
    .option("--admin", "may see every grant and decide humans' grants")
    .option("--name <name>", "display name")
    .option("--invite", "print a one-time link to register a passkey (humans)")
    .addOption(inviteTtlOption())
    .addOption(inviteIssuerOption())
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText(
      "after",
      `
Safe while the server runs.

Examples:
  $ apes idp users add alice@example.com --human --key ~/.ssh/id_ed25519.pub --admin
  $ apes idp users add bot@example.com --agent --owner alice@example.com --key "ssh-ed25519 AAAA... bot"
  $ apes idp users add carol@example.com --human --approver alice@example.com
  $ apes idp users add dora@example.com --human --invite --ttl 2h`,
    )
    .action(async (emailArg: string, opts: AddOpts) => {
      const ctx = getContext();
      const [{ identityArg }, keys] = await Promise.all([
        import("../../identity.ts"),
        import("../../../protocol/keys.ts"),
      ]);
      const email = identityArg("the email", emailArg);
      if (opts.name !== undefined && hasUnsafeChars(opts.name))
        throw usageError("--name contains control, bidi or invisible characters");
      if (Boolean(opts.human) === Boolean(opts.agent))
        throw usageError("give exactly one of --human or --agent");
      const kind = opts.agent ? "agent" : "human";
      if (kind === "agent" && !opts.owner) throw usageError("an agent needs --owner <human email>");
      if (kind === "human" && opts.owner) throw usageError("--owner is only for agents");
      if (kind === "agent" && opts.admin) throw usageError("agents cannot be admins");
      if (kind === "agent" && opts.invite)
        throw usageError("--invite is for humans (agents log in with --key)");
      if (!opts.invite && (opts.ttl !== undefined || opts.issuer !== undefined))
        throw usageError("--ttl and --issuer go with --invite");
      const ttl = opts.invite ? await inviteTtl(opts) : undefined;
      let publicKey: string | undefined;
      let fingerprint: string | undefined;
      if (opts.key !== undefined) {
        publicKey = readKeyArg(opts.key);
        try {
          fingerprint = keys.fingerprint(keys.parseSshPublicKey(publicKey).key);
        } catch (e) {
          throw usageError(
            `--key: ${(e as Error).message}`,
            "give an ssh-ed25519 public key line or a .pub file",
          );
        }
      }
      const store = await openStore(ctx, opts);
      try {
        const settings = ttl !== undefined ? await inviteSettings(ctx, opts, store, ttl) : undefined;
        if (await store.getUser(email))
          throw new CliError(`${email} already exists`, { hint: "`apes idp users list` shows the users" });
        const owner = opts.owner === undefined ? undefined : identityArg("--owner", opts.owner);
        const approvers = opts.approver.map((a) => identityArg("--approver", a));
        for (const h of owner ? [owner, ...approvers] : approvers) {
          const u = await store.getUser(h);
          if (u?.kind !== "human") {
            throw new CliError(`${h} is not a human user of this IdP`, {
              hint: `add it first: apes idp users add ${h} --human`,
            });
          }
        }
        if (approvers.includes(email)) throw usageError("a user cannot be its own approver");
        await store.addUser({
          email,
          kind,
          ...(owner ? { owner } : {}),
          approvers,
          admin: Boolean(opts.admin),
          ...(publicKey ? { publicKey, fingerprint } : {}),
          ...(opts.name ? { name: opts.name } : {}),
          createdAt: Math.floor(ctx.clock.now() / 1000),
        });
        const invite = settings ? await makeInvite(ctx, store, email, settings) : undefined;
        printData(
          ctx,
          {
            email,
            kind,
            owner: owner ?? null,
            approvers,
            admin: Boolean(opts.admin),
            fingerprint: fingerprint ?? null,
            ...(invite ? { invite_url: invite.url, invite_expires_at: invite.expiresAt } : {}),
          },
          () =>
            `added ${kind} ${email}${fingerprint ? ` (${fingerprint})` : ""}` +
            (invite ? `\n${inviteText(invite)}` : ""),
        );
      } finally {
        await store.close();
      }
    });
}
