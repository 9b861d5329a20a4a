import { parseDurationMs } from "../../protocol/duration.ts";

/**
 * The `[notify]` table of the IdP's TOML config (`apes idp serve --config FILE`), checked in full at
 * start: an unknown key or a value out of range refuses to start (exit 78), so a typo never silently
 * turns a channel off. Pure: files named here (the SMTP password, a CA) are read by the server.
 */

export interface SmtpConfig {
  host: string;
  port: number;
  from: string;
  /** A file (0600) holding `user:password` (one line); absent: no AUTH. */
  authFile?: string;
  /** PEM trust anchors for the relay's STARTTLS certificate (default: the system roots). */
  caFile?: string;
}

export interface NotifyConfig {
  /** Where the links in notifications point (default: the issuer): `${linkBase}/grants/{id}`. */
  linkBase?: string;
  /** Deliveries in flight at once. */
  concurrency: number;
  /** One delivery's deadline (connect, TLS, request, answer). */
  timeoutMs: number;
  /** Attempts before a row is dead. */
  maxAttempts: number;
  /** Backoff: first delay, doubled per attempt up to retryMaxMs, with jitter (backoff.ts). */
  retryBaseMs: number;
  retryMaxMs: number;
  /** ntfy server base URL; topics are per subscription. Absent: the ntfy channel is off. */
  ntfyServer?: string;
  smtp?: SmtpConfig;
  /** VAPID subject (mailto: or https: URL, RFC 8292). Absent: the Web Push channel is off. */
  webpushSubject?: string;
  /**
   * Users may subscribe targets on loopback or a private, link-local or unspecified address literal
   * (off by default: a user must not make the IdP post to its own machine's or network's services).
   */
  allowLocalTargets: boolean;
}

export const DEFAULT_NOTIFY: NotifyConfig = {
  concurrency: 4,
  timeoutMs: 10_000,
  maxAttempts: 8,
  retryBaseMs: 5_000,
  retryMaxMs: 15 * 60_000,
  allowLocalTargets: false,
};

type Table = Record<string, unknown>;

function isTable(v: unknown): v is Table {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** An absolute https URL (plain http only to loopback), without credentials, query or fragment. */
export function checkServiceUrl(raw: unknown, key: string, isLoopback: (host: string) => boolean): string {
  if (typeof raw !== "string" || raw.length > 2048) throw new Error(`"${key}" must be a URL`);
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new Error(`"${key}" must be a URL`);
  }
  if (u.protocol !== "https:" && !(u.protocol === "http:" && isLoopback(u.hostname)))
    throw new Error(`"${key}" must be https:// (plain http only on loopback)`);
  if (u.username || u.password || u.search || u.hash)
    throw new Error(`"${key}" must not hold credentials, a query or a fragment`);
  return raw.replace(/\/+$/, "");
}

