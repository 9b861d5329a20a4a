/**
 * DDISA discovery records (docs/protocol.md, section 1): `_ddisa.<domain>` TXT
 *   v=ddisa1 idp=https://id.example.com; mode=open; priority=10; policy_endpoint=https://...
 * Pure functions only: parsing, validation and selection. Resolution lives in resolver.ts.
 */

export const DDISA_VERSION = "ddisa1";
export const DDISA_DEFAULT_PRIORITY = 10;
export const DDISA_MODES = ["open", "allowlist-admin", "allowlist-user", "deny"] as const;
export type DdisaMode = (typeof DDISA_MODES)[number];

export interface DdisaRecord {
  version: typeof DDISA_VERSION;
  idp: string;
  mode?: DdisaMode;
  priority: number;
  policy_endpoint?: string;
}

export interface ParseOptions {
  /** Accept `http://` idp URLs whose host is a loopback address (tests, single-machine setups). */
  allowLoopbackHttp?: boolean;
}

/**
 * The verdict on one TXT string: a valid DDISA record, an invalid one (it claims `v=ddisa1` but breaks
 * a rule: never used), or one that is not for us (another TXT record, or another DDISA version).
 */
export type ParsedRecord =
  | { ok: true; raw: string; record: DdisaRecord; ignoredKeys: string[] }
  | { ok: false; raw: string; error: string; ignored: boolean };

const KNOWN_KEYS = new Set(["idp", "mode", "priority", "policy_endpoint"]);

/** Parse one TXT record (its character-strings already joined). Never throws. */
export function parseDdisaRecord(raw: string, options: ParseOptions = {}): ParsedRecord {
  const fail = (error: string): ParsedRecord => ({ ok: false, raw, error, ignored: false });
  const ignore = (error: string): ParsedRecord => ({ ok: false, raw, error, ignored: true });
  const text = raw.trim();
  const firstSpace = text.search(/\s/);
  let versionToken = firstSpace === -1 ? text : text.slice(0, firstSpace);
  let rest = firstSpace === -1 ? "" : text.slice(firstSpace + 1);
  // Tolerate `v=ddisa1;idp=...` where the separator is a semicolon rather than a space.
  const semi = versionToken.indexOf(";");
  if (semi !== -1) {
    rest = `${versionToken.slice(semi + 1)} ${rest}`;
    versionToken = versionToken.slice(0, semi);
  }
  // Other TXT records may share the name (v=spf1..., verification tokens): they are not errors.
  if (!versionToken.startsWith("v=ddisa")) return ignore("not a DDISA record (first token is not v=ddisa1)");
  if (versionToken !== `v=${DDISA_VERSION}`) {
    return ignore(
      `unsupported DDISA version "${versionToken.slice(2)}" (this client speaks ${DDISA_VERSION})`,
    );
  }

  const fields = new Map<string, string>();
  const ignoredKeys: string[] = [];
  for (const segment of rest.split(";")) {
    const part = segment.trim();
    if (part === "") continue;
    const eq = part.indexOf("=");
    if (eq <= 0) return fail(`malformed field "${part}" (expected key=value)`);
    const key = part.slice(0, eq).trim().toLowerCase();
    const value = part.slice(eq + 1).trim();
    if (!/^[a-z0-9_-]+$/.test(key)) return fail(`malformed field name "${key}"`);
    if (fields.has(key) || ignoredKeys.includes(key)) return fail(`duplicate field "${key}"`);
    if (value === "") return fail(`empty value for "${key}"`);
    if (KNOWN_KEYS.has(key)) fields.set(key, value);
    else ignoredKeys.push(key);
  }

  const idp = fields.get("idp");
  if (idp === undefined) return fail("no idp field");
  const idpError = checkIdpUrl(idp, options);
  if (idpError) return fail(idpError);

  const record: DdisaRecord = {
    version: DDISA_VERSION,
    idp: normalizeIdp(idp),
    priority: DDISA_DEFAULT_PRIORITY,
  };

  const mode = fields.get("mode");
  if (mode !== undefined) {
    if (!(DDISA_MODES as readonly string[]).includes(mode)) {
      return fail(`invalid mode "${mode}" (one of ${DDISA_MODES.join(", ")})`);
    }
    record.mode = mode as DdisaMode;
  }

  const priority = fields.get("priority");
  if (priority !== undefined) {
    if (!/^\d{1,9}$/.test(priority)) return fail(`invalid priority "${priority}" (a non-negative integer)`);
    record.priority = Number(priority);
  }

  const policy = fields.get("policy_endpoint");
  if (policy !== undefined) {
    const policyError = checkIdpUrl(policy, options, false);
    if (policyError) return fail(`policy_endpoint: ${policyError}`);
    record.policy_endpoint = policy;
  }

  return { ok: true, raw, record, ignoredKeys };
}

