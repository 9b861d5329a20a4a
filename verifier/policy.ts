import { parse } from "smol-toml";
import { DEFAULT_RUN_AS, UNIX_USER } from "../protocol/names.ts";
import { ELEVATION_AUDIENCE } from "../protocol/types.ts";

/**
 * The elevation policy: $(SYSCONFDIR)/apes/config.toml, root:root 0600, written by `sudo apes trust`.
 * The setuid shim opens it and hands the open fd to the verifier (`apes __verify --config-fd 3`), so
 * the unprivileged verifier never chooses the path. Every key is checked; unknown keys are an error (a
 * typo must not silently weaken or widen the policy).
 *
 *   version = 1                                   # optional; the only version is 1
 *   issuers = ["https://id.example.com"]          # REQUIRED: IdPs whose grants are accepted (the JWT's iss)
 *   approvers = ["alice@example.com"]             # REQUIRED: identities whose approval counts (decided_by)
 *   audiences = ["escapes"]                       # accepted `aud` values (default ["escapes"])
 *   host = "web1"                                 # this machine's name in grants (default: hostname)
 *   run_as = ["root"]                             # Unix users a command may run as (default ["root"])
 *   allow_self_approval = false                   # may a requester approve its own grant? (default false)
 *   ca_pem = '''-----BEGIN CERTIFICATE-----...''' # the issuers' TLS CA(s), PEM inline; when set, ONLY
 *                                                 #   these are trusted (pinned), not the system roots
 *   ca_file = "/etc/apes/idp-ca.pem"              # or: a PEM file, trusted only when root guards it like
 *                                                 #   the policy (see trustedDirectoryProblem)
 *
 * Issuers are https only. Plain http, even on loopback, is refused: while the IdP is down any local
 * user can bind its port, serve keys of their own and sign grants for any command. (A policy written by
 * an older `apes trust` says `allow_loopback_http = false`; that is accepted, `true` is an error.)
 *   [users]                                       # REQUIRED: Unix user -> identities it may act as
 *   deploy = ["agent-deploy@example.com"]
 */
export interface Policy {
  version: 1;
  /** Normalised issuer URLs (no trailing slash). */
  issuers: string[];
  approvers: string[];
  audiences: string[];
  host: string;
  runAs: string[];
  allowSelfApproval: boolean;
  caPem?: string;
  caFile?: string;
  /** Unix user name -> identities (JWT `sub`) that user may present. */
  users: Record<string, string[]>;
}

export class PolicyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PolicyError";
  }
}

const KNOWN_KEYS = [
  "version",
  "issuers",
  "approvers",
  "audiences",
  "host",
  "run_as",
  "allow_self_approval",
  "allow_loopback_http",
  "ca_pem",
  "ca_file",
  "users",
] as const;

/** Identities are emails or other opaque ids: printable, no whitespace, bounded. */
const IDENTITY = /^[^\s\u0000-\u001f\u007f]{1,320}$/;
const HOSTNAME = /^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/;

