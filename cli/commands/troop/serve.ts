import { join } from "node:path";
import type { Command } from "commander";
import {
  DEFAULT_CONNECTION_RATE,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
} from "../../../server/limit-defaults.ts";
import { CliError, usageError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import { parseListen } from "../../listen.ts";
import type { GetContext } from "../../program.ts";

interface ServeOpts {
  idp: string;
  clientId: string;
  listen: string;
  data?: string;
  idpCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  pingInterval: string;
  clockSkew: string;
  authRateLimit: string;
  maxConnections: string;
  maxConnectionsPerClient: string;
  connectionRate: string;
  logLevel: string;
  webLogin?: boolean;
  publicUrl?: string;
}

function positiveInt(value: string, option: string): number {
  if (!/^[1-9]\d{0,8}$/.test(value))
    throw usageError(`invalid ${option} "${value}"`, "give a whole number >= 1");
  return Number(value);
}

function startError(e: unknown, listenAt: string): CliError {
  const err = e as NodeJS.ErrnoException;
  const message = err?.message ?? String(e);
  if (err?.code === "EADDRINUSE")
    return new CliError(`${listenAt} is already in use`, {
      exitCode: ExitCode.UNAVAILABLE,
      hint: "choose another --listen port (0 picks a free one)",
    });
  if (err?.name === "DataDirLockedError")
    return new CliError(message, { exitCode: ExitCode.CONFIG, hint: "one troop per --data dir" });
  if (/revocation feed|discovery|jwks/i.test(message))
    return new CliError(`cannot start the troop: ${message}`, {
      exitCode: ExitCode.UNAVAILABLE,
      hint: "the troop needs its IdP (--idp) reachable at start: it reads the IdP's revocation feed first",
    });
  if (/^(origin|clientId|base and home|cookieName): /.test(message))
    return new CliError(`cannot start the troop's web login: ${message}`, {
      exitCode: ExitCode.CONFIG,
      hint: "give --public-url https://... (plain http only on a loopback host)",
    });
  if (err?.code === "ENOENT" || err?.code === "EACCES" || err?.code === "EPERM")
    return new CliError(`cannot start the troop: ${message}`, {
      exitCode: ExitCode.CONFIG,
      hint: "check --data, --idp-ca, --tls-cert and --tls-key",
    });
  return new CliError(`cannot start the troop: ${message}`, { exitCode: ExitCode.ERROR, cause: e });
}

/** `apes troop serve`: runs the control plane until SIGTERM/SIGINT. */
export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("serve")
    .description("run the control plane: nest WebSockets, intents, REST (JSON log lines on stderr)")
    .requiredOption("--idp <issuer>", "the IdP whose tokens are accepted (its issuer URL)")
    .requiredOption("--client-id <id>", "the troop's client id: the audience its tokens must name")
    .option("--listen <host:port>", "address to listen on (port 0: any free port)", "127.0.0.1:8090")
    .option("--data <dir>", "troop data directory (default: $XDG_DATA_HOME/apes/troop)")
    .option("--idp-ca <file>", "PEM CA to trust for an https IdP with a private CA")
    .option("--tls-cert <file>", "PEM certificate chain (serve HTTPS/WSS)")
    .option("--tls-key <file>", "PEM private key for --tls-cert")
    .option(
      "--ping-interval <duration>",
      "ping every nest socket this often; no pong by the next ping closes it",
      "20s",
    )
    .option(
      "--auth-rate-limit <n/period>",
      "tokens not seen before, per client address (each costs a signature check); off to disable",
      "600/1m",
    )
    .option(
      "--clock-skew <duration>",
      "tolerated difference between the IdP's clock and ours (exp, iat)",
      "60s",
    )
    .option(
      "--max-connections <n>",
      "open connections in total (nest sockets included)",
      String(DEFAULT_MAX_CONNECTIONS),
    )
    .option(
      "--max-connections-per-client <n>",
      "open connections per client address (IPv6: per /64)",
      String(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
    )
    .option("--connection-rate <n/period>", "new connections per client address", DEFAULT_CONNECTION_RATE)
    .option("--log-level <level>", "debug, info, warn or error", "info")
    .option(
      "--web-login",
      "the status page signs people in with DDISA in the browser (register <url>/auth/callback at the IdP)",
    )
    .option("--public-url <url>", "the troop's public origin for --web-login (default: the listening URL)")
    .addHelpText(
      "after",
      `
Nests connect to ws(s)://HOST:PORT/v1/nest/socket with Authorization: Bearer <token>, a token
the IdP issued for --client-id (token exchange). The contract is docs/control-plane.md.
The first line logged is {"level":"info","msg":"listening","url":...}.

With --web-login, /status in a browser goes through DDISA sign-in (docs/sp-login.md): register
the redirect URI first (apes idp clients add <client-id> --redirect-uri <url>/auth/callback); DNS
comes from [dns] in config.toml or APES_DNS_SERVERS / APES_DOH_URL / APES_ALLOW_LOOPBACK_HTTP.

Examples:
  $ apes troop serve --idp https://id.example.com --client-id troop.example.com
  $ apes troop serve --idp https://id.example.com --client-id troop.example.com --web-login --public-url https://troop.example.com
  $ apes troop serve --idp http://127.0.0.1:8080 --client-id troop.test --listen 127.0.0.1:0 --data /tmp/troop`,
    )
    .action(async (opts: ServeOpts) => {
      const ctx = getContext();
      const { host, port } = parseListen(opts.listen);
      let idpUrl: URL;
      try {
        idpUrl = new URL(opts.idp);
      } catch {
        throw usageError(
          `invalid --idp "${opts.idp}"`,
          "give the IdP's issuer URL, e.g. https://id.example.com",
        );
      }
      if (idpUrl.protocol !== "https:" && idpUrl.protocol !== "http:")
        throw usageError("--idp must be http(s)");
      if (
        !/^[\x21-\x7e]{1,256}$/.test(opts.clientId) ||
        opts.clientId === "apes-cli" ||
        opts.clientId === "*"
      )
        throw usageError(
          `invalid --client-id "${opts.clientId}"`,
          "give the troop's own audience, e.g. troop.example.com",
        );
      if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey))
        throw usageError("--tls-cert and --tls-key go together");
      const [
        { startTroop },
        { jsonLogger, isLogLevel },
        { parseDurationMs },
        { parseRateLimit },
        { stopSignals },
        { readFileSync },
      ] = await Promise.all([
        import("../../../control/server.ts"),
        import("../../../server/log.ts"),
        import("../../../protocol/duration.ts"),
        import("../../../server/rate-limit.ts"),
        import("../../../server/lifecycle.ts"),
        import("node:fs"),
      ]);
      if (!isLogLevel(opts.logLevel)) throw usageError(`invalid --log-level "${opts.logLevel}"`);
      const pingMs = parseDurationMs(opts.pingInterval);
      if (pingMs === undefined || pingMs < 1000 || pingMs % 1000 !== 0 || pingMs > 3_600_000)
        throw usageError(
          `invalid --ping-interval "${opts.pingInterval}"`,
          "whole seconds from 1s to 1h, e.g. 20s",
        );
      const skewMs = parseDurationMs(opts.clockSkew);
      if (skewMs === undefined || skewMs % 1000 !== 0 || skewMs > 600_000)
        throw usageError(`invalid --clock-skew "${opts.clockSkew}"`, "whole seconds up to 10m, e.g. 60s");
      try {
        parseRateLimit(opts.connectionRate);
        parseRateLimit(opts.authRateLimit);
      } catch (e) {
        throw usageError((e as Error).message);
      }
      let idpCa: string | undefined;
      if (opts.idpCa) {
        try {
          idpCa = readFileSync(opts.idpCa, "utf8");
        } catch (e) {
          throw new CliError(`cannot read --idp-ca: ${(e as Error).message}`, { exitCode: ExitCode.CONFIG });
        }
      }
      if (opts.publicUrl !== undefined && !opts.webLogin)
        throw usageError("--public-url goes with --web-login");
      const dns = opts.webLogin ? (await ctx.config()).dns : undefined;
      const log = jsonLogger(opts.logLevel, (line) => ctx.io.stderr.write(line));
      const signals = stopSignals();
      let troop: Awaited<ReturnType<typeof startTroop>>;
      try {
        troop = await startTroop({
          host,
          port,
          dataDir: opts.data ?? join(ctx.paths.dataDir, "troop"),
          idp: opts.idp.replace(/\/+$/, ""),
          clientId: opts.clientId,
          ...(idpCa ? { idpCa } : {}),
          ...(opts.tlsCert && opts.tlsKey ? { tls: { cert: opts.tlsCert, key: opts.tlsKey } } : {}),
          pingIntervalS: pingMs / 1000,
          clockSkewS: skewMs / 1000,
          authRateLimit: opts.authRateLimit,
          maxConnections: positiveInt(opts.maxConnections, "--max-connections"),
          maxConnectionsPerClient: positiveInt(opts.maxConnectionsPerClient, "--max-connections-per-client"),
          connectionRate: opts.connectionRate,
          log,
          ...(dns
            ? {
                webLogin: {
                  ...(opts.publicUrl ? { publicUrl: opts.publicUrl.replace(/\/+$/, "") } : {}),
                  ...(dns.servers?.length ? { dnsServers: dns.servers } : {}),
                  ...(dns.dohUrl ? { dohUrl: dns.dohUrl } : {}),
                  allowLoopbackHttp: dns.allowLoopbackHttp,
                },
              }
            : {}),
        });
      } catch (e) {
        signals.dispose();
        throw startError(e, opts.listen);
      }
      const signal = await signals.stopped;
      signals.dispose();
      log.always("info", "shutting down", { signal });
      await troop.close();
      log.always("info", "stopped", {});
    });
}
