import { ProblemError } from "../protocol/problem.ts";
import { CLI_TOKEN_AUDIENCE } from "../protocol/types.ts";
import { BearerVerifier, bearerToken } from "../server/bearer.ts";
import type { WorkerRole } from "../server/cluster.ts";
import type { Call } from "../server/http.ts";
import { type Listening, listen } from "../server/lifecycle.ts";
import { clientKey } from "../server/limits.ts";
import { lockDataDir } from "../server/lock.ts";
import type { Logger } from "../server/log.ts";
import { type App, pipeline } from "../server/pipeline.ts";
import { RateLimits } from "../server/rate-limit.ts";
import { type ApprovalSettings, approvalProofTypes, passkeyVerifier } from "./approval.ts";
import { ChallengeSealer, loadChallengeSecret } from "./challenges.ts";
import { GrantEvents, type Idp, type Principal, principalFrom } from "./context.ts";
import { oauthErrorReply, Router } from "./http.ts";
import { Keyring } from "./keys.ts";
import { type LimitClass, limitClassOf } from "./limits.ts";
import type { VapidKeys } from "./notify/channels.ts";
import { DEFAULT_NOTIFY, type NotifyConfig } from "./notify/config.ts";
import { type Notifier, newVapidKeys, startNotifier } from "./notify/notifier.ts";
import { registerAgentRoutes } from "./routes/agents.ts";
import { type LoginSettings, loginSignatureFormats, registerAuthRoutes } from "./routes/auth.ts";
import { registerDelegationRoutes } from "./routes/delegations.ts";
import { registerDiscoveryRoutes } from "./routes/discovery.ts";
import { registerGrantRoutes } from "./routes/grants.ts";
import { registerNotifyRoutes } from "./routes/notify.ts";
import { registerOAuthRoutes } from "./routes/oauth.ts";
import { type HumanSessions, registerOAuthWebRoutes } from "./routes/oauth-web.ts";
import { registerRevocationRoutes, revocationHandle } from "./routes/revocations.ts";
import { registerTokenRoutes } from "./routes/token.ts";
import { registerWebRoutes } from "./routes/web.ts";
import { registerWebApprovalRoutes } from "./routes/web-approvals.ts";
import { registerWebLoginRoutes } from "./routes/web-login.ts";
import { registerWebPushRoutes } from "./routes/web-push.ts";
import { withReadCache } from "./store/cache.ts";
import { openStore } from "./store/open.ts";
import { challengeSecretOf } from "./store/postgres/key-file.ts";
import { openSqliteStore } from "./store/sqlite/store.ts";
import type { Store } from "./store/types.ts";
import { TokenError } from "./tokens.ts";
import { type WebContext, webContext, webUnavailable } from "./web/context.ts";
import { recordIssuer } from "./web/invites.ts";
import { WEB_PATHS } from "./web/paths.ts";
import { checkStateChange, currentHuman, formToken } from "./web/session.ts";

export interface ServeOptions {
  host: string;
  port: number;
  dataDir: string;
  /** PostgreSQL instead of the data dir's SQLite: several instances on one database. */
  database?: { url: string; passwordFile?: string; keyFile?: string; maxConnections?: number };
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
  /** Accept approvals without a proof (older clients; protocol/approval.ts); off by default, logged. */
  allowBearerApprove?: boolean;
  /** The `[notify]` table of --config (idp/notify/config.ts); absent: defaults (webhooks only). */
  notify?: NotifyConfig;
  log: Logger;
  /**
   * One of the workers of `serve --workers N` (server/cluster.ts): the primary holds the data dir's
   * lock; events go to the other workers after their commit; worker 1 alone runs the housekeeping
   * (sweeps, notification delivery); "listening" is the primary's to log.
   */
  worker?: WorkerRole;
}

export interface RunningIdp {
  url: string;
  issuer: string;
  /** Stop accepting, finish in-flight requests (long polls answer at once), close the database. */
  close(): Promise<void>;
}

const nowSec = () => Math.floor(Date.now() / 1000);

