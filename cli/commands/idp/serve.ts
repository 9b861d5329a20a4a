import type { Command } from "commander";
import { DEFAULT_RATE_LIMITS } from "../../../idp/limit-defaults.ts";
import type { StoreLocation } from "../../../idp/store/open.ts";
import {
  DEFAULT_CONNECTION_RATE,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
} from "../../../server/limit-defaults.ts";
import type { Logger } from "../../../server/log.ts";
import { CliError, usageError } from "../../errors.ts";
import { ExitCode, type ExitCodeValue } from "../../exit-codes.ts";
import { parseListen } from "../../listen.ts";
import type { GetContext } from "../../program.ts";
import {
  checkStoreLocation,
  databaseKeyFileOption,
  databaseOption,
  databasePasswordFileOption,
  dataOption,
  type StoreOpts,
  storeLocation,
} from "./common.ts";

interface ServeOpts extends StoreOpts {
  listen: string;
  issuer?: string;
  databaseConnections: string;
  tlsCert?: string;
  tlsKey?: string;
  tokenTtl: string;
  rateLimit: string;
  loginRateLimit: string;
  tokenRateLimit: string;
  maxConnections: string;
  maxConnectionsPerClient: string;
  connectionRate: string;
  allowRawLoginSignatures?: boolean;
  allowBearerApprove?: boolean;
  config?: string;
  logLevel: string;
  workers: string;
}

/** `--listen HOST:PORT` (shared with `apes troop serve`). */
export { parseListen };

/** Why the server could not start, with what to do about it. */
/** Why the IdP could not start, as the exit code a supervisor can act on (78: fix the config). */
export function startError(e: unknown, opts: Pick<ServeOpts, "listen">): CliError {
  const err = e as NodeJS.ErrnoException;
  const message = err?.message ?? String(e);
  if (err?.code === "EADDRINUSE") {
    return new CliError(`${opts.listen} is already in use`, {
      exitCode: ExitCode.UNAVAILABLE,
      hint: "stop the other server or choose another --listen port (0 picks a free one)",
    });
  }
  if (err?.name === "DataDirLockedError") {
    return new CliError(message, {
      exitCode: ExitCode.CONFIG,
      hint: "one server per --data dir: stop the other one, or give this one its own --data dir (the admin commands need no server stopped)",
    });
  }
  if (
    err?.name === "KeyFileError" ||
    err?.name === "DatabaseUrlError" ||
    /^(28|3D)/.test(String(err?.code))
  ) {
    // The key file, the URL, or the database refusing the login / not existing (SQLSTATE 28xxx, 3D000).
    return new CliError(`cannot start the IdP: ${message}`, {
      exitCode: ExitCode.CONFIG,
      hint: "check --database, its password (--database-password-file, PGPASSWORD) and --database-key-file",
      cause: e,
    });
  }
  if (
    err?.code === "ECONNREFUSED" ||
    err?.code === "ETIMEDOUT" ||
    /timeout exceeded when trying to connect/i.test(message)
  ) {
    return new CliError(`cannot start the IdP: the database is not reachable (${message})`, {
      exitCode: ExitCode.UNAVAILABLE,
      hint: "is PostgreSQL running and listening at the --database host and port?",
      cause: e,
    });
  }
  if (err?.code === "EACCES" && err.syscall === "listen") {
    return new CliError(`not allowed to listen on ${opts.listen}`, {
      exitCode: ExitCode.NOPERM,
      hint: "ports below 1024 need privileges; use a higher port behind a proxy",
    });
  }
  if (err?.code === "EMFILE" || err?.code === "ENFILE" || /too many open files/i.test(message)) {
    return new CliError(`cannot start the IdP: out of file descriptors (${message})`, {
      exitCode: ExitCode.CONFIG,
      hint: "raise the open-files limit (ulimit -n, or LimitNOFILE= in the systemd unit) to at least 1024",
      cause: e,
    });
  }
  if ((err as { errcode?: number })?.errcode === 14) {
    // SQLITE_CANTOPEN: no permission on the data dir, or no file descriptor left.
    return new CliError(`cannot start the IdP: ${message}`, {
      exitCode: ExitCode.CONFIG,
      hint: "the --data dir must be writable by this user, and the open-files limit (ulimit -n) at least 1024",
      cause: e,
    });
  }
  if (err?.code === "EPERM") {
    // E.g. a database file created by root before the service user ever ran (chmod is refused).
    return new CliError(`cannot start the IdP: ${message}`, {
      exitCode: ExitCode.CONFIG,
      hint: "the data dir and its files must belong to the user running the IdP (chown -R that user the --data dir)",
      cause: e,
    });
  }
  if (err?.code === "ENOENT" || err?.code === "EACCES" || /PEM|certificate|key/i.test(message)) {
    return new CliError(`cannot start the IdP: ${message}`, {
      exitCode: ExitCode.CONFIG,
      hint: "check --data, --tls-cert and --tls-key (readable PEM files)",
      cause: e,
    });
  }
  return new CliError(`cannot start the IdP: ${message}`, { exitCode: ExitCode.ERROR, cause: e });
}

