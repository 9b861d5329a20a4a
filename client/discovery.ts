import { isLoopbackHost } from "../protocol/ddisa.ts";
import { visible } from "../protocol/display.ts";
import type { Discovery } from "../protocol/types.ts";
import type { ClientContext } from "./context.ts";
import { ClientError } from "./errors.ts";
import { request, serviceName } from "./http.ts";

/**
 * The IdP's discovery document (`{idp}/.well-known/openid-configuration`) and the endpoints apes
 * uses, read from it and never hard-coded: both endpoint name families (ddisa_auth_* and the older
 * ddisa_agent_*) are understood. Cached in memory per process and on disk (cacheDir/discovery/) for
 * DISCOVERY_TTL_S, so a command pays the round trip at most every few minutes.
 *
 * Every endpoint must be on the IdP's own origin (or one listed in `idp_endpoint_origins`): a
 * discovery document cannot send the session token, challenges or grants to another host.
 */

export const DISCOVERY_TTL_S = 300;

export interface IdpEndpoints {
  /** The IdP base URL as configured (no trailing slash). */
  idp: string;
  issuer: string;
  jwksUri?: string;
  tokenEndpoint?: string;
  /** OAuth for humans in a browser (`apes login` without a key): authorization code, device code, revocation. */
  authorizationEndpoint?: string;
  deviceAuthorizationEndpoint?: string;
  revocationEndpoint?: string;
  challengeEndpoint?: string;
  authenticateEndpoint?: string;
  /** Which name family advertised the challenge endpoint: "auth" takes `{id}`, "agent" `{agent_id}`. */
  challengeFamily: "auth" | "agent";
  grantsEndpoint?: string;
  delegationsEndpoint?: string;
  /** Advertised agents endpoint, else `{idp}/api/agents`. */
  agentsEndpoint: string;
  authMethods: string[];
  grantTypes: string[];
  document: Discovery;
}

/** Validates and normalises an IdP URL given by the user, config or DNS. */
export function normalizeIdpUrl(raw: string): string {
  let u: URL;
  try {
    u = new URL(raw.trim());
  } catch {
    throw new ClientError("idp_url_invalid", `"${raw}" is not a URL`, { raw, problem: "not_url" });
  }
  // Plain http would send keys' challenges and tokens in the clear: loopback only (tests, one-machine setups).
  if (u.protocol !== "https:" && !(u.protocol === "http:" && isLoopbackHost(u.hostname))) {
    throw new ClientError(
      "idp_url_invalid",
      `the IdP URL must be https:// (plain http only on a loopback address), got ${raw}`,
      { raw, problem: "scheme" },
    );
  }
  if (u.username || u.password) {
    throw new ClientError("idp_url_invalid", "the IdP URL must not contain credentials", {
      raw,
      problem: "credentials",
    });
  }
  if (u.search || u.hash) {
    throw new ClientError("idp_url_invalid", "the IdP URL must not have a query or fragment", {
      raw,
      problem: "query",
    });
  }
  return `${u.origin}${u.pathname.replace(/\/+$/, "")}`;
}

const memory = new Map<string, Promise<IdpEndpoints>>();

export async function idpEndpoints(
  ctx: ClientContext,
  idp: string,
  options: { refresh?: boolean } = {},
): Promise<IdpEndpoints> {
  const base = normalizeIdpUrl(idp);
  const key = `${ctx.paths.cacheDir}\n${base}`;
  if (!options.refresh) {
    const hit = memory.get(key);
    if (hit) return hit;
  }
  const p = loadEndpoints(ctx, base, options.refresh === true);
  memory.set(key, p);
  p.catch(() => memory.delete(key));
  return p;
}

/** Forget cached discovery (tests, or after an endpoint answered 404). */
export function clearDiscoveryMemory(): void {
  memory.clear();
}

async function loadEndpoints(ctx: ClientContext, base: string, refresh: boolean): Promise<IdpEndpoints> {
  const file = await cacheFile(ctx, base);
  const nowS = Math.floor(ctx.clock.now() / 1000);
  const trusted = (await ctx.config()).idpEndpointOrigins;
  if (!refresh) {
    const cached = await readCache(file, nowS);
    if (cached) {
      ctx.debug(`discovery: ${base} (cached)`);
      return endpointsFrom(base, cached, trusted);
    }
  }
  const url = `${base}/.well-known/openid-configuration`;
  const res = await request<unknown>(ctx, { url });
  const doc = res.body;
  if (!doc || typeof doc !== "object" || typeof (doc as Discovery).issuer !== "string") {
    throw new ClientError(
      "discovery_invalid",
      `${serviceName(url)} has no valid discovery document at ${url}`,
      { url },
    );
  }
  const endpoints = endpointsFrom(base, doc as Discovery, trusted);
  await writeCache(file, { fetched_at: nowS, document: doc }).catch(() => undefined);
  ctx.debug(`discovery: ${base} issuer=${endpoints.issuer} challenge=${endpoints.challengeEndpoint ?? "-"}`);
  return endpoints;
}