/** The IdP as an app on server/: its data, then the port, then routes, then housekeeping. */
export async function startIdp(opts: ServeOptions): Promise<RunningIdp> {
  const data = await openData(opts);
  let http: Listening;
  try {
    http = await listen(opts);
  } catch (e) {
    await data.close();
    throw e;
  }
  const issuer = opts.issuer ?? http.url;
  let notifier: Notifier;
  try {
    // For the invite links of the offline admin commands: in the database when it is shared.
    if (data.store.recordIssuer) await data.store.recordIssuer(issuer);
    else recordIssuer(opts.dataDir, issuer);
    const worker = opts.worker;
    notifier = await startNotifier(data.store, opts.notify ?? DEFAULT_NOTIFY, {
      dataDir: opts.dataDir,
      ...(data.vapidKeys ? { vapidKeys: data.vapidKeys } : {}),
      base: issuer.replace(/\/+$/, ""),
      log: opts.log,
      ...(worker && !housekeeper(opts)
        ? {
            kickElsewhere: () =>
              committed(data.store).then(
                () => worker.relay({ kick: true }),
                () => {},
              ),
          }
        : {}),
    });
  } catch (e) {
    // Nothing may keep the process alive after a failed start (the port, the checkpoint worker).
    await http.close();
    await data.close();
    throw e;
  }
  const idp = idpOf(opts, data, issuer, http.shutdown, notifier);
  if (opts.worker) joinWorkers(opts.worker, idp);
  http.serve(pipeline(app(opts, idp, data, http.shutdown)));
  const stopSweep = housekeeper(opts) ? sweep(opts.log, idp) : () => {};
  const started = { url: http.url, issuer, data: data.where, kid: idp.keys.activeKid() };
  if (opts.worker) opts.worker.ready(started);
  else opts.log.always("info", "listening", started);
  const webOff = webUnavailable(issuer);
  if (webOff) opts.log.log("info", "passkey pages off", { reason: webOff });
  let closing: Promise<void> | undefined;
  return {
    url: http.url,
    issuer,
    close: () =>
      (closing ??= (async () => {
        stopSweep();
        await http.close();
        await notifier.close();
        await data.close();
      })()),
  };
}

type Data = Awaited<ReturnType<typeof openData>>;

/** Sweeps and notification delivery: the process itself, or worker 1 of several. */
const housekeeper = (opts: ServeOptions) => (opts.worker?.index ?? 1) === 1;

const committed = (store: Store): Promise<void> => store.lifecycle?.flush?.() ?? Promise.resolve();

/**
 * `serve --workers`: this worker's grant and inbox events reach the other workers once the writes
 * behind them are committed (earlier, a waiter there would re-read the old state and sleep on), one
 * message per commit; theirs wake this worker's waiters. When a worker died, what it committed may
 * not have been relayed: every waiter re-reads and the outbox is looked at.
 */
function joinWorkers(role: WorkerRole, idp: Idp): void {
  const waiting = new Map<Promise<void>, Set<string>>();
  idp.events.relayTo((name) => {
    const commit = committed(idp.store);
    let names = waiting.get(commit);
    if (!names) {
      const batch = new Set<string>();
      waiting.set(commit, batch);
      commit.then(
        () => {
          waiting.delete(commit);
          role.relay({ events: [...batch] });
        },
        () => waiting.delete(commit), // rolled back: nothing changed
      );
      names = batch;
    }
    names.add(name);
  });
  role.onRelay((body) => {
    const { events, kick } = body as { events?: unknown; kick?: unknown };
    if (Array.isArray(events)) for (const n of events) if (typeof n === "string") idp.events.received(n);
    if (kick === true) idp.notify?.kick();
  });
  role.onMissed(() => {
    idp.events.changedAll();
    idp.notify?.kick();
  });
}

/** What the request pipeline runs for the IdP: its routes, hooks and error format. */
function app(opts: ServeOptions, idp: Idp, data: Data, shutdown: AbortSignal): App<Principal> {
  return {
    router: routes(opts, idp, data.login, webContext(idp, data.secret)),
    log: opts.log,
    base: idp.base,
    shutdown,
    authenticate: (call) => idp.authenticate(call),
    admitPublic: (call) => idp.rateLimit(limitClassOf(call.path), `ip:${clientKey(call.ip)}`),
    who: (p): Record<string, string> =>
      p.actingParty ? { sub: p.sub, act_sub: p.actingParty } : { sub: p.sub },
    // Another process's change counts from the next request on (the read cache's change marker).
    begin: () => data.store.lifecycle?.beginRequest?.(),
    // Acknowledge nothing before it is durable (group commit; see store/sqlite/store.ts).
    settle: () => data.store.lifecycle?.flush?.(),
    errorReply: oauthErrorReply,
  };
}

/**
 * PostgreSQL: the store (pooled, listening for the other instances' changes; no read cache, so a
 * change made on another instance counts at the next request), the keys sealed with the key file,
 * and the login challenge secret derived from it, so every instance opens every other's challenges.
 */