/** The --config file's notify settings; any problem is a config error (78) before the port opens. */
async function readServeConfig(file: string) {
  const [{ readFile }, { parse }, { parseNotifyConfig }, { isLoopbackHost }] = await Promise.all([
    import("node:fs/promises"),
    import("smol-toml"),
    import("../../../idp/notify/config.ts"),
    import("../../../protocol/ddisa.ts"),
  ]);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new CliError(`cannot read --config ${file}: ${(e as Error).message}`, {
      exitCode: ExitCode.CONFIG,
    });
  }
  if (text.length > 256 * 1024)
    throw new CliError(`--config ${file} is larger than 256 KiB`, { exitCode: ExitCode.CONFIG });
  try {
    return parseNotifyConfig(parse(text), isLoopbackHost);
  } catch (e) {
    throw new CliError(`${file}: ${(e as Error).message}`, {
      exitCode: ExitCode.CONFIG,
      hint: "see docs/notifications.md for the [notify] settings",
    });
  }
}

/** Most workers `--workers` takes (a typo must not fork thousands of processes). */
const MAX_WORKERS = 256;

/** `--workers N|auto`: auto is one per CPU the process may use. */
async function workerCount(value: string): Promise<number> {
  if (value === "auto") return (await import("node:os")).availableParallelism();
  const n = /^[1-9]\d{0,2}$/.test(value) ? Number(value) : 0;
  if (n < 1 || n > MAX_WORKERS)
    throw usageError(`invalid --workers "${value}"`, `give a number 1..${MAX_WORKERS}, or auto`);
  return n;
}

function positiveInt(value: string, option: string): number {
  if (!/^[1-9]\d{0,8}$/.test(value))
    throw usageError(`invalid ${option} "${value}"`, "give a whole number >= 1");
  return Number(value);
}