export interface Selection {
  /** The record that wins, or undefined when no valid record exists. */
  selected?: DdisaRecord;
  /** Every TXT record seen, parsed, in the order received. */
  parsed: ParsedRecord[];
  /** Why the winner won, or why there is none; for `apes dns check` and `--debug`. */
  explanation: string[];
}

/**
 * Choose among the TXT records at `_ddisa.<domain>`: keep valid DDISA records, drop exact
 * duplicates, lowest priority wins. A tie between different IdPs is broken by the IdP URL so the
 * choice is deterministic whatever order DNS returns, and the tie is reported.
 */
export function selectDdisaRecord(txtRecords: readonly string[], options: ParseOptions = {}): Selection {
  const parsed = txtRecords.map((raw) => parseDdisaRecord(raw, options));
  const explanation: string[] = [];
  const valid: DdisaRecord[] = [];
  const seen = new Set<string>();
  for (const p of parsed) {
    if (!p.ok) {
      if (p.ignored) explanation.push(`ignored "${p.raw}": ${p.error}`);
      else explanation.push(`invalid record "${p.raw}": ${p.error}`);
      continue;
    }
    const key = JSON.stringify(p.record);
    if (seen.has(key)) {
      explanation.push(`duplicate record ignored: ${p.raw}`);
      continue;
    }
    seen.add(key);
    if (p.ignoredKeys.length) explanation.push(`unknown fields ignored: ${p.ignoredKeys.join(", ")}`);
    valid.push(p.record);
  }
  if (valid.length === 0) {
    explanation.push(txtRecords.length === 0 ? "no TXT records found" : "no valid DDISA record found");
    return { parsed, explanation };
  }
  // Full order (priority, then the whole record) so the winner never depends on the DNS answer order.
  const cmp = (x: string, y: string) => (x < y ? -1 : x > y ? 1 : 0);
  valid.sort(
    (a, b) => a.priority - b.priority || cmp(a.idp, b.idp) || cmp(JSON.stringify(a), JSON.stringify(b)),
  );
  const selected = valid[0]!;
  const tied = valid.filter((r) => r !== selected && r.priority === selected.priority);
  if (tied.length) {
    explanation.push(
      `priority tie at ${selected.priority} with ${tied.map((r) => r.idp).join(", ")}: chose ${selected.idp} (lowest IdP URL, then lowest record text)`,
    );
  }
  explanation.push(
    valid.length === 1
      ? `selected the only valid record (priority ${selected.priority})`
      : `selected priority ${selected.priority}, the lowest of ${valid.length} valid records`,
  );
  return { selected, parsed, explanation };
}

/** The domain part of an email address, lower-cased; throws on anything that is not an address. */
export function emailDomain(email: string): string {
  const at = email.lastIndexOf("@");
  if (at <= 0 || at === email.length - 1) throw new Error(`"${email}" is not an email address`);
  const domain = email
    .slice(at + 1)
    .toLowerCase()
    .replace(/\.$/, "");
  if (
    !/^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/.test(
      domain,
    )
  ) {
    throw new Error(`"${domain}" is not a valid domain name`);
  }
  return domain;
}

export function ddisaName(domain: string): string {
  return `_ddisa.${domain}`;
}

export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127(\.\d{1,3}){3}$/.test(h);
}

function checkIdpUrl(value: string, options: ParseOptions, issuer = true): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `"${value}" is not a URL`;
  }
  if (url.username || url.password) return `"${value}" must not contain credentials`;
  // An IdP base URL is an OIDC issuer: no query or fragment (OpenID Connect Discovery 1.0, section 2).
  if (issuer && (url.search || url.hash || value.includes("#")))
    return `"${value}" must not have a query or fragment`;
  if (url.protocol === "https:") return undefined;
  if (url.protocol === "http:") {
    if (!isLoopbackHost(url.hostname)) return `"${value}" must use https`;
    if (!options.allowLoopbackHttp)
      return `"${value}" uses plain http (allowed for loopback only when enabled)`;
    return undefined;
  }
  return `"${value}" must use https`;
}

/** IdP base URLs are compared and stored without a trailing slash. */
export function normalizeIdp(idp: string): string {
  return idp.replace(/\/+$/, "");
}