async function openDatabase(opts: ServeOptions, database: NonNullable<ServeOptions["database"]>) {
  if (database.keyFile === undefined) {
    throw new Error("--database needs --database-key-file: the signing keys are stored sealed with it");
  }
  const opened = await openStore(
    { kind: "postgres", ...database },
    {
      postgres: {
        listen: true,
        ...(database.maxConnections !== undefined ? { maxConnections: database.maxConnections } : {}),
        onListenerError: (e) =>
          opts.log.log("warn", "database notifications lost; re-reading until they are back", {
            error: e.message,
          }),
      },
    },
  );
  const store = opened.store;
  let keys: Keyring;
  try {
    keys = await Keyring.open(store, nowSec());
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
  // One secret for every instance (derived from the key file): login and passkey challenges, the
  // pages' CSRF tokens and the revocation handles are then the same whichever instance answers.
  const secret = challengeSecretOf(opened.sealKey!);
  const login: LoginSettings = {
    challenges: new ChallengeSealer(secret),
    allowRawSignatures: opts.allowRawLoginSignatures === true,
  };
  return {
    store,
    keys,
    login,
    where: opened.where,
    revocationHandle: (kind: "user" | "delegation", subject: string) =>
      revocationHandle(secret, kind, subject),
    secret,
    // Web Push signs with one VAPID key pair for all instances: kept in the database, sealed.
    vapidKeys: async () =>
      JSON.parse(
        await opened.postgres!.sealedSetting("vapid", async () => JSON.stringify(await newVapidKeys())),
      ) as VapidKeys,
    async close() {
      try {
        await store.close();
      } catch (e) {
        opts.log.log("error", "closing the store failed", { error: (e as Error).message });
      }
    },
  };
}

/** The data directory: its lock, the store (checkpointed off the main thread), the keys, the login secret. */
async function openData(opts: ServeOptions) {
  if (opts.database) return openDatabase(opts, opts.database);
  // The workers of `serve --workers` share the data dir: their primary holds its lock.
  const lock = opts.worker ? { release() {} } : lockDataDir(opts.dataDir, "IdP server");
  let store: Store;
  let keys: Keyring;
  try {
    store = withReadCache(
      openSqliteStore(opts.dataDir, {
        groupCommit: true,
        // Workers share the write lock: each holds it only until its writes are waited for.
        commitOnFlush: opts.worker !== undefined,
        checkpointer: {
          intervalMs: 1000,
          onError: (e) =>
            opts.log.log("warn", "checkpoint worker failed; checkpointing on the main thread", {
              error: e.message,
            }),
        },
      }),
    );
  } catch (e) {
    lock.release();
    throw e;
  }
  try {
    keys = await Keyring.open(store, nowSec());
    await store.lifecycle?.flush?.(); // the first start's key is committed before anything is signed
  } catch (e) {
    await store.close().catch(() => undefined);
    lock.release();
    throw e;
  }
  const secret = loadChallengeSecret(opts.dataDir);
  const login: LoginSettings = {
    challenges: new ChallengeSealer(secret),
    allowRawSignatures: opts.allowRawLoginSignatures === true,
  };
  return {
    store,
    keys,
    login,
    where: opts.dataDir,
    vapidKeys: undefined as (() => Promise<VapidKeys>) | undefined, // the notifier's file in the data dir
    // Keyed by the data dir's secret (HMAC with its own context): stable across restarts.
    revocationHandle: (kind: "user" | "delegation", subject: string) =>
      revocationHandle(secret, kind, subject),
    secret,
    async close() {
      try {
        await store.close();
      } catch (e) {
        opts.log.log("error", "closing the store failed", { error: (e as Error).message });
      } finally {
        lock.release();
      }
    },
  };
}

/** What every route gets, with the principal hook and the rate limits. */
function idpOf(opts: ServeOptions, data: Data, issuer: string, shutdown: AbortSignal, notify: Notifier): Idp {
  // Per instance: each instance counts the requests it serves (see README, "Running several instances").
  const limits = new RateLimits(opts.rateLimits);
  const events = new GrantEvents();
  // Grants decided on other instances wake this one's long polls (PostgreSQL: LISTEN/NOTIFY).
  // Every process hears these itself: received, not relayed to the other workers again.
  data.store.lifecycle?.watchGrants?.((id) => (id === undefined ? events.changedAll() : events.received(id)));
  const sessions = new BearerVerifier({
    keyFor: (kid, now) => data.keys.publicKey(kid, now),
    now: nowSec,
    // The IdP checks only tokens it signed itself, on its own clock.
    claims: { issuer, audience: CLI_TOKEN_AUDIENCE, leeway: 0 },
    // AuthZ-JWTs carry act too, but name a grant (and never the session audience: it is reserved).
    accept(claims) {
      if (typeof claims.sub !== "string" || claims.act === undefined || claims.grant_id !== undefined) {
        throw new TokenError("claims", "not an IdP session token");
      }
    },
  });
  const idp: Idp = {
    store: data.store,
    keys: data.keys,
    issuer,
    base: issuer.replace(/\/+$/, ""),
    tokenTtl: opts.tokenTtl,
    log: opts.log,
    events,
    notify,
    now: nowSec,
    shutdown,
    sessionClaims: (token) => sessions.claims(token),
    authenticate: (call) => principalOf(call, idp, sessions),
    rateLimit: (limitClass, key) => limits.take(limitClass, key),
    revocationHandle: data.revocationHandle,
  };
  return idp;
}

/** The principal of a request's session token, re-checked against current state (principalFrom). */
async function principalOf(call: Call, idp: Idp, sessions: BearerVerifier): Promise<Principal> {
  const token = bearerToken(call);
  // A signature check costs CPU: a token not verified before counts against the client's address
  // first, so a flood of invalid tokens is limited like any unauthenticated request.
  if (!sessions.verified(token)) idp.rateLimit("api", `ip:${clientKey(call.ip)}`);
  let claims: Record<string, unknown>;
  try {
    claims = await sessions.claims(token);
  } catch (e) {
    if (e instanceof TokenError) throw new ProblemError("invalid_token", e.message, { reason: e.reason });
    throw e;
  }
  const principal = await principalFrom(claims, idp.store, idp.now());
  idp.rateLimit("api", `sub:${principal.sub}`);
  return principal;
}

function routes(opts: ServeOptions, idp: Idp, login: LoginSettings, web: WebContext): Router<Principal> {
  const router = new Router<Principal>();
  if (login.allowRawSignatures) {
    opts.log.always(
      "warn",
      "raw login signatures accepted (--allow-raw-login-signatures): a key that signs raw challenges can be used as a signing oracle by another IdP",
      {},
    );
  }
  const verifyPasskey = passkeyVerifier(web);
  const approvals: ApprovalSettings = {
    allowBearer: opts.allowBearerApprove === true,
    ...(verifyPasskey ? { verifyPasskey } : {}),
  };
  registerDiscoveryRoutes(router, idp, loginSignatureFormats(login), approvalProofTypes(approvals));
  registerAuthRoutes(router, idp, login);
  registerAgentRoutes(router, idp);
  if (opts.allowBearerApprove) {
    opts.log.always(
      "warn",
      "approvals without a proof accepted (--allow-bearer-approve): a stolen session token alone can approve grants",
      {},
    );
  }
  registerGrantRoutes(router, idp, approvals);
  registerDelegationRoutes(router, idp);
  registerNotifyRoutes(router, idp);
  registerTokenRoutes(router, idp);
  registerOAuthRoutes(router, idp);
  registerRevocationRoutes(router, idp);
  registerWebRoutes(router);
  registerWebLoginRoutes(router, web);
  registerWebPushRoutes(router, web);
  registerOAuthWebRoutes(router, idp, humanSessions(web));
  registerWebApprovalRoutes(router, web);
  return router;
}

/** The browser sessions of the passkey pages, as the OAuth pages (/authorize, /device) use them. */
function humanSessions(web: WebContext): HumanSessions {
  return {
    currentHuman: (call) => currentHuman(web, call),
    formToken: (human) => formToken(web, human),
    checkStateChange: (call, human, token) => checkStateChange(web, call, human, token),
    loginPath: WEB_PATHS.login,
  };
}

/** Delivered and dead notifications are kept this long (the dead-letter queue's memory). */
const NOTIFICATION_RETENTION_S = 14 * 86_400;

/** Housekeeping: expire timed grants (and wake their waiters), drop used challenges/jtis and old notifications. */
function sweep(log: Logger, idp: Idp): () => void {
  const timer = setInterval(async () => {
    try {
      const now = nowSec();
      for (const id of await idp.store.expireDue(now)) idp.events.changed(id);
      await idp.store.purgeExpired(now);
      await idp.store.purgeExpiredWeb(now);
      await idp.store.purgeNotifications(now - NOTIFICATION_RETENTION_S);
    } catch (e) {
      log.log("warn", "sweep failed", { error: (e as Error).message });
    }
  }, 5000);
  timer.unref();
  return () => clearInterval(timer);
}
