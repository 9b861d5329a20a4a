import type { Command } from "commander";
import type { AuditEntry, AuditFilter } from "../../audit/log.ts";
import type { Context } from "../../context.ts";
import type { InstalledPaths } from "../../elevation/paths.ts";
import { CliError, usageError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import type { GetContext } from "../../program.ts";

/**
 * `sudo apes audit`: the shim's audit log ($(LOCALSTATEDIR)/log/apes/audit.log, root-only), filtered,
 * as a table or (--json) the matching lines exactly as stored; --follow keeps reading like `tail -F`.
 */

export interface AuditOptions {
  user?: string;
  since?: string;
  denied?: boolean;
  grant?: string;
  follow?: boolean;
}

export interface AuditDeps {
  getuid(): number;
  paths(): InstalledPaths;
  /** How often --follow looks for new lines and a rotated file. */
  pollMs: number;
  /** Ends --follow (SIGINT). */
  signal?: AbortSignal;
}

export function register(program: Command, getContext: GetContext): void {
  program
    .command("audit")
    .description("show the elevation audit log (as root): who ran what, approved or denied, and why")
    .option("--user <name>", "only attempts by this Unix user")
    .option("--since <when>", "only attempts since a duration ago (15m, 2h, 7d) or an ISO time")
    .option("--denied", "only denied attempts")
    .option("--grant <id>", "only attempts with this grant id")
    .option("-f, --follow", "keep printing attempts as they are logged (survives log rotation); Ctrl-C ends")
    .addHelpText(
      "after",
      `
The log is the one the installed shim writes ($(LOCALSTATEDIR)/log/apes/audit.log, default
/var/log/apes/audit.log, root:root 0600): one JSON object per attempt, described in
docs/elevation.md section 5. The table shows every field; --json prints the matching lines exactly
as stored (JSON Lines). A malformed line is reported on stderr with its number and skipped.

Exit status: 0, also when --follow ends with Ctrl-C; 77 when not run as root.

Examples:
  $ sudo apes audit --since 1h
  $ sudo apes audit --user deploy --denied
  $ sudo apes audit --grant 4b1c2d3e-0000-4000-8000-000000000000 --json
  $ sudo apes audit --follow`,
    )
    .action(async (opts: AuditOptions) => {
      const { installedPaths } = await import("../../elevation/paths.ts");
      const stop = new AbortController();
      const onSigint = () => stop.abort(new Error("SIGINT"));
      if (opts.follow) process.once("SIGINT", onSigint);
      try {
        await audit(getContext(), opts, {
          getuid: () => process.getuid?.() ?? -1,
          paths: () => installedPaths(),
          pollMs: 250,
          signal: stop.signal,
        });
      } finally {
        process.removeListener("SIGINT", onSigint);
      }
    });
}

export async function audit(ctx: Context, opts: AuditOptions, deps: AuditDeps): Promise<void> {
  if (deps.getuid() !== 0) {
    throw new CliError("the audit log is root-only", { exitCode: ExitCode.NOPERM, hint: "sudo apes audit" });
  }
  const log = await import("../../audit/log.ts");
  const filter: AuditFilter = {};
  if (opts.user !== undefined) filter.user = opts.user;
  if (opts.grant !== undefined) filter.grant = opts.grant;
  if (opts.denied) filter.denied = true;
  if (opts.since !== undefined) {
    const sinceS = log.parseSince(opts.since, ctx.clock.now());
    if (sinceS === undefined)
      throw usageError(
        `--since "${opts.since}" is neither a duration nor an ISO time`,
        "e.g. --since 2h or --since 2026-12-01T08:00:00Z",
      );
    filter.sinceS = sinceS;
  }
  const file = deps.paths().auditLog;
  const { AuditReader } = await import("../../audit/reader.ts");
  const reader = new AuditReader(file);
  const rows: string[][] = [log.AUDIT_HEADER];
  const take = (raw: string, entry: AuditEntry) => {
    if (!log.matchesFilter(entry, filter)) return;
    if (ctx.globals.json) ctx.io.stdout.write(`${raw}\n`);
    else if (opts.follow) ctx.io.stdout.write(`${log.auditRow(entry).join("  ").trimEnd()}\n`);
    else rows.push(log.auditRow(entry));
  };
  const drain = async () => {
    for (const { number, text } of await reader.readNew()) {
      if (text === undefined) {
        ctx.io.stderr.write(`apes: ${file}:${number}: longer than ${log.MAX_AUDIT_LINE} bytes; skipped\n`);
        continue;
      }
      if (text.trim() === "") continue;
      const parsed = log.parseAuditLine(text);
      if ("error" in parsed) ctx.io.stderr.write(`apes: ${file}:${number}: ${parsed.error}; skipped\n`);
      else take(text, parsed.entry);
    }
  };
  // Follow mode prints rows as they come, so the header goes first.
  if (opts.follow && !ctx.globals.json) ctx.io.stdout.write(`${log.AUDIT_HEADER.join("  ")}\n`);
  try {
    if (!(await reader.open())) {
      if (!opts.follow) {
        ctx.io.stderr.write(`apes: no audit log at ${file} yet (nothing has been elevated)\n`);
        return;
      }
    } else await drain();
    if (!opts.follow) {
      const { formatTable } = await import("../../output.ts");
      if (!ctx.globals.json) ctx.io.stdout.write(rows.length > 1 ? `${formatTable(rows)}\n` : "");
      return;
    }
    for (;;) {
      try {
        await ctx.clock.sleep(deps.pollMs, deps.signal);
      } catch {
        return; // SIGINT: the end of --follow, not an error.
      }
      await drain();
      // Rotated (a new file at the path) or removed: finish the old file, then read the new one.
      if (await reader.replaced()) {
        await drain();
        if (await reader.open()) await drain();
      }
    }
  } finally {
    await reader.close();
  }
}