/**
 * Why `endpoint` (advertised as `field`) must not be used, or undefined when it may: it must be an
 * http(s) URL without credentials on `base`'s origin or one of `trusted`, and https unless loopback.
 */
export function endpointRefusal(
  base: string,
  endpoint: string,
  trusted: readonly string[] = [],
): string | undefined {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    return "is not a URL";
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") return "is not an http(s) URL";
  if (u.username || u.password) return "contains credentials";
  if (u.origin !== new URL(base).origin && !trusted.includes(u.origin)) {
    return `is not on the IdP's origin ${new URL(base).origin}`;
  }
  if (u.protocol === "http:" && !isLoopbackHost(u.hostname)) return "uses plain http to a non-loopback host";
  return undefined;
}

export function endpointsFrom(base: string, doc: Discovery, trusted: readonly string[] = []): IdpEndpoints {
  const str = (v: unknown) => (typeof v === "string" && v.length > 0 ? v : undefined);
  const checked = (field: string, v: string): string => {
    const why = endpointRefusal(base, v, trusted);
    if (why === undefined) return v;
    throw new ClientError(
      "endpoint_refused",
      `the IdP at ${base} advertises ${field} = ${visible(v, { max: 200 })}, which ${why}: refused`,
      { idp: base, field, why },
    );
  };
  const fields = doc as unknown as Record<string, unknown>;
  const endpoint = (field: string): string | undefined => {
    const v = str(fields[field]);
    return v === undefined ? undefined : checked(field, v);
  };
  const authChallenge = endpoint("ddisa_auth_challenge_endpoint");
  const agentChallenge = endpoint("ddisa_agent_challenge_endpoint");
  return {
    idp: base,
    issuer: doc.issuer,
    jwksUri: endpoint("jwks_uri"),
    tokenEndpoint: endpoint("token_endpoint"),
    authorizationEndpoint: endpoint("authorization_endpoint"),
    deviceAuthorizationEndpoint: endpoint("device_authorization_endpoint"),
    revocationEndpoint: endpoint("revocation_endpoint"),
    challengeEndpoint: authChallenge ?? agentChallenge,
    authenticateEndpoint:
      endpoint("ddisa_auth_authenticate_endpoint") ?? endpoint("ddisa_agent_authenticate_endpoint"),
    challengeFamily: authChallenge ? "auth" : "agent",
    grantsEndpoint: endpoint("openape_grants_endpoint"),
    delegationsEndpoint: endpoint("openape_delegations_endpoint"),
    agentsEndpoint:
      endpoint("openape_agents_endpoint") ?? endpoint("apes_agents_endpoint") ?? `${base}/api/agents`,
    authMethods: Array.isArray(doc.ddisa_auth_methods_supported) ? doc.ddisa_auth_methods_supported : [],
    grantTypes: Array.isArray(doc.openape_grant_types_supported) ? doc.openape_grant_types_supported : [],
    document: doc,
  };
}

/** The endpoint or a clear error naming the discovery field the IdP does not advertise. */
export function requireEndpoint(e: IdpEndpoints, value: string | undefined, field: string): string {
  if (value) return value;
  throw new ClientError(
    "endpoint_missing",
    `the IdP at ${e.idp} does not advertise ${field} in its discovery document`,
    { idp: e.idp, field },
  );
}

async function cacheFile(ctx: ClientContext, base: string): Promise<string> {
  const { createHash } = await import("node:crypto");
  const { join } = await import("node:path");
  const name = createHash("sha256").update(base).digest("hex").slice(0, 32);
  return join(ctx.paths.cacheDir, "discovery", `${name}.json`);
}

async function readCache(file: string, nowS: number): Promise<Discovery | undefined> {
  const { readFile } = await import("node:fs/promises");
  try {
    const entry = JSON.parse(await readFile(file, "utf8")) as { fetched_at?: unknown; document?: unknown };
    if (typeof entry.fetched_at !== "number" || !entry.document || typeof entry.document !== "object")
      return undefined;
    // A clock that went backwards also invalidates the entry.
    if (entry.fetched_at > nowS || nowS - entry.fetched_at >= DISCOVERY_TTL_S) return undefined;
    const doc = entry.document as Discovery;
    return typeof doc.issuer === "string" ? doc : undefined;
  } catch {
    return undefined;
  }
}

async function writeCache(file: string, entry: unknown): Promise<void> {
  const { mkdir, writeFile, rename } = await import("node:fs/promises");
  const { dirname } = await import("node:path");
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  await writeFile(tmp, JSON.stringify(entry), { mode: 0o600 });
  await rename(tmp, file);
}
