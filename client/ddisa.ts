import type { DdisaRecord } from "../protocol/ddisa.ts";
import type { DdisaCache, Resolution } from "../protocol/resolver.ts";
import type { ClientContext, DnsConfig } from "./context.ts";
import { ClientError } from "./errors.ts";

/** What DDISA discovery reads: the context, with the configured IdP and DNS settings in its config. */
export type DdisaContext = Omit<ClientContext, "config"> & { config(): Promise<DnsConfig> };

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
 * Throws ClientError: invalid_email when `email` is not an address; configured_idp_invalid; dns_unavailable
 * when DNS (and DoH) cannot be reached; dns_config for unusable DNS settings; no_ddisa_record when no
 * valid DDISA record exists; ddisa_denied when the domain's record says `mode=deny`.
 */
export async function discoverIdp(ctx: DdisaContext, email: string): Promise<Discovery> {
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
      throw new ClientError(
        "configured_idp_invalid",
        `configured idp "${config.idp}" must be an https URL (plain http only on a loopback address)`,
        { idp: config.idp, ...(config.source ? { source: config.source } : {}) },
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
    throw new ClientError(
      "no_ddisa_record",
      `no valid DDISA record at ${resolution.name}: ${selection.explanation.join("; ")}`,
      { email, name: resolution.name },
    );
  }
  if (record.mode === "deny") {
    throw new ClientError(
      "ddisa_denied",
      `${resolution.domain} does not allow logins through DDISA (mode=deny at ${resolution.name})`,
      { email, domain: resolution.domain },
    );
  }
  ctx.debug(`discovery: idp ${record.idp} via ${resolution.via}`);
  return { idp: record.idp, via: resolution.via, record, explanation };
}

/**
 * Resolve `_ddisa.<domain of email>` with the user's DNS settings. `email` may also be a bare domain.
 * Throws ClientError invalid_email, dns_unavailable or dns_config. Used by `apes dns check` too.
 */
export async function resolveForEmail(ctx: DdisaContext, email: string): Promise<Resolution> {
  const { emailDomain } = await import("../protocol/ddisa.ts");
  const { DdisaCache, DnsUnavailableError, resolveDdisa } = await import("../protocol/resolver.ts");
  let domain: string;
  try {
    domain = emailDomain(email.includes("@") ? email : `x@${email}`);
  } catch (e) {
    throw new ClientError("invalid_email", (e as Error).message, { email });
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
      throw new ClientError(
        "dns_unavailable",
        e.message,
        { doh: config.dns.dohUrl !== undefined },
        { cause: e },
      );
    }
    // A bad server address or DoH URL in the configuration.
    throw new ClientError("dns_config", `DNS settings: ${(e as Error).message}`, {});
  }
}
