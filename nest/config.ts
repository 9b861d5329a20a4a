import { parse } from "smol-toml";
import { parseDurationMs } from "../protocol/duration.ts";
import { canonicalIdentity, isGrantId } from "../protocol/names.ts";
import { DEFAULT_SUPERVISOR_POLICY, type SupervisorPolicy } from "./supervisor.ts";

/**
 * The Nest's settings ($(SYSCONFDIR)/apes/nest.toml, written by `apes daemon init`, read at start
 * and on SIGHUP). Pure: text in, settings or an error out; unknown keys are refused (a typo must not
 * silently mean the default). Example:
 *
 *   idp = "https://id.example.com"
 *   email = "nest-web1+agent@example.com"      # the Nest's own identity
 *   troop = "https://troop.example.com"
 *   troop_audience = "troop.example.com"       # aud of the Nest's troop token
 *   delegation = "<uuid>"                      # the owner's delegation (audience apes-cli), for enrolling agents
 *   shim = "/usr/local/bin/apes"               # the setuid shim privileged steps go through
 *   exec = "/usr/local/libexec/apes/apes"      # the executable the elevated commands run
 *   ca_file = "/etc/apes/ca.pem"               # optional extra CA for the IdP and troop
 *   log_level = "info"
 *   poll_interval = "5s"
 *   [supervisor]
 *   max_failures = 5
 *   failure_window = "5m"
 *   restart_backoff_max = "60s"
 */

export interface NestConfig {
  idp?: string;
  email?: string;
  troop?: string;
  troopAudience?: string;
  delegation?: string;
  shim: string;
  exec: string;
  caFile?: string;
  logLevel: "debug" | "info" | "warn" | "error";
  pollMs: number;
  supervisor: SupervisorPolicy;
}

export class NestConfigError extends Error {}

const TOP = [
  "idp",
  "email",
  "troop",
  "troop_audience",
  "delegation",
  "shim",
  "exec",
  "ca_file",
  "log_level",
  "poll_interval",
  "supervisor",
];
const SUP = ["max_failures", "failure_window", "restart_backoff_max"];

export function parseNestConfig(text: string, defaults: { shim: string; exec: string }): NestConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new NestConfigError(`not valid TOML: ${(e as Error).message.split("\n")[0]}`);
  }
  const bad = (key: string, what: string) => new NestConfigError(`${key}: ${what}`);
  for (const k of Object.keys(doc)) if (!TOP.includes(k)) throw bad(k, "unknown key");
  const str = (k: string): string | undefined => {
    const v = doc[k];
    if (v === undefined) return undefined;
    if (typeof v !== "string" || v.length === 0 || v.length > 2048 || /[\0-\x1f\x7f]/.test(v))
      throw bad(k, "must be a non-empty string without control characters");
    return v;
  };
  const url = (k: string): string | undefined => {
    const v = str(k);
    if (v === undefined) return undefined;
    let u: URL;
    try {
      u = new URL(v);
    } catch {
      throw bad(k, "must be a URL");
    }
    const loopback = ["127.0.0.1", "[::1]", "localhost"].includes(u.hostname);
    if (u.protocol !== "https:" && !(u.protocol === "http:" && loopback))
      throw bad(k, "must be https (plain http only on loopback)");
    return v.replace(/\/+$/, "");
  };
  const abs = (k: string): string | undefined => {
    const v = str(k);
    if (v !== undefined && !v.startsWith("/")) throw bad(k, "must be an absolute path");
    return v;
  };
  const config: NestConfig = {
    shim: abs("shim") ?? defaults.shim,
    exec: abs("exec") ?? defaults.exec,
    logLevel: "info",
    pollMs: 5000,
    supervisor: {
      ...DEFAULT_SUPERVISOR_POLICY,
      restartBackoff: { ...DEFAULT_SUPERVISOR_POLICY.restartBackoff },
    },
  };
  const idp = url("idp");
  if (idp) config.idp = idp;
  const troop = url("troop");
  if (troop) config.troop = troop;
  const email = str("email");
  if (email !== undefined) {
    const c = canonicalIdentity(email);
    if (!c) throw bad("email", "must be an identity (name@domain)");
    config.email = c;
  }
  const aud = str("troop_audience");
  if (aud) config.troopAudience = aud;
  const delegation = str("delegation");
  if (delegation !== undefined) {
    if (!isGrantId(delegation)) throw bad("delegation", "must be a delegation id");
    config.delegation = delegation;
  }
  const ca = abs("ca_file");
  if (ca) config.caFile = ca;
  const level = str("log_level");
  if (level !== undefined) {
    if (!["debug", "info", "warn", "error"].includes(level))
      throw bad("log_level", "debug, info, warn or error");
    config.logLevel = level as NestConfig["logLevel"];
  }
  const ms = (k: string, v: unknown, min: number, max: number): number => {
    const n = typeof v === "string" ? parseDurationMs(v) : undefined;
    if (n === undefined || n < min || n > max)
      throw bad(k, `a duration between ${min / 1000}s and ${max / 1000}s, e.g. "5s"`);
    return n;
  };
  if (doc.poll_interval !== undefined)
    config.pollMs = ms("poll_interval", doc.poll_interval, 1000, 3_600_000);
  const sup = doc.supervisor;
  if (sup !== undefined) {
    if (typeof sup !== "object" || sup === null || Array.isArray(sup))
      throw bad("supervisor", "must be a table");
    const s = sup as Record<string, unknown>;
    for (const k of Object.keys(s)) if (!SUP.includes(k)) throw bad(`supervisor.${k}`, "unknown key");
    if (s.max_failures !== undefined) {
      const n = s.max_failures;
      if (typeof n !== "number" || !Number.isInteger(n) || n < 1 || n > 1000)
        throw bad("supervisor.max_failures", "an integer between 1 and 1000");
      config.supervisor.maxFailures = n;
    }
    if (s.failure_window !== undefined)
      config.supervisor.windowMs = ms("supervisor.failure_window", s.failure_window, 1000, 86_400_000);
    if (s.restart_backoff_max !== undefined)
      config.supervisor.restartBackoff.maxMs = ms(
        "supervisor.restart_backoff_max",
        s.restart_backoff_max,
        100,
        3_600_000,
      );
  }
  return config;
}

/** The settings as TOML (what `apes daemon init` writes). */
export function serializeNestConfig(c: Partial<NestConfig>): string {
  const q = (s: string) => JSON.stringify(s);
  const lines = [
    "# The Nest's settings (apes daemon run). Written by `apes daemon init`; SIGHUP reloads it.",
  ];
  if (c.idp) lines.push(`idp = ${q(c.idp)}`);
  if (c.email) lines.push(`email = ${q(c.email)}`);
  if (c.troop) lines.push(`troop = ${q(c.troop)}`);
  if (c.troopAudience) lines.push(`troop_audience = ${q(c.troopAudience)}`);
  if (c.delegation) lines.push(`delegation = ${q(c.delegation)}`);
  if (c.shim) lines.push(`shim = ${q(c.shim)}`);
  if (c.exec) lines.push(`exec = ${q(c.exec)}`);
  if (c.caFile) lines.push(`ca_file = ${q(c.caFile)}`);
  return `${lines.join("\n")}\n`;
}
