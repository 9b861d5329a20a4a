import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { isLoopbackHost } from "../protocol/ddisa.ts";
import { visible } from "../protocol/display.ts";
import { parseDurationMs } from "../protocol/duration.ts";
import { configError } from "./errors.ts";

/**
 * User configuration: $XDG_CONFIG_HOME/apes/config.toml. Every key is optional; unknown keys are an
 * error (a typo should not silently fall back to a default). Environment variables win over the file.
 *
 *   idp = "https://id.example.com"       # skip DNS discovery
 *   [dns]
 *   servers = ["127.0.0.1:5353"]          # resolvers for _ddisa lookups (default: the system's)
 *   doh_url = "https://dns.example/resolve"  # DNS-over-HTTPS JSON fallback
 *   allow_loopback_http = false           # accept http://127.0.0.1 IdPs (single-machine setups)
 *   timeout = "5s"
 *   ca_file = "/etc/apes/idp-ca.pem"     # extra CA for a private-PKI IdP (env APES_CA_FILE wins)
 *   allow_raw_login_signature = false     # sign an older IdP's bare challenge (docs/signatures.md)
 *   idp_endpoint_origins = ["https://api.example.com"]  # other origins discovery may point at
 *   keep_warm = "5m"                      # the warm requester's idle time, "0": none (env APES_KEEP_WARM)
 */
export interface UserConfig {
  idp?: string;
  dns: {
    servers?: string[];
    dohUrl?: string;
    allowLoopbackHttp: boolean;
    timeoutMs: number;
  };
  /** PEM file with extra CA certificates trusted for HTTPS to the IdP (added to the system roots). */
  caFile?: string;
  /**
   * Log in at IdPs that only verify a signature over the bare challenge. Off by default: such a
   * signature is not bound to the IdP, so that IdP could use it at another where the key is registered.
   */
  allowRawLoginSignature: boolean;
  /**
   * Origins (`https://host[:port]`) besides the IdP's own that its discovery document may name as
   * endpoints; anything else is refused, so a discovery document cannot send the token elsewhere.
   */
  idpEndpointOrigins: string[];
  /**
   * How long the caller's warm requester (cli/elevation/resident.ts) stays after its last elevation,
   * in ms; 0: no warm requester, every elevation starts its own.
   */
  keepWarmMs: number;
  /** Where the file was read from, if it existed. */
  source?: string;
}

export const DEFAULT_DNS_TIMEOUT_MS = 5000;
/** Like sudo's credential cache: long enough for an agent's next command, short enough not to linger. */
export const DEFAULT_KEEP_WARM_MS = 5 * 60_000;

export function defaultConfig(): UserConfig {
  return {
    dns: { allowLoopbackHttp: false, timeoutMs: DEFAULT_DNS_TIMEOUT_MS },
    allowRawLoginSignature: false,
    idpEndpointOrigins: [],
    keepWarmMs: DEFAULT_KEEP_WARM_MS,
  };
}

export async function loadUserConfig(
  configDir: string,
  env: Readonly<Record<string, string | undefined>>,
): Promise<UserConfig> {
  const file = join(configDir, "config.toml");
  let text: string | undefined;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
      throw configError(`cannot read ${file}: ${(e as Error).message}`);
    }
  }
  const config = text === undefined ? defaultConfig() : await parseUserConfig(text, file);
  return applyEnv(config, env);
}