/** `apes idp serve`: runs the IdP until SIGTERM/SIGINT. */
export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("serve")
    .description("run the identity provider (HTTP or HTTPS), logging JSON lines on stderr")
    .option("--listen <host:port>", "address to listen on (port 0: any free port)", "127.0.0.1:8080")
    .option("--issuer <url>", "issuer URL (default: derived from --listen and the scheme)")
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .option("--database-connections <n>", "PostgreSQL connections in this instance's pool", "10")
    .option("--tls-cert <file>", "PEM certificate chain (serve HTTPS)")
    .option("--tls-key <file>", "PEM private key for --tls-cert")
    .option("--token-ttl <duration>", "session token lifetime (e.g. 15m, 1h)", "1h")
    .option(
      "--rate-limit <n/period>",
      "API requests per identity (per client address when unauthenticated); off to disable",
      DEFAULT_RATE_LIMITS.api,
    )
    .option(
      "--login-rate-limit <n/period>",
      "login challenge/authenticate requests per client address",
      DEFAULT_RATE_LIMITS.login,
    )
    .option(
      "--token-rate-limit <n/period>",
      "token endpoint requests per client address",
      DEFAULT_RATE_LIMITS.token,
    )
    .option("--max-connections <n>", "open connections in total", String(DEFAULT_MAX_CONNECTIONS))
    .option(
      "--max-connections-per-client <n>",
      "open connections per client address (IPv6: per /64)",
      String(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
    )
    .option("--connection-rate <n/period>", "new connections per client address", DEFAULT_CONNECTION_RATE)
    .option(
      "--allow-raw-login-signatures",
      "also accept key logins signed over the bare challenge (older clients; unsafe, logged)",
    )
    .option(
      "--allow-bearer-approve",
      "also accept approvals without a proof, on the session token alone (older clients; unsafe, logged)",
    )
    .option(
      "--config <file>",
      "TOML settings: the [notify] table (channels, retries; see docs/notifications.md)",
    )
    .option("--log-level <level>", "debug, info, warn or error", "info")
    .option(
      "--workers <n>",
      "processes serving one port and one data dir or database, on as many cores (auto: one per CPU)",
      "1",
    )
    .addHelpText(
      "after",
      `
The first line logged is {"level":"info","msg":"listening","url":...,"issuer":...}.
A signing key is created on first start; rotate it with \`apes idp keys rotate\`.
Key logins must sign the domain-separated message of docs/signatures.md; with
--allow-raw-login-signatures the bare challenge is accepted too (older clients; logged as a warning).
An approval must carry a proof (an Ed25519 signature or a passkey assertion over the grant's
approval digest, docs/signatures.md); --allow-bearer-approve also accepts one without (older
clients; logged as a warning at start and on every such approval).
With --workers N a supervising process starts N worker processes on one port and one store (a
worker that dies is restarted; SIGTERM drains them all); each worker admits 1/N of every rate and
connection limit, so together they admit no more than one process would. See README, "Every core".

Examples:
  $ apes idp serve --listen 127.0.0.1:8080
  $ apes idp serve --listen 0.0.0.0:443 --issuer https://id.example.com --tls-cert cert.pem --tls-key key.pem
  $ apes idp serve --listen 127.0.0.1:0 --data /tmp/idp --token-ttl 15m
  $ PGPASSWORD=... apes idp serve --database postgres://apes@db.internal:5432/apes --database-key-file /etc/apes/idp-db.key
  $ apes idp serve --listen 127.0.0.1:8080 --config /etc/apes/idp.toml
  $ apes idp serve --listen 0.0.0.0:8443 --data /var/lib/apes-idp --workers auto`,
    )
    .action(async (opts: ServeOpts) => {
      const ctx = getContext();
      const { host, port } = parseListen(opts.listen);
      if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) {
        throw usageError("--tls-cert and --tls-key go together");
      }
      if (opts.issuer !== undefined) {
        let u: URL;
        try {
          u = new URL(opts.issuer);
        } catch {
          throw usageError(
            `invalid --issuer "${opts.issuer}"`,
            "give an absolute URL like https://id.example.com",
          );
        }
        if (u.protocol !== "https:" && u.protocol !== "http:") throw usageError("--issuer must be http(s)");
      }
      const [
        { startIdp },
        { jsonLogger, isLogLevel },
        { parseDuration },
        { parseRateLimit, shareOfRateLimit },
        { stopSignals },
      ] = await Promise.all([
        import("../../../idp/server.ts"),
        import("../../../server/log.ts"),
        import("../../../idp/grants.ts"),
        import("../../../server/rate-limit.ts"),
        import("../../../server/lifecycle.ts"),
      ]);
      if (!isLogLevel(opts.logLevel)) throw usageError(`invalid --log-level "${opts.logLevel}"`);
      let tokenTtl: number;
      const rateLimits = { api: opts.rateLimit, login: opts.loginRateLimit, token: opts.tokenRateLimit };
      try {
        tokenTtl = parseDuration(opts.tokenTtl, "--token-ttl");
        for (const spec of [...Object.values(rateLimits), opts.connectionRate]) parseRateLimit(spec);
      } catch (e) {
        throw usageError((e as Error).message);
      }
      const maxConnections = positiveInt(opts.maxConnections, "--max-connections");
      const maxConnectionsPerClient = positiveInt(
        opts.maxConnectionsPerClient,
        "--max-connections-per-client",
      );
      const location = storeLocation(ctx, opts);
      await checkStoreLocation(location);
      const databaseConnections = positiveInt(opts.databaseConnections, "--database-connections");
      if (location.kind === "postgres" && location.keyFile === undefined) {
        throw usageError(
          "--database needs --database-key-file (or APES_DATABASE_KEY_FILE): the signing keys are stored sealed with it",
          "create one: head -c 32 /dev/urandom > /etc/apes/idp-db.key && chmod 600 /etc/apes/idp-db.key (the same file on every instance)",
        );
      }
      const notify = opts.config === undefined ? undefined : await readServeConfig(opts.config);
      const workers = await workerCount(opts.workers);
      const { workerRole, exitWithPrimary, leavePrimary } = await import("../../../server/cluster.ts");
      const worker = workerRole();
      const log = jsonLogger(
        opts.logLevel,
        (line) => ctx.io.stderr.write(line),
        worker ? { worker: worker.index } : undefined,
      );
      // Caught from before the "listening" line (see stopSignals).
      const signals = stopSignals();
      if (!worker && workers > 1) return superviseServe(opts, workers, location, log, signals);
      // A worker's share of each limit (see shareOfRateLimit); one process: the limits as given.
      const share = (n: number) => (worker ? Math.max(1, Math.floor(n / worker.count)) : n);
      const shareSpec = (spec: string) => (worker ? shareOfRateLimit(spec, worker.count) : spec);
      let idp: Awaited<ReturnType<typeof startIdp>>;
      try {
        idp = await startIdp({
          host,
          port,
          dataDir: location.kind === "sqlite" ? location.dataDir : "",
          ...(location.kind === "postgres"
            ? {
                database: {
                  url: location.url,
                  ...(location.passwordFile ? { passwordFile: location.passwordFile } : {}),
                  ...(location.keyFile ? { keyFile: location.keyFile } : {}),
                  maxConnections: databaseConnections,
                },
              }
            : {}),
          ...(opts.issuer ? { issuer: opts.issuer } : {}),
          ...(opts.tlsCert && opts.tlsKey ? { tls: { cert: opts.tlsCert, key: opts.tlsKey } } : {}),
          tokenTtl,
          rateLimits: {
            api: shareSpec(rateLimits.api),
            login: shareSpec(rateLimits.login),
            token: shareSpec(rateLimits.token),
          },
          maxConnections: share(maxConnections),
          maxConnectionsPerClient: share(maxConnectionsPerClient),
          connectionRate: shareSpec(opts.connectionRate),
          allowRawLoginSignatures: opts.allowRawLoginSignatures === true,
          allowBearerApprove: opts.allowBearerApprove === true,
          ...(notify ? { notify } : {}),
          log,
          ...(worker ? { worker } : {}),
        });
      } catch (e) {
        signals.dispose();
        const err = startError(e, opts);
        if (worker) leavePrimary(err.exitCode);
        throw err;
      }
      if (worker) exitWithPrimary(() => idp.close());
      const signal = await signals.stopped;
      signals.dispose();
      // A worker hears a supervisor's SIGTERM and its primary's: the second must not cut the drain short.
      if (worker) for (const s of ["SIGTERM", "SIGINT"] as const) process.on(s, () => {});
      log.always("info", "shutting down", { signal });
      await idp.close();
      log.always("info", "stopped", {});
      // The channel to the primary keeps a worker alive: closing it ends the process (exitWithPrimary).
      if (worker) process.disconnect();
    });
}

