import { readFileSync } from "node:fs";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { ProblemError } from "../protocol/problem.ts";
import { ChallengeSealer, loadChallengeSecret } from "./challenges.ts";
import {
  bearer,
  GrantEvents,
  type Idp,
  type Principal,
  parseRateLimit,
  principalFrom,
  RateLimiter,
  SessionVerifier,
} from "./context.ts";
import { type Call, isChunked, Router, refuseChunked, requestId, send, sendError } from "./http.ts";
import { Keyring } from "./keys.ts";
import {
  ConnectionCounter,
  capConnections,
  clientKey,
  DEADLINE_CHECK_MS,
  HEADERS_TIMEOUT_MS,
  KEEP_ALIVE_TIMEOUT_MS,
  type LimitClass,
  limitClassOf,
  REQUEST_TIMEOUT_MS,
} from "./limits.ts";
import { lockDataDir } from "./lock.ts";
import type { Logger } from "./log.ts";
import { registerAgentRoutes } from "./routes/agents.ts";
import { loginSignatureFormats, registerAuthRoutes } from "./routes/auth.ts";
import { registerDelegationRoutes } from "./routes/delegations.ts";
import { registerDiscoveryRoutes } from "./routes/discovery.ts";
import { registerGrantRoutes } from "./routes/grants.ts";
import { registerTokenRoutes } from "./routes/token.ts";
import { withReadCache } from "./store/cache.ts";
import { openSqliteStore } from "./store/sqlite/store.ts";
import type { Store } from "./store/types.ts";
import { TokenError } from "./tokens.ts";

export interface ServeOptions {
  host: string;
  port: number;
  dataDir: string;
  issuer?: string;
  tls?: { cert: string; key: string };
  /** Session token lifetime in seconds. */
  tokenTtl: number;
  /** Per endpoint class: "N/PERIOD" or "off" (DEFAULT_RATE_LIMITS). */
  rateLimits: Record<LimitClass, string>;
  /** Open connections allowed per client (IPv4 address or IPv6 /64) and in total. */
  maxConnectionsPerClient: number;
  maxConnections: number;
  /** New connections per client: "N/PERIOD" or "off". */
  connectionRate: string;
  /** Also accept login signatures over the bare challenge (older clients); off by default, logged. */
  allowRawLoginSignatures?: boolean;
  log: Logger;
}

export interface RunningIdp {
  url: string;
  issuer: string;
  /** Stop accepting, finish in-flight requests (long polls answer at once), close the database. */
  close(): Promise<void>;
}

function rateLimiterOf(spec: string): RateLimiter | undefined {
  const limit = parseRateLimit(spec);
  return limit ? new RateLimiter(limit.limit, limit.windowSec) : undefined;
}