export async function parseUserConfig(text: string, file: string): Promise<UserConfig> {
  const { parse } = await import("smol-toml");
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (e) {
    throw configError(
      `${file}: ${(e as Error).message}`,
      "fix the TOML syntax, or remove the file to use defaults",
    );
  }
  const config = defaultConfig();
  config.source = file;
  const bad = (key: string, what: string) => configError(`${file}: "${key}" must be ${what}`);
  for (const [key, value] of Object.entries(doc)) {
    switch (key) {
      case "idp":
        if (typeof value !== "string" || !/^https?:\/\//.test(value)) throw bad("idp", "an http(s) URL");
        config.idp = value;
        break;
      case "dns": {
        if (!value || typeof value !== "object" || Array.isArray(value)) throw bad("dns", "a table");
        for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
          if (k === "servers") {
            if (!Array.isArray(v) || !v.every((s) => typeof s === "string" && s.length > 0)) {
              throw bad("dns.servers", "an array of host[:port] strings");
            }
            config.dns.servers = v as string[];
          } else if (k === "doh_url") {
            if (typeof v !== "string" || !/^https?:\/\//.test(v)) throw bad("dns.doh_url", "an http(s) URL");
            config.dns.dohUrl = v;
          } else if (k === "allow_loopback_http") {
            if (typeof v !== "boolean") throw bad("dns.allow_loopback_http", "true or false");
            config.dns.allowLoopbackHttp = v;
          } else if (k === "timeout") {
            const ms = typeof v === "string" ? parseDuration(v) : undefined;
            if (ms === undefined) throw bad("dns.timeout", 'a duration such as "5s"');
            config.dns.timeoutMs = ms;
          } else {
            throw configError(`${file}: unknown key "dns.${k}"`);
          }
        }
        break;
      }
      case "ca_file":
        if (typeof value !== "string" || value.length === 0) throw bad("ca_file", "a path to a PEM file");
        config.caFile = value;
        break;
      case "allow_raw_login_signature":
        if (typeof value !== "boolean") throw bad("allow_raw_login_signature", "true or false");
        config.allowRawLoginSignature = value;
        break;
      case "idp_endpoint_origins": {
        const origins = Array.isArray(value) ? value.map(endpointOrigin) : [undefined];
        if (origins.some((o) => o === undefined)) {
          throw bad(key, 'an array of origins such as "https://api.example.com" (http only for loopback)');
        }
        config.idpEndpointOrigins = origins as string[];
        break;
      }
      case "keep_warm": {
        const ms = typeof value === "string" ? parseDuration(value) : undefined;
        if (ms === undefined) throw bad(key, 'a duration such as "5m", or "0" for none');
        config.keepWarmMs = ms;
        break;
      }
      default:
        throw configError(`${file}: unknown key "${key}"`, "see `apes --help` and README.md for the keys");
    }
  }
  return config;
}

/** The origin `value` names (scheme, host, port and nothing else; https, or http on loopback). */
function endpointOrigin(value: unknown): string | undefined {
  if (typeof value !== "string") return undefined;
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    return undefined;
  }
  const onlyOrigin = !u.username && !u.password && u.pathname === "/" && !u.search && !u.hash;
  const secure = u.protocol === "https:" || (u.protocol === "http:" && isLoopbackHost(u.hostname));
  return onlyOrigin && secure && !value.endsWith("#") && !value.endsWith("?") ? u.origin : undefined;
}

function applyEnv(config: UserConfig, env: Readonly<Record<string, string | undefined>>): UserConfig {
  if (env.APES_IDP) config.idp = env.APES_IDP;
  if (env.APES_DNS_SERVERS) config.dns.servers = env.APES_DNS_SERVERS.split(",").map((s) => s.trim());
  if (env.APES_DOH_URL) config.dns.dohUrl = env.APES_DOH_URL;
  if (env.APES_ALLOW_LOOPBACK_HTTP === "1") config.dns.allowLoopbackHttp = true;
  if (env.APES_CA_FILE) config.caFile = env.APES_CA_FILE;
  if (env.APES_KEEP_WARM !== undefined) {
    const ms = parseDuration(env.APES_KEEP_WARM);
    if (ms === undefined)
      throw configError(`APES_KEEP_WARM: not a duration: ${visible(env.APES_KEEP_WARM, { max: 40 })}`);
    config.keepWarmMs = ms;
  }
  return config;
}

/** Durations in milliseconds (protocol/duration.ts has the one grammar). */
export const parseDuration = parseDurationMs;