/**
 * `--workers N`: this process takes the data dir's lock (SQLite), starts the workers (each runs this
 * command line as a worker of it, server/cluster.ts), logs "listening" once all listen, restarts a
 * worker that dies, and on SIGTERM/SIGINT drains them all. A worker that fails at start ends the
 * start with its exit code (its own error line is above); workers that keep dying: exit 1.
 */
async function superviseServe(
  opts: ServeOpts,
  workers: number,
  location: StoreLocation,
  log: Logger,
  signals: { stopped: Promise<string>; dispose(): void },
): Promise<void> {
  const [{ lockDataDir }, { superviseWorkers }] = await Promise.all([
    import("../../../server/lock.ts"),
    import("../../../server/cluster.ts"),
  ]);
  let lock: { release(): void } | undefined;
  try {
    if (location.kind === "sqlite") lock = lockDataDir(location.dataDir, "IdP server");
  } catch (e) {
    signals.dispose();
    throw startError(e, opts);
  }
  const supervisor = superviseWorkers(workers, log, process.argv.slice(2));
  const stop = async (signal: string) => {
    log.always("info", "shutting down", { signal });
    await supervisor.stop();
    log.always("info", "stopped", {});
  };
  try {
    const started = await Promise.race([
      supervisor.ready.then((info) => ({ info })),
      supervisor.failed.then((code) => ({ code })),
      signals.stopped.then((signal) => ({ signal })),
    ]);
    if ("code" in started) {
      throw new CliError(`cannot start the IdP: a worker exited with status ${started.code}`, {
        exitCode: started.code as ExitCodeValue,
      });
    }
    if ("signal" in started) return await stop(started.signal);
    log.always("info", "listening", { ...started.info, workers });
    const ended = await Promise.race([
      signals.stopped.then((signal) => ({ signal })),
      supervisor.failed.then((code) => ({ code })),
    ]);
    if ("code" in ended) {
      throw new CliError("the IdP stopped: its workers kept dying (see the log lines above)", {
        exitCode: ExitCode.ERROR,
      });
    }
    await stop(ended.signal);
  } finally {
    signals.dispose();
    lock?.release();
  }
}