export async function startIdp(opts: ServeOptions): Promise<RunningIdp> {
  const limiters = new Map<LimitClass, RateLimiter>();
  for (const [limitClass, spec] of Object.entries(opts.rateLimits) as [LimitClass, string][]) {
    const limiter = rateLimiterOf(spec);
    if (limiter) limiters.set(limitClass, limiter);
  }
  const lock = lockDataDir(opts.dataDir);
  let opened: Store;
  try {
    opened = openSqliteStore(opts.dataDir, {
      groupCommit: true,
      checkpointer: {
        intervalMs: 1000,
        onError: (e) =>
          opts.log.log("warn", "checkpoint worker failed; checkpointing on the main thread", {
            error: e.message,
          }),
      },
    });
  } catch (e) {
    lock.release();
    throw e;
  }
  const store = withReadCache(opened);
  const nowSec = () => Math.floor(Date.now() / 1000);
  const keys = await Keyring.open(store, nowSec());
  await store.lifecycle?.flush?.(); // the first start's key is committed before anything is signed
  const login = {
    challenges: new ChallengeSealer(loadChallengeSecret(opts.dataDir)),
    allowRawSignatures: opts.allowRawLoginSignatures === true,
  };
  const shutdown = new AbortController();

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

  // Requests can arrive as soon as the port is bound (a restart on a known port): they wait here
  // until the routes exist, which needs the bound port (the default issuer names it).
  let handler: ((req: IncomingMessage, res: ServerResponse) => Promise<void>) | undefined;
  let markReady!: () => void;
  const ready = new Promise<void>((resolve) => {
    markReady = resolve;
  });
  server.on("request", (req, res) => {
    if (isChunked(req)) return refuseChunked(req, res);
    if (handler) void handler(req, res);
    else void ready.then(() => handler!(req, res));
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // Once listening, a failed accept (e.g. no file descriptor left) costs that connection, not the server.
  server.on("error", (e) => opts.log.log("warn", "accept failed", { error: e.message }));
  const port = (server.address() as AddressInfo).port;
  const hostPart = opts.host.includes(":") ? `[${opts.host}]` : opts.host;
  const url = `${opts.tls ? "https" : "http"}://${hostPart}:${port}`;
  const issuer = opts.issuer ?? url;

  let verifier: SessionVerifier;
  const idp: Idp = {
    store,
    keys,
    issuer,
    base: issuer.replace(/\/+$/, ""),
    tokenTtl: opts.tokenTtl,
    log: opts.log,
    events: new GrantEvents(),
    now: nowSec,
    shutdown: shutdown.signal,
    sessionClaims: (token) => verifier.claims(token),
    async authenticate(call: Call): Promise<Principal> {
      const token = bearer(call);
      // A signature check costs CPU: a token not verified before counts against the client's address
      // first, so a flood of invalid tokens is limited like any unauthenticated request.
      if (!verifier.verified(token)) idp.rateLimit("api", `ip:${clientKey(call.ip)}`);
      let claims: Record<string, unknown>;
      try {
        claims = await verifier.claims(token);
      } catch (e) {
        if (e instanceof TokenError) throw new ProblemError("invalid_token", e.message, { reason: e.reason });
        throw e;
      }
      const principal = await principalFrom(claims, store, nowSec());
      idp.rateLimit("api", `sub:${principal.sub}`);
      return principal;
    },
    rateLimit(limitClass: LimitClass, key: string) {
      const limiter = limiters.get(limitClass);
      if (!limiter) return;
      const wait = limiter.take(key, Date.now());
      if (wait > 0)
        throw new ProblemError("rate_limited", `slow down; retry in ${wait} s`, { retry_after: wait });
    },
  };
  verifier = new SessionVerifier(() => idp);

  const router = new Router<Principal>();
  if (login.allowRawSignatures) {
    opts.log.always(
      "warn",
      "raw login signatures accepted (--allow-raw-login-signatures): a key that signs raw challenges can be used as a signing oracle by another IdP",
      {},
    );
  }
  registerDiscoveryRoutes(router, idp, loginSignatureFormats(login));
  registerAuthRoutes(router, idp, login);
  registerAgentRoutes(router, idp);
  registerGrantRoutes(router, idp);
  registerDelegationRoutes(router, idp);
  registerTokenRoutes(router, idp);

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const started = performance.now();
    const rid = requestId(req);
    res.setHeader("x-request-id", rid);
    const rawUrl = req.url ?? "/";
    const q = rawUrl.indexOf("?");
    const path = q === -1 ? rawUrl : rawUrl.slice(0, q);
    const method = req.method ?? "GET";
    const ac = new AbortController();
    // The client going away (not a finished response) stops a long poll.
    res.on("close", () => {
      if (!res.writableFinished) ac.abort();
    });
    const call: Call = {
      req,
      res,
      method,
      path,
      params: {},
      query: new URLSearchParams(q === -1 ? "" : rawUrl.slice(q + 1)),
      rid,
      ip: req.socket.remoteAddress ?? "",
      closed: ac.signal,
    };
    let status = 500;
    // Who made the request, on each of its log lines: with a delegated token both parties.
    let who: { sub?: string; act_sub?: string } = {};
    try {
      const m = router.match(method, path);
      if (!m) throw new ProblemError("not_found", `no endpoint ${path}`);
      if ("allowed" in m) {
        res.setHeader("allow", m.allowed.join(", "));
        throw new ProblemError("method_not_allowed", `${method} is not allowed on ${path}`);
      }
      call.params = m.params;
      let principal: Principal | undefined;
      if (m.route.auth) {
        principal = await idp.authenticate(call);
        who = principal.actingParty
          ? { sub: principal.sub, act_sub: principal.actingParty }
          : { sub: principal.sub };
      } else {
        idp.rateLimit(limitClassOf(path), `ip:${clientKey(call.ip)}`);
      }
      const reply = await m.route.handler(call, principal as Principal);
      // Acknowledge nothing before it is durable (group commit; see store/sqlite/store.ts).
      await store.lifecycle?.flush?.();
      status = reply.status;
      // While shutting down, do not keep the connection for another request.
      if (shutdown.signal.aborted) res.setHeader("connection", "close");
      send(res, reply.status, reply.body, reply.headers);
    } catch (e) {
      let error = e;
      if (!(e instanceof ProblemError) && !(e instanceof Error && e.name === "OAuthError")) {
        opts.log.log("error", "unhandled error", {
          rid,
          error: e instanceof Error ? e.message : String(e),
          ...who,
        });
      }
      try {
        await store.lifecycle?.flush?.();
      } catch {
        error = new ProblemError("internal", "storage failure");
      }
      status = sendError(res, error, idp.base + path);
    }
    if (opts.log.enabled("info")) {
      opts.log.log("info", "request", {
        rid,
        method,
        path,
        status,
        ms: Math.round((performance.now() - started) * 10) / 10,
        ...who,
      });
    }
  };
  handler = handle;
  markReady();

  // Housekeeping: expire timed grants (and wake their waiters), drop used challenges/jtis.
  const sweep = setInterval(async () => {
    try {
      const now = nowSec();
      for (const id of await store.expireDue(now)) idp.events.changed(id);
      await store.purgeExpired(now);
    } catch (e) {
      opts.log.log("warn", "sweep failed", { error: (e as Error).message });
    }
  }, 5000);
  sweep.unref();

  opts.log.always("info", "listening", { url, issuer, data: opts.dataDir, kid: keys.activeKid() });

  let closing: Promise<void> | undefined;
  return {
    url,
    issuer,
    close() {
      closing ??= new Promise<void>((resolve) => {
        clearInterval(sweep);

        shutdown.abort();
        const force = setTimeout(() => server.closeAllConnections(), 10_000);
        force.unref();
        // Keep-alive connections that finish their request during shutdown become idle: close them.
        const idle = setInterval(() => server.closeIdleConnections(), 50);
        server.close(() => {
          clearTimeout(force);
          clearInterval(idle);
          void store
            .close()
            .catch((e) => opts.log.log("error", "closing the store failed", { error: (e as Error).message }))
            .finally(() => {
              lock.release();
              resolve();
            });
        });
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}
