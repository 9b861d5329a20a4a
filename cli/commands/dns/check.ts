import type { Command } from "commander";
import { visible } from "../../../protocol/display.ts";
import type { Context } from "../../context.ts";
import { CliError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

/** `apes dns check <email>`: what DDISA discovery sees for a domain, record by record. */
export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("check")
    .description("show the DDISA records of an email's domain and which IdP discovery would choose")
    .argument("<email>", "an email address (or a bare domain)")
    .addHelpText(
      "after",
      `
Queries _ddisa.<domain> TXT with the configured DNS servers (dns.servers, APES_DNS_SERVERS; default:
the system's), falling back to DNS-over-HTTPS (dns.doh_url, APES_DOH_URL) when they fail. Always asks
DNS, even when \`idp\` is configured.

Exit status: 0 when a valid record exists (a mode=deny record is shown, not an error), 1 when none
does, 69 when DNS (and DoH) cannot be reached.

Examples:
  $ apes dns check alice@example.com
  $ apes dns check example.com --json
  $ APES_DNS_SERVERS=127.0.0.1:5353 apes dns check alice@test.example`,
    )
    .action(async (email: string) => {
      await dnsCheck(getContext(), email);
    });
}

export interface DnsCheckRecord {
  txt: string;
  verdict: "valid" | "invalid" | "ignored" | "duplicate";
  reason?: string;
  selected: boolean;
  idp?: string;
  mode?: string;
  /** True when the record has no mode field (shown as open). */
  modeDefault?: boolean;
  priority?: number;
}

export interface DnsCheckResult {
  domain: string;
  name: string;
  via: "dns" | "doh" | "cache";
  server: string;
  rcode: string;
  ttl: number;
  records: DnsCheckRecord[];
  selected?: { idp: string; mode: string; priority: number; policy_endpoint?: string };
  explanation: string[];
  failures: { server: string; error: string }[];
  /** Set when config.toml or APES_IDP names an IdP: login uses it and skips DNS. */
  configuredIdp?: string;
}

export async function dnsCheck(ctx: Context, email: string): Promise<DnsCheckResult> {
  // Loaded here, not at the top: `apes --version` must not pay for DNS code.
  const { resolveForEmail } = await import("../../../client/ddisa.ts");
  const r = await resolveForEmail(ctx, email);
  const config = await ctx.config();
  const winner = r.selection.selected;
  const seen = new Set<string>();
  const records: DnsCheckRecord[] = r.selection.parsed.map((p) => {
    if (!p.ok) {
      return { txt: p.raw, verdict: p.ignored ? "ignored" : "invalid", reason: p.error, selected: false };
    }
    const key = JSON.stringify(p.record);
    const duplicate = seen.has(key);
    seen.add(key);
    const rec: DnsCheckRecord = {
      txt: p.raw,
      verdict: duplicate ? "duplicate" : "valid",
      selected: !duplicate && winner !== undefined && JSON.stringify(winner) === key,
      idp: p.record.idp,
      // No mode field: nothing restricts logins, i.e. open.
      mode: p.record.mode ?? "open",
      modeDefault: p.record.mode === undefined,
      priority: p.record.priority,
    };
    if (duplicate) rec.reason = "same record as an earlier one";
    else if (p.ignoredKeys.length) rec.reason = `unknown fields ignored: ${p.ignoredKeys.join(", ")}`;
    return rec;
  });
  const result: DnsCheckResult = {
    domain: r.domain,
    name: r.name,
    via: r.via,
    server: r.server,
    rcode: r.rcode,
    ttl: r.ttl,
    records,
    explanation: r.selection.explanation,
    failures: r.failures,
  };
  if (winner) {
    result.selected = { idp: winner.idp, mode: winner.mode ?? "open", priority: winner.priority };
    if (winner.policy_endpoint) result.selected.policy_endpoint = winner.policy_endpoint;
  }
  if (config.idp) result.configuredIdp = config.idp;

  printData(ctx, result, () => renderHuman(result));
  if (!winner) {
    throw new CliError(`no valid DDISA record at ${visible(r.name)}`, {
      exitCode: ExitCode.ERROR,
      hint: `publish e.g. ${visible(r.name)} TXT "v=ddisa1 idp=https://id.${visible(r.domain)}; mode=open; priority=10"`,
    });
  }
  return result;
}

function renderHuman(r: DnsCheckResult): string {
  // Everything below came from DNS (or a DoH server): shown through visible(), never raw.
  const v = (text: string | number | undefined) => visible(String(text ?? "?"), { max: 512 });
  const lines = [`name:     ${v(r.name)} TXT`];
  const source =
    r.via === "cache" ? "cache" : r.via === "doh" ? `DNS-over-HTTPS ${v(r.server)}` : `DNS ${v(r.server)}`;
  lines.push(`source:   ${source} (${v(r.rcode)}, ttl ${v(r.ttl)} s)`);
  for (const f of r.failures) lines.push(`failed:   ${v(f.server)}: ${v(f.error)}`);
  lines.push(`records:  ${r.records.length}`);
  for (const rec of r.records) {
    const mark = rec.selected ? "* " : "  ";
    lines.push(`${mark}${rec.verdict.padEnd(9)} "${v(rec.txt)}"`);
    if (rec.verdict === "valid" || rec.verdict === "duplicate") {
      const mode = rec.modeDefault ? `${v(rec.mode)} (default)` : v(rec.mode);
      lines.push(`             idp ${v(rec.idp)}, mode ${mode}, priority ${v(rec.priority)}`);
    }
    if (rec.reason) lines.push(`             ${v(rec.reason)}`);
  }
  if (r.selected) {
    lines.push(`idp:      ${v(r.selected.idp)}`);
    lines.push(`mode:     ${v(r.selected.mode)}${r.selected.mode === "deny" ? " (logins refused)" : ""}`);
    lines.push(`priority: ${v(r.selected.priority)}`);
    if (r.selected.policy_endpoint) lines.push(`policy:   ${v(r.selected.policy_endpoint)}`);
  } else {
    lines.push("idp:      none (no valid record)");
  }
  lines.push("why:");
  for (const e of r.explanation) lines.push(`  ${v(e)}`);
  if (r.configuredIdp)
    lines.push(`note:     idp ${v(r.configuredIdp)} is configured; login uses it, not DNS`);
  return lines.join("\n");
}
