import { ProblemError } from "../protocol/problem.ts";
import { bearerToken } from "../server/bearer.ts";
import { type Listening, listen } from "../server/lifecycle.ts";
import { clientKey } from "../server/limits.ts";
import { lockDataDir } from "../server/lock.ts";
import type { Logger } from "../server/log.ts";
import { pipeline } from "../server/pipeline.ts";
import { RateLimits } from "../server/rate-limit.ts";
import { SpLogin } from "../sp/login.ts";
import type { Actor } from "./actors.ts";
import { openAudit } from "./audit.ts";
import { type Troop, troopEvents } from "./context.ts";
import { Hub } from "./hub.ts";
import { AuthError, IdpLink } from "./idp-link.ts";
import { troopRoutes } from "./routes.ts";
import { openTroopStore } from "./store/sqlite.ts";

/** `apes troop serve`: the control plane as an app on server/ (docs/control-plane.md). */

export interface TroopOptions {
  host: string;
  port: number;
  dataDir: string;
  /** The IdP's issuer URL: the only one whose tokens are accepted. */
  idp: string;
  /** The troop's client id: the audience its tokens must name. */
  clientId: string;
  idpCa?: string;
  tls?: { cert: string; key: string };
  pingIntervalS: number;
  /** Tokens not verified before, per client address: "N/PERIOD" or "off". */
  authRateLimit: string;
  /** Leeway on exp/iat for the IdP's clock (protocol/jwt.ts CLOCK_SKEW_S by default). */
  clockSkewS?: number;
  maxConnections: number;
  maxConnectionsPerClient: number;
  connectionRate: string;
  log: Logger;
  /** The status page behind DDISA sign-in in the browser (docs/sp-login.md); bearer stays for the API. */
  webLogin?: {
    /** The troop's public origin (default: the listening URL); the redirect URI is <origin>/auth/callback. */
    publicUrl?: string;
    dnsServers?: readonly string[];
    dohUrl?: string;
    allowLoopbackHttp?: boolean;
  };
}

export interface RunningTroop {
  url: string;
  close(): Promise<void>;
}

const nowSec = () => Math.floor(Date.now() / 1000);

export async function startTroop(o: TroopOptions): Promise<RunningTroop> {
  const lock = lockDataDir(o.dataDir, "troop server");
  const store = openTroopStore(o.dataDir);
  const audit = openAudit(o.dataDir, nowSec);
  const link = new IdpLink({
    issuer: o.idp,
    audience: o.clientId,
    ...(o.idpCa ? { ca: o.idpCa } : {}),
    ...(o.clockSkewS !== undefined ? { leeway: o.clockSkewS } : {}),
    log: o.log,
    now: nowSec,
  });
  const release = async () => {
    link.close();
    audit.close();
    await store.close();
    lock.release();
  };
  let http: Listening;
  try {
    await link.start();
    http = await listen(o);
  } catch (e) {
    await release();
    throw e;
  }
  let hub: Hub | undefined;
  const limits = new RateLimits({ auth: o.authRateLimit });
  const troop: Troop = {
    store,
    link,
    audit,
    log: o.log,
    now: nowSec,
    pingIntervalS: o.pingIntervalS,
    events: troopEvents(),
    shutdown: http.shutdown,
    admitToken(token, address) {
      if (!link.verified(token)) limits.take("auth", clientKey(address));
    },
    connected: (nest) => hub?.connected(nest) ?? false,
    push: (nest) => hub?.push(nest),
    async authenticate(call) {
      const token = bearerToken(call);
      troop.admitToken(token, call.ip);
      try {
        return await link.authenticate(token);
      } catch (e) {
        if (!(e instanceof AuthError)) throw e;
        throw new ProblemError(
          e.status === 401 ? "invalid_token" : e.status === 403 ? "forbidden" : "unavailable",
          e.message,
        );
      }
    },
  };
  if (o.webLogin) {
    const w = o.webLogin;
    try {
      troop.sp = new SpLogin({
        clientId: o.clientId,
        origin: w.publicUrl ?? http.url,
        home: "/status",
        service: "apes troop",
        // Only people of the troop's own IdP: the status page shows what that IdP's tokens command.
        idps: [o.idp],
        cookieName: "apes-troop",
        sessionTtlS: 3600,
        ...(w.dnsServers ? { dnsServers: w.dnsServers } : {}),
        ...(w.dohUrl ? { dohUrl: w.dohUrl } : {}),
        allowLoopbackHttp: w.allowLoopbackHttp === true,
        log: (level, msg, fields) => o.log.log(level, msg, fields ?? {}),
      });
    } catch (e) {
      await http.close();
      await release();
      throw e;
    }
  }
  hub = new Hub(troop);
  const h = hub;
  http.onUpgrade((req, socket, head) => h.upgrade(req, socket, head));
  http.onClose(() => h.close());
  http.serve(
    pipeline<Actor>({
      router: troopRoutes(troop),
      log: o.log,
      base: http.url,
      shutdown: http.shutdown,
      authenticate: (call) => troop.authenticate(call),
      who: (a): Record<string, string> =>
        a.actingFor ? { sub: a.actingFor, act_sub: a.holder } : { sub: a.holder },
    }),
  );
  o.log.always("info", "listening", {
    url: http.url,
    idp: o.idp,
    client_id: o.clientId,
    data: o.dataDir,
    ...(troop.sp ? { redirect_uri: troop.sp.redirectUri } : {}),
  });
  let closing: Promise<void> | undefined;
  return {
    url: http.url,
    close: () =>
      (closing ??= (async () => {
        await http.close();
        await release();
      })()),
  };
}
