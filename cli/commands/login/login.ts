import { type Command, Option } from "commander";
import type { Context } from "../../context.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

export interface LoginOptions {
  key?: string;
  idp?: string;
  browser?: boolean;
  device?: boolean;
}

export function register(program: Command, getContext: GetContext): void {
  program
    .command("login")
    .description(
      "log in with an Ed25519 key, or as a human in the browser (passkey at the IdP) or with a device code",
    )
    .argument("[email]", "your identity; default: the comment of <key>.pub when it is an email")
    .addOption(
      new Option("--key <path>", "private key (OpenSSH or PKCS#8 PEM, unencrypted)").default(
        undefined,
        "$XDG_CONFIG_HOME/apes/id_ed25519, then ~/.ssh/id_ed25519",
      ),
    )
    .option("--browser", "log in in the browser (authorization code + PKCE on a loopback redirect)")
    .option("--device", "log in with a code typed at the IdP's /device page on any device (RFC 8628)")
    .option(
      "--idp <url>",
      "the IdP (default: config `idp` / APES_IDP, else DNS discovery of the email's domain)",
    )
    .addHelpText(
      "after",
      `
Without --key, --browser or --device: a key login when a default key exists, else the
browser. The browser flow opens $BROWSER (else xdg-open; the URL is printed on stderr too),
waits on http://127.0.0.1:<random port>/callback and checks state, nonce and the id_token;
its session renews itself with a refresh token (rotated at each use) until \`apes logout\`
revokes it. --device prints a code to enter at the IdP's /device page.

The IdP comes from --idp, else the config (\`idp\` in config.toml or APES_IDP), else the
current session when it is for the same email, else DDISA discovery (_ddisa.<domain> TXT;
--debug shows the record and its mode). The session is stored in
$XDG_CONFIG_HOME/apes/auth.json (0600) with the key's path and fingerprint; every command
re-authenticates with that key when less than 60 s of the token remain.

Examples:
  $ apes login alice@example.com
  $ apes login --browser alice@example.com           in the browser, with a passkey at the IdP
  $ apes login --device alice@example.com            headless: enter a code on another device
  $ apes login alice@example.com --key ~/.ssh/id_ed25519 --idp https://id.example.com
  $ apes login --key ~/.config/apes/id_ed25519      email from the key's .pub comment (agents)
  $ apes --json login bot+agent@example.com`,
    )
    .action(async (email: string | undefined, options: LoginOptions) => {
      await login(getContext(), email, options);
    });
}

export async function login(
  ctx: Context,
  emailArg: string | undefined,
  options: LoginOptions,
): Promise<void> {
  const [{ chooseKeyPath, emailFromPublicKey, looksLikeEmail }, { loadPrivateKey }, { logInWithKey }] =
    await Promise.all([
      import("../../auth/keys.ts"),
      import("../../../client/keys.ts"),
      import("../../../client/session.ts"),
    ]);
  const { usageError } = await import("../../errors.ts");
  if ([options.key !== undefined, options.browser, options.device].filter(Boolean).length > 1) {
    throw usageError("give at most one of --key, --browser and --device");
  }
  if (options.browser || options.device || (options.key === undefined && !(await hasDefaultKey(ctx)))) {
    const email = emailArg?.trim();
    if (!email) throw usageError("which identity? give the email: `apes login <email>`");
    if (!looksLikeEmail(email)) throw usageError(`"${email}" is not an email address`);
    return humanLogin(ctx, email, options);
  }
  const keyPath = await chooseKeyPath(ctx, options.key);
  const loaded = await loadPrivateKey(ctx, keyPath);

  let email = emailArg?.trim();
  if (!email) {
    email = await emailFromPublicKey(keyPath);
    if (!email) {
      throw usageError(
        "which identity? give the email: `apes login <email>`",
        `(without an email, apes reads it from the comment of ${keyPath}.pub; \`apes keygen --comment <email>\` writes one)`,
      );
    }
    ctx.debug(`login: email ${email} from ${keyPath}.pub`);
  }
  if (!looksLikeEmail(email)) throw usageError(`"${email}" is not an email address`);

  const idp = await chooseIdp(ctx, email, options.idp);
  const { session, login: result } = await logInWithKey(ctx, idp, email, loaded);
  const { formatTime } = await import("../../output.ts");
  printData(
    ctx,
    {
      email: session.email,
      act: session.act,
      idp,
      issuer: result.endpoints.issuer,
      expires_at: session.expires_at,
      key_path: session.key_path,
      key_fingerprint: session.key_fingerprint,
    },
    () =>
      `logged in as ${session.email} (${session.act}) at ${idp}\n` +
      `token valid until ${formatTime(session.expires_at)}; renewed with ${loaded.path} (${loaded.fingerprint})`,
  );
}