/** Parses the document's `notify` table (the rest of the document belongs to others). */
export function parseNotifyConfig(doc: unknown, isLoopback: (host: string) => boolean): NotifyConfig {
  const config: NotifyConfig = { ...DEFAULT_NOTIFY };
  if (!isTable(doc)) throw new Error("the config must be a TOML table");
  const notify = doc.notify;
  if (notify === undefined) return config;
  if (!isTable(notify)) throw new Error('"notify" must be a table');
  const int = (v: unknown, key: string, min: number, max: number): number => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
      throw new Error(`"${key}" must be a whole number from ${min} to ${max}`);
    return v;
  };
  const ms = (v: unknown, key: string, min: number, max: number): number => {
    const n = typeof v === "string" ? parseDurationMs(v) : undefined;
    if (n === undefined || n < min || n > max)
      throw new Error(`"${key}" must be a duration from ${min / 1000}s to ${max / 1000}s (e.g. "10s")`);
    return n;
  };
  const str = (v: unknown, key: string, max = 512): string => {
    if (typeof v !== "string" || v.length === 0 || v.length > max || /[\r\n\0]/.test(v))
      throw new Error(`"${key}" must be a one-line string`);
    return v;
  };
  for (const [k, v] of Object.entries(notify)) {
    const key = `notify.${k}`;
    switch (k) {
      case "link_base":
        config.linkBase = checkServiceUrl(v, key, isLoopback);
        break;
      case "concurrency":
        config.concurrency = int(v, key, 1, 64);
        break;
      case "timeout":
        config.timeoutMs = ms(v, key, 100, 60_000);
        break;
      case "max_attempts":
        config.maxAttempts = int(v, key, 1, 50);
        break;
      case "retry_base":
        config.retryBaseMs = ms(v, key, 10, 3_600_000);
        break;
      case "retry_max":
        config.retryMaxMs = ms(v, key, 10, 86_400_000);
        break;
      case "allow_local_targets":
        if (typeof v !== "boolean") throw new Error(`"${key}" must be true or false`);
        config.allowLocalTargets = v;
        break;
      case "ntfy": {
        if (!isTable(v)) throw new Error(`"${key}" must be a table`);
        for (const [nk, nv] of Object.entries(v)) {
          if (nk !== "server") throw new Error(`unknown key "${key}.${nk}"`);
          config.ntfyServer = checkServiceUrl(nv, `${key}.server`, isLoopback);
        }
        if (config.ntfyServer === undefined) throw new Error(`"${key}.server" is required`);
        break;
      }
      case "smtp": {
        if (!isTable(v)) throw new Error(`"${key}" must be a table`);
        const smtp: Partial<SmtpConfig> = { port: 587 };
        for (const [sk, sv] of Object.entries(v)) {
          const skey = `${key}.${sk}`;
          if (sk === "host") smtp.host = str(sv, skey, 253);
          else if (sk === "port") smtp.port = int(sv, skey, 1, 65535);
          else if (sk === "from") smtp.from = mailAddress(sv, skey);
          else if (sk === "auth_file") smtp.authFile = str(sv, skey, 4096);
          else if (sk === "ca_file") smtp.caFile = str(sv, skey, 4096);
          else throw new Error(`unknown key "${skey}"`);
        }
        if (!smtp.host || !smtp.from) throw new Error(`"${key}" needs host and from`);
        config.smtp = smtp as SmtpConfig;
        break;
      }
      case "webpush": {
        if (!isTable(v)) throw new Error(`"${key}" must be a table`);
        for (const [wk, wv] of Object.entries(v)) {
          if (wk !== "subject") throw new Error(`unknown key "${key}.${wk}"`);
          const s = str(wv, `${key}.subject`);
          if (!/^(mailto:[^\s@]+@[^\s@]+|https:\/\/\S+)$/.test(s))
            throw new Error(`"${key}.subject" must be a mailto: or https: URL (RFC 8292)`);
          config.webpushSubject = s;
        }
        if (config.webpushSubject === undefined) throw new Error(`"${key}.subject" is required`);
        break;
      }
      default:
        throw new Error(`unknown key "${key}"`);
    }
  }
  if (config.retryMaxMs < config.retryBaseMs) throw new Error('"notify.retry_max" must be >= retry_base');
  return config;
}

/** A plain mail address (local@domain, printable ASCII, no spaces or angle brackets), at most 254 characters. */
export function mailAddress(v: unknown, key: string): string {
  if (typeof v !== "string" || v.length > 254 || !/^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$/.test(v))
    throw new Error(`"${key}" must be a mail address`);
  return v;
}

/**
 * A host that names this machine or a local network by its address: loopback, an RFC 1918 or
 * link-local IPv4 literal, 0.0.0.0, or IPv6 loopback, unspecified, unique-local, link-local or
 * IPv4-mapped. Names are not resolved here (a name pointing at such an address is not caught).
 */
export function isLocalAddress(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  if (v4) {
    const [a, b] = [Number(v4[1]), Number(v4[2])];
    return (
      a === 127 ||
      a === 10 ||
      a === 0 ||
      (a === 172 && b >= 16 && b <= 31) ||
      (a === 192 && b === 168) ||
      (a === 169 && b === 254) ||
      (a === 100 && b >= 64 && b <= 127)
    );
  }
  if (!h.includes(":")) return false;
  return h === "::1" || h === "::" || /^f[cd]/.test(h) || /^fe[89ab]/.test(h) || h.startsWith("::ffff:");
}
