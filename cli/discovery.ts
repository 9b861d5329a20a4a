import type { DdisaRecord } from "../protocol/ddisa.ts";
import type { DdisaCache, Resolution } from "../protocol/resolver.ts";
import type { Context } from "./context.ts";
import { CliError, configError, unavailableError, usageError } from "./errors.ts";
import { ExitCode } from "./exit-codes.ts";

export interface Discovery {
  /** IdP base URL, no trailing slash. */
  idp: string;
  via: "config" | "dns" | "doh" | "cache";
  /** The winning DDISA record (absent when the IdP came from the configuration). */
  record?: DdisaRecord;
  /** Human-readable steps, for --debug and error hints. */
  explanation: string[];
}

// One cache per clock, so a long-running process (daemon) reuses answers and unit tests with their
// own fake clocks never share entries.
const caches = new WeakMap<object, DdisaCache>();

/**
 * Find the IdP for `email`: the configured `idp` (config.toml or APES_IDP) when set, else the
 * DDISA record at `_ddisa.<domain>` (configured DNS servers, DoH fallback, loopback-http setting).
 *
 * Throws CliError: 2 when `email` is not an address; 78 when the configured idp is unusable;
 * 69 when DNS (and DoH) cannot be reached; 1 when no valid DDISA record exists; 77 when the
 * domain's record says `mode=deny`.
 */
export async function discoverIdp(ctx: Context, email: string): Promise<Discovery> {
  const config = await ctx.config();
  if (config.idp) {
    const { isLoopbackHost, normalizeIdp } = await import("../protocol/ddisa.ts");
    let url: URL | undefined;
    try {
      url = new URL(config.idp);
    } catch {
      url = undefined;
    }
    // The user chose this IdP, so plain http to loopback is accepted; to anywhere else it would send
    // tokens in the clear.
    const ok =
      url &&
      !url.username &&
      !url.password &&
      (url.protocol === "https:" || (url.protocol === "http:" && isLoopbackHost(url.hostname)));
    if (!ok) {
      throw configError(
        `configured idp "${config.idp}" must be an https URL (plain http only on a loopback address)`,
        `fix \`idp\` in ${config.source ?? "config.toml"} or APES_IDP`,
      );
    }
    const idp = normalizeIdp(config.idp);
    ctx.debug(`discovery: idp ${idp} from configuration (DNS not consulted)`);
    return {
      idp,
      via: "config",
      explanation: [`idp ${idp} set in ${config.idp === ctx.env.APES_IDP ? "APES_IDP" : "config"}`],
    };
  }

  const resolution = await resolveForEmail(ctx, email);
  const { selection } = resolution;
  for (const line of selection.explanation) ctx.debug(`discovery: ${line}`);
  const explanation = [
    `${resolution.name} TXT via ${resolution.via} (${resolution.server}, ttl ${resolution.ttl} s)`,
    ...selection.explanation,
  ];
  const record = selection.selected;
  if (!record) {
    throw new CliError(`no valid DDISA record at ${resolution.name}: ${selection.explanation.join("; ")}`, {
      exitCode: ExitCode.ERROR,
      hint:
        `run \`apes dns check ${email}\` to see what DNS returns; the domain's admin publishes\n` +
        `${resolution.name} TXT "v=ddisa1 idp=https://id.example.com; mode=open"\n` +
        'or set the IdP yourself: `idp = "https://..."` in config.toml, or APES_IDP',
    });
  }
  if (record.mode === "deny") {
    throw new CliError(
      `${resolution.domain} does not allow logins through DDISA (mode=deny at ${resolution.name})`,
      {
        exitCode: ExitCode.NOPERM,
        hint: `ask the admins of ${resolution.domain}; \`apes dns check ${email}\` shows the record`,
      },
    );
  }
  ctx.debug(`discovery: idp ${record.idp} via ${resolution.via}`);
  return { idp: record.idp, via: resolution.via, record, explanation };
}

/**
 * Resolve `_ddisa.<domain of email>` with the user's DNS settings. `email` may also be a bare domain.
 * Throws CliError 2 (not an address) or 69 (DNS unreachable). Used by `apes dns check` too.
 */
export async function resolveForEmail(ctx: Context, email: string): Promise<Resolution> {
  const { emailDomain } = await import("../protocol/ddisa.ts");
  const { DdisaCache, DnsUnavailableError, resolveDdisa } = await import("../protocol/resolver.ts");
  let domain: string;
  try {
    domain = emailDomain(email.includes("@") ? email : `x@${email}`);
  } catch (e) {
    throw usageError((e as Error).message, "give an email address such as alice@example.com");
  }
  const config = await ctx.config();
  let cache = caches.get(ctx.clock);
  if (!cache) {
    cache = new DdisaCache(ctx.clock);
    caches.set(ctx.clock, cache);
  }
  try {
    return await resolveDdisa(domain, {
      servers: config.dns.servers,
      dohUrl: config.dns.dohUrl,
      timeoutMs: config.dns.timeoutMs,
      allowLoopbackHttp: config.dns.allowLoopbackHttp,
      fetch: ctx.http,
      cache,
    });
  } catch (e) {
    if (e instanceof DnsUnavailableError) {
      throw unavailableError(
        e.message,
        config.dns.dohUrl
          ? "check the network, `dns.servers` and `dns.doh_url` in config.toml (or APES_DNS_SERVERS, APES_DOH_URL)"
          : "check the network and `dns.servers` in config.toml (or APES_DNS_SERVERS); `dns.doh_url` adds a DNS-over-HTTPS fallback",
        e,
      );
    }
    // A bad server address or DoH URL in the configuration.
    throw configError(
      `DNS settings: ${(e as Error).message}`,
      "fix [dns] in config.toml or APES_DNS_SERVERS",
    );
  }
}