async function hasDefaultKey(ctx: Context): Promise<boolean> {
  const [{ defaultKeyCandidates }, { stat }] = await Promise.all([
    import("../../../client/keys.ts"),
    import("node:fs/promises"),
  ]);
  for (const c of defaultKeyCandidates(ctx)) {
    if (
      await stat(c).then(
        () => true,
        () => false,
      )
    )
      return true;
  }
  return false;
}

/** The browser or device flow: a human's session with a refresh token (client/oauth.ts). */
async function humanLogin(ctx: Context, email: string, options: LoginOptions): Promise<void> {
  const idp = await chooseIdp(ctx, email, options.idp);
  const store = await import("../../../client/session-store.ts");
  let session: Awaited<ReturnType<typeof store.readSession>>;
  if (options.device) {
    const { deviceLogin } = await import("../../../client/device-login.ts");
    session = await deviceLogin(ctx, idp, email, {
      show: (i) =>
        ctx.io.stderr.write(
          `apes: to log in as ${email}, open ${i.verificationUri} on any device\n` +
            `  and enter the code  ${i.userCode}  (valid ${Math.round(i.expiresIn / 60)} min)\n`,
        ),
    });
  } else {
    const [{ browserLogin }, { openBrowser }] = await Promise.all([
      import("../../../client/browser-login.ts"),
      import("../../auth/browser.ts"),
    ]);
    session = await browserLogin(ctx, idp, email, { open: (url) => openBrowser(ctx, url) });
  }
  const stored = session!;
  await store.withSessionLock(ctx, () => store.writeSession(ctx, stored));
  const { formatTime } = await import("../../output.ts");
  printData(
    ctx,
    { email: stored.email, act: stored.act, idp, method: stored.method, expires_at: stored.expires_at },
    () =>
      `logged in as ${stored.email} (${stored.act}) at ${idp} (${stored.method})\n` +
      `token valid until ${formatTime(stored.expires_at)}; renewed with a refresh token until \`apes logout\``,
  );
}

async function chooseIdp(ctx: Context, email: string, explicit: string | undefined): Promise<string> {
  const { normalizeIdpUrl } = await import("../../../client/discovery.ts");
  if (explicit) {
    ctx.debug(`login: idp ${explicit} from --idp`);
    return normalizeIdpUrl(explicit);
  }
  const config = await ctx.config();
  if (!config.idp) {
    const { readSession } = await import("../../../client/session-store.ts");
    const current = await readSession(ctx).catch(() => undefined);
    if (current && current.email.toLowerCase() === email.toLowerCase()) {
      ctx.debug(`login: idp ${current.idp} from the current session of ${current.email}`);
      return normalizeIdpUrl(current.idp);
    }
  }
  const { discoverIdp } = await import("../../../client/ddisa.ts");
  const found = await discoverIdp(ctx, email);
  for (const line of found.explanation) ctx.debug(`login: ${line}`);
  if (found.record) {
    ctx.debug(
      `login: DDISA record idp=${found.record.idp} mode=${found.record.mode ?? "open"} (via ${found.via})`,
    );
  }
  return normalizeIdpUrl(found.idp);
}
