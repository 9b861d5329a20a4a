import { readFileSync } from "node:fs";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { isChunked, refuseChunked } from "./http.ts";
import {
  ConnectionCounter,
  capConnections,
  DEADLINE_CHECK_MS,
  HEADERS_TIMEOUT_MS,
  KEEP_ALIVE_TIMEOUT_MS,
  REQUEST_TIMEOUT_MS,
} from "./limits.ts";
import type { Logger } from "./log.ts";
import { rateLimiterOf } from "./rate-limit.ts";

export interface ListenOptions {
  host: string;
  port: number;
  tls?: { cert: string; key: string };
  /** Open connections allowed per client (IPv4 address or IPv6 /64) and in total. */
  maxConnectionsPerClient: number;
  maxConnections: number;
  /** New connections per client: "N/PERIOD" or "off". */
  connectionRate: string;
  log: Logger;
}

export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => Promise<void>;
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

export interface Listening {
  /** http(s)://host:port as bound (the port resolved when 0 was asked for). */
  url: string;
  /** Aborted when close() begins: long polls answer at once. */
  shutdown: AbortSignal;
  /** Starts answering; requests that arrived since the port was bound wait until then. */
  serve(handler: RequestHandler): void;
  /** Runs when close() begins, before HTTP connections are closed (e.g. closing WebSockets). */
  onClose(hook: () => void | Promise<void>): void;
  /** Takes the server's `upgrade` requests (WebSockets); without a handler they are refused. */
  onUpgrade(handler: UpgradeHandler): void;
  /** Stop accepting, finish in-flight requests (forced after 10 s); once, however often called. */
  close(): Promise<void>;
}

const FORCE_CLOSE_MS = 10_000;

/** Binds the port with the deadlines and connection caps every server has. */
export async function listen(opts: ListenOptions): Promise<Listening> {
  const server = createServer(opts);
  // Requests can arrive as soon as the port is bound (a restart on a known port): they wait here
  // until the app is ready, which may need the bound port (e.g. a default issuer names it).
  let handler: RequestHandler | undefined;
  const shutdown = new AbortController();
  const ready = Promise.withResolvers<void>();
  server.on("request", (req, res) => {
    if (isChunked(req)) return refuseChunked(req, res);
    if (handler) void handler(req, res);
    else void ready.promise.then(() => handler!(req, res));
  });
  await bind(server, opts);
  const hooks: (() => void | Promise<void>)[] = [];
  let closing: Promise<void> | undefined;
  return {
    url: urlOf(server, opts),
    shutdown: shutdown.signal,
    serve(h) {
      handler = h;
      ready.resolve();
    },
    onClose: (hook) => hooks.push(hook),
    // Only an app that takes upgrades listens for them: elsewhere they stay plain requests.
    onUpgrade: (h) => {
      server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
        socket.on("error", () => {});
        if (shutdown.signal.aborted) socket.destroy();
        else h(req, socket, head);
      });
    },
    close() {
      closing ??= (async () => {
        shutdown.abort();
        await Promise.all(hooks.map((hook) => hook()));
        await closeHttp(server);
      })();
      return closing;
    },
  };
}

function createServer(opts: ListenOptions): Server {
  const deadlines = {
    headersTimeout: HEADERS_TIMEOUT_MS,
    requestTimeout: REQUEST_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    connectionsCheckingInterval: DEADLINE_CHECK_MS,
  };
  const server: Server = opts.tls
    ? createHttpsServer({ ...deadlines, cert: readFileSync(opts.tls.cert), key: readFileSync(opts.tls.key) })
    : createHttpServer(deadlines);
  capConnections(
    server,
    new ConnectionCounter(opts.maxConnectionsPerClient, opts.maxConnections),
    opts.tls !== undefined,
    rateLimiterOf(opts.connectionRate),
  );
  return server;
}

async function bind(server: Server, opts: ListenOptions): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // Once listening, a failed accept (e.g. no file descriptor left) costs that connection, not the server.
  server.on("error", (e) => opts.log.log("warn", "accept failed", { error: e.message }));
}

function urlOf(server: Server, opts: ListenOptions): string {
  const port = (server.address() as AddressInfo).port;
  const hostPart = opts.host.includes(":") ? `[${opts.host}]` : opts.host;
  return `${opts.tls ? "https" : "http"}://${hostPart}:${port}`;
}

function closeHttp(server: Server): Promise<void> {
  return new Promise<void>((resolve) => {
    const force = setTimeout(() => server.closeAllConnections(), FORCE_CLOSE_MS);
    force.unref();
    // Keep-alive connections that finish their request during shutdown become idle: close them.
    const idle = setInterval(() => server.closeIdleConnections(), 50);
    server.close(() => {
      clearTimeout(force);
      clearInterval(idle);
      resolve();
    });
    server.closeIdleConnections();
  });
}

/**
 * Resolves with the name of the first SIGTERM or SIGINT. Install it before the server starts: a
 * supervisor that stops the server as soon as it has seen the "listening" line still gets the
 * graceful shutdown, not the default death by signal. dispose() gives the signals back.
 */
export function stopSignals(): { stopped: Promise<string>; dispose(): void } {
  const signals = ["SIGTERM", "SIGINT"] as const;
  const { promise, resolve } = Promise.withResolvers<string>();
  for (const s of signals) process.on(s, resolve);
  return {
    stopped: promise,
    dispose: () => {
      for (const s of signals) process.off(s, resolve);
    },
  };
}