/** Parses and validates the policy text. `source` names the file in messages. Throws PolicyError. */
export function parsePolicy(text: string, source: string, defaults: { hostname: string }): Policy {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new PolicyError(`${source}: not valid TOML: ${(e as Error).message.split("\n")[0]}`);
  }
  const fail = (key: string, what: string) => new PolicyError(`${source}: "${key}" must be ${what}`);
  for (const key of Object.keys(doc)) {
    if (!(KNOWN_KEYS as readonly string[]).includes(key)) {
      throw new PolicyError(`${source}: unknown key "${key}" (known: ${KNOWN_KEYS.join(", ")})`);
    }
  }
  if (doc.version !== undefined && doc.version !== 1) throw fail("version", "1");

  if (optionalBool(doc, "allow_loopback_http", fail)) {
    throw fail(
      "allow_loopback_http",
      "false: plain http issuers are no longer trusted for elevation (any local user can serve their port); use https with a pinned CA (`apes trust --ca-file`)",
    );
  }
  const issuers = stringList(doc, "issuers", fail, { required: true }).map((raw) => {
    const normalized = normalizeIssuer(raw);
    if (typeof normalized !== "string")
      throw fail("issuers", `a list of https URLs (${raw}: ${normalized.error})`);
    return normalized;
  });
  const approvers = stringList(doc, "approvers", fail, { required: true });
  for (const a of approvers)
    if (!IDENTITY.test(a)) throw fail("approvers", `a list of identities (bad: ${JSON.stringify(a)})`);
  const audiences = stringList(doc, "audiences", fail, { required: false }) ?? [];
  const runAs = stringList(doc, "run_as", fail, { required: false }) ?? [];
  for (const u of runAs)
    if (!UNIX_USER.test(u)) throw fail("run_as", `a list of Unix user names (bad: ${JSON.stringify(u)})`);

  let host = defaults.hostname;
  if (doc.host !== undefined) {
    if (typeof doc.host !== "string" || !HOSTNAME.test(doc.host)) throw fail("host", "a host name");
    host = doc.host;
  }
  const allowSelfApproval = optionalBool(doc, "allow_self_approval", fail) ?? false;

  let caPem: string | undefined;
  if (doc.ca_pem !== undefined) {
    if (typeof doc.ca_pem !== "string" || !doc.ca_pem.includes("-----BEGIN CERTIFICATE-----")) {
      throw fail("ca_pem", "PEM text with at least one CERTIFICATE block");
    }
    caPem = doc.ca_pem;
  }
  let caFile: string | undefined;
  if (doc.ca_file !== undefined) {
    if (typeof doc.ca_file !== "string" || !doc.ca_file.startsWith("/"))
      throw fail("ca_file", "an absolute path");
    caFile = doc.ca_file;
  }

  const rawUsers = doc.users;
  if (rawUsers === undefined) throw new PolicyError(`${source}: missing [users] (Unix user -> identities)`);
  if (!rawUsers || typeof rawUsers !== "object" || Array.isArray(rawUsers) || rawUsers instanceof Date) {
    throw fail("users", "a table of Unix user = [identities]");
  }
  const users: Record<string, string[]> = Object.create(null);
  for (const [user, ids] of Object.entries(rawUsers as Record<string, unknown>)) {
    if (!UNIX_USER.test(user)) throw fail(`users.${user}`, "keyed by a Unix user name");
    if (
      !Array.isArray(ids) ||
      ids.length === 0 ||
      !ids.every((i) => typeof i === "string" && IDENTITY.test(i))
    ) {
      throw fail(`users.${user}`, "a non-empty list of identities");
    }
    users[user] = [...ids] as string[];
  }
  if (Object.keys(users).length === 0) throw fail("users", "a table with at least one Unix user");

  return {
    version: 1,
    issuers,
    approvers,
    audiences: audiences.length > 0 ? audiences : [ELEVATION_AUDIENCE],
    host,
    runAs: runAs.length > 0 ? runAs : [DEFAULT_RUN_AS],
    allowSelfApproval,
    ...(caPem ? { caPem } : {}),
    ...(caFile ? { caFile } : {}),
    users,
  };
}

function stringList(
  doc: Record<string, unknown>,
  key: string,
  fail: (key: string, what: string) => PolicyError,
  opts: { required: true },
): string[];
function stringList(
  doc: Record<string, unknown>,
  key: string,
  fail: (key: string, what: string) => PolicyError,
  opts: { required: false },
): string[] | undefined;
function stringList(
  doc: Record<string, unknown>,
  key: string,
  fail: (key: string, what: string) => PolicyError,
  opts: { required: boolean },
): string[] | undefined {
  const v = doc[key];
  if (v === undefined) {
    if (opts.required) throw fail(key, "present (a non-empty list)");
    return undefined;
  }
  if (!Array.isArray(v) || !v.every((s) => typeof s === "string" && s.length > 0)) {
    throw fail(key, "a list of non-empty strings");
  }
  if (opts.required && v.length === 0) throw fail(key, "a non-empty list");
  return [...new Set(v as string[])];
}

