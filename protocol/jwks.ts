import type { KeyObject } from "node:crypto";
import { publicKeyFromJwk } from "./jwt.ts";

/**
 * An issuer's signing keys, found through its discovery document and cached, for anyone who checks
 * the IdP's JWTs from outside (the elevation verifier, target services, the CLI). The HTTP GET is
 * injected (each caller bounds it in size and time its own way), and so is the store (memory, or a
 * file cache).
 *
 * Rules: the discovery document must name the issuer it was fetched from; `jwks_uri` and every
 * endpoint asked for must be on the issuer's origin (a discovery document cannot send a verifier, or
 * a token, anywhere else); keys are Ed25519 only. Keys are reused for `ttlS`; a kid that is not
 * among them causes one refetch at once (the IdP may have rotated), but a token with made-up kids
 * causes at most one fetch every `refetchMinS`. Entries are keyed by trust anchor and issuer: keys
 * fetched under one anchor (a pinned CA, the system roots) are never used under another.
 */

export interface JsonResponse {
  status: number;
  body: unknown;
}
export type GetJson = (url: string) => Promise<JsonResponse>;

export interface IssuerKeys {
  issuer: string;
  /** What the connection was trusted by when these were fetched (e.g. "system" or a CA fingerprint). */
  anchor: string;
  jwksUri: string;
  /** The discovery endpoints asked for, by their discovery names, each on the issuer's origin. */
  endpoints: Record<string, string>;
  /** The JWKS entries as published (only Ed25519 ones ever become keys). */
  keys: Record<string, unknown>[];
  fetchedAt: number;
  /** This fetch was caused by an unknown kid (limits the next one). */
  kidMiss?: boolean;
}

export interface KeyStore {
  get(cacheKey: string): IssuerKeys | undefined;
  set(cacheKey: string, value: IssuerKeys): void;
}

export class JwksError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "JwksError";
  }
}

export function memoryKeyStore(): KeyStore {
  const m = new Map<string, IssuerKeys>();
  return { get: (k) => m.get(k), set: (k, v) => void m.set(k, v) };
}

/** `https://id.example.com/` and `https://id.example.com` are one issuer. */
export function normalizeIssuer(issuer: string): string {
  return issuer.replace(/\/+$/, "");
}

function onOrigin(origin: string, name: string, value: unknown): string {
  if (typeof value !== "string") throw new JwksError(`the discovery document has no ${name}`);
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new JwksError(`${name} is not a URL`);
  }
  if (u.origin !== origin) throw new JwksError(`${name} ${value} is not on the issuer's origin ${origin}`);
  return value.replace(/\/+$/, "");
}

async function getObject(getJson: GetJson, url: string): Promise<Record<string, unknown>> {
  const res = await getJson(url);
  if (res.status !== 200 || !res.body || typeof res.body !== "object" || Array.isArray(res.body))
    throw new JwksError(`GET ${url} answered ${res.status}`);
  return res.body as Record<string, unknown>;
}

/** Discovery, then the JWKS, with the origin rules above. */
export async function fetchIssuerKeys(
  getJson: GetJson,
  issuer: string,
  anchor: string,
  nowS: number,
  endpointNames: readonly string[] = [],
): Promise<IssuerKeys> {
  const iss = normalizeIssuer(issuer);
  const origin = new URL(iss).origin;
  const doc = await getObject(getJson, `${iss}/.well-known/openid-configuration`);
  if (typeof doc.issuer !== "string" || normalizeIssuer(doc.issuer) !== iss)
    throw new JwksError(`the discovery document names issuer ${String(doc.issuer)}, expected ${iss}`);
  const jwksUri = onOrigin(origin, "jwks_uri", doc.jwks_uri);
  const endpoints: Record<string, string> = {};
  for (const name of endpointNames) endpoints[name] = onOrigin(origin, name, doc[name]);
  const jwks = await getObject(getJson, jwksUri);
  if (!Array.isArray(jwks.keys)) throw new JwksError(`${jwksUri} has no keys array`);
  const keys = jwks.keys.filter(
    (k): k is Record<string, unknown> => !!k && typeof k === "object" && !Array.isArray(k),
  );
  return { issuer: iss, anchor, jwksUri, endpoints, keys, fetchedAt: nowS };
}

/** A stored entry is used only when it is what a fresh fetch under the same anchor could give. */
function usable(
  m: IssuerKeys | undefined,
  issuer: string,
  anchor: string,
  names: readonly string[],
): boolean {
  if (!m || m.issuer !== issuer || m.anchor !== anchor || typeof m.fetchedAt !== "number") return false;
  if (
    !Array.isArray(m.keys) ||
    typeof m.jwksUri !== "string" ||
    !m.endpoints ||
    typeof m.endpoints !== "object"
  )
    return false;
  try {
    const origin = new URL(issuer).origin;
    if (new URL(m.jwksUri).origin !== origin) return false;
    return names.every(
      (n) => typeof m.endpoints[n] === "string" && new URL(m.endpoints[n]!).origin === origin,
    );
  } catch {
    return false;
  }
}

export interface JwksCacheOptions {
  getJson: GetJson;
  store?: KeyStore;
  /** Trust anchor of the connections getJson makes (part of the cache key). */
  anchor?: string;
  /** Discovery endpoints to take along (checked to be on the issuer's origin). */
  endpoints?: readonly string[];
  ttlS?: number;
  refetchMinS?: number;
}

export const JWKS_TTL_S = 300;
export const JWKS_REFETCH_MIN_S = 10;

export class JwksCache {
  readonly #o: Required<JwksCacheOptions>;
  constructor(options: JwksCacheOptions) {
    this.#o = {
      store: memoryKeyStore(),
      anchor: "system",
      endpoints: [],
      ttlS: JWKS_TTL_S,
      refetchMinS: JWKS_REFETCH_MIN_S,
      ...options,
    };
  }

  /** The issuer's metadata and the key for `kid` (undefined when the issuer has no such Ed25519 key). */
  async lookup(issuer: string, kid: string, nowS: number): Promise<{ meta: IssuerKeys; key?: KeyObject }> {
    const o = this.#o;
    const iss = normalizeIssuer(issuer);
    const cacheKey = jwksCacheKey(o.anchor, iss);
    const cached = o.store.get(cacheKey);
    let kidMiss = false;
    if (
      usable(cached, iss, o.anchor, o.endpoints) &&
      cached!.fetchedAt <= nowS &&
      nowS - cached!.fetchedAt < o.ttlS
    ) {
      const key = keyIn(cached!, kid);
      if (key) return { meta: cached!, key };
      // Unknown kid: refetch at once, unless these keys come from such a refetch a moment ago.
      if (cached!.kidMiss && nowS - cached!.fetchedAt < o.refetchMinS) return { meta: cached! };
      kidMiss = true;
    }
    const fresh = await fetchIssuerKeys(o.getJson, iss, o.anchor, nowS, o.endpoints);
    const meta = kidMiss ? { ...fresh, kidMiss } : fresh;
    o.store.set(cacheKey, meta);
    return { meta, key: keyIn(meta, kid) };
  }
}

/** The store key of an issuer's keys as seen through one trust anchor (JwksCacheOptions.anchor). */
export function jwksCacheKey(anchor: string, issuer: string): string {
  return `${anchor}\n${normalizeIssuer(issuer)}`;
}

function keyIn(meta: IssuerKeys, kid: string): KeyObject | undefined {
  const jwk = meta.keys.find((k) => k.kid === kid);
  return jwk ? publicKeyFromJwk(jwk) : undefined;
}