function optionalBool(
  doc: Record<string, unknown>,
  key: string,
  fail: (key: string, what: string) => PolicyError,
): boolean | undefined {
  const v = doc[key];
  if (v === undefined) return undefined;
  if (typeof v !== "boolean") throw fail(key, "true or false");
  return v;
}

/** An issuer URL as compared with the JWT's `iss`: origin + path without trailing slash. */
export function normalizeIssuer(raw: string): string | { error: string } {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return { error: "not a URL" };
  }
  if (u.username || u.password) return { error: "credentials in the URL" };
  if (u.search || u.hash) return { error: "a query or fragment" };
  if (u.protocol === "http:") {
    return { error: "plain http (any local user could serve it while the IdP is down; use https)" };
  }
  if (u.protocol !== "https:") return { error: `scheme ${u.protocol} (must be https)` };
  return `${u.origin}${u.pathname.replace(/\/+$/, "")}`;
}

/**
 * Ownership and mode rule for the policy file (checked by the shim on its fd, and again here) and for a
 * ca_file (checked by the verifier on its fd).
 */
export function policyFileProblem(
  st: { uid: number; mode: number; isFile: boolean },
  ownerUid = 0,
): string | undefined {
  if (!st.isFile) return "is not a regular file";
  if (st.uid !== ownerUid)
    return `is owned by uid ${st.uid}, not ${ownerUid === 0 ? "root" : `uid ${ownerUid}`}`;
  if ((st.mode & 0o022) !== 0) return `is group- or world-writable (mode ${(st.mode & 0o7777).toString(8)})`;
  return undefined;
}

/**
 * The rule for every directory above a ca_file: owned by root and writable by nobody else, so no
 * other user can swap the file or a directory on its path. A root-owned sticky directory (/tmp) is
 * safe too: others may add entries there but cannot rename or remove root's.
 */
export function trustedDirectoryProblem(
  st: { uid: number; mode: number; isDirectory: boolean },
  ownerUid = 0,
): string | undefined {
  if (!st.isDirectory) return "is not a directory";
  if (st.uid !== ownerUid)
    return `is owned by uid ${st.uid}, not ${ownerUid === 0 ? "root" : `uid ${ownerUid}`}`;
  if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0)
    return `is group- or world-writable (mode ${(st.mode & 0o7777).toString(8)})`;
  return undefined;
}

/** The policy as TOML, with comments; `parsePolicy(serializePolicy(p))` gives back p. */
export function serializePolicy(p: Policy, header = ""): string {
  const q = (s: string) => JSON.stringify(s);
  const list = (xs: readonly string[]) => `[${xs.map(q).join(", ")}]`;
  const lines: string[] = [];
  if (header) lines.push(...header.split("\n").map((l) => `# ${l}`.trimEnd()), "");
  lines.push(
    "version = 1",
    "# IdPs whose grants are accepted (the AuthZ-JWT's iss)",
    `issuers = ${list(p.issuers)}`,
    "# identities whose approval counts (the AuthZ-JWT's decided_by)",
    `approvers = ${list(p.approvers)}`,
    `audiences = ${list(p.audiences)}`,
    `host = ${q(p.host)}`,
    `run_as = ${list(p.runAs)}`,
    `allow_self_approval = ${p.allowSelfApproval}`,
  );
  if (p.caFile) lines.push(`ca_file = ${q(p.caFile)}`);
  if (p.caPem) {
    if (p.caPem.includes("'''")) throw new PolicyError("ca_pem must not contain '''");
    lines.push(`ca_pem = '''\n${p.caPem.trim()}\n'''`);
  }
  lines.push("", "# Unix user -> identities it may act as (the AuthZ-JWT's sub)", "[users]");
  for (const [user, ids] of Object.entries(p.users)) lines.push(`${q(user)} = ${list(ids)}`);
  return `${lines.join("\n")}\n`;
}
