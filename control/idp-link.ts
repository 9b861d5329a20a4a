import { fetchJson } from "../protocol/http.ts";
import { type GetJson, JwksCache } from "../protocol/jwks.ts";
import { JwtError } from "../protocol/jwt.ts";
import { BearerVerifier } from "../server/bearer.ts";
import type { Logger } from "../server/log.ts";
import { type Actor, actorOf, revokedBy } from "./actors.ts";

/**
 * What the troop knows from its IdP: the keys its tokens are checked with (protocol/jwks.ts, by kid,
 * EdDSA pinned; iss = the IdP, aud = the troop's client id, exp), and the revocation feed
 * (docs/control-plane.md, "Revocations"), followed by one long poll: an event names an opaque
 * handle, and every token listing that handle in its `rev` claim and issued at or before the event
 * is refused from then on (live sockets holding one are closed by the hub).
 */

export const REVOCATIONS_ENDPOINT = "openape_revocations_endpoint";
const FEED_WAIT_S = 25;
/** Without a successful feed read for this long, new authentications are refused (fail closed). */
export const FEED_STALE_S = 60;

export class AuthError extends Error {
  /** 401: the token itself is bad; 403: a good token of an actor the troop refuses; 503: cannot check now. */
  readonly status: 401 | 403 | 503;
  constructor(status: 401 | 403 | 503, message: string) {
    super(message);
    this.name = "AuthError";
    this.status = status;
  }
}

export interface IdpLinkOptions {
  issuer: string;
  audience: string;
  /** Extra trust anchor (PEM) for an https IdP with a private CA. */
  ca?: string;
  /** Leeway on exp/iat (default protocol/jwt.ts CLOCK_SKEW_S). */
  leeway?: number;
  log: Logger;
  now(): number;
}

export class IdpLink {
  private readonly o: IdpLinkOptions;
  private readonly jwks: JwksCache;
  private readonly getJson: GetJson;
  private readonly bearer: BearerVerifier;
  /** handle -> time (Unix s) of its newest revocation event. */
  private readonly revoked = new Map<string, number>();
  private after = 0;
  private feedUrl: string | undefined;
  private lastFeedOk = 0;
  private readonly stop = new AbortController();
  private listeners: ((handle: string, at: number) => void)[] = [];
  /** The IdP's trust (--idp-ca beside the system roots), for every request to it: JWKS and feed. */
  private readonly ca: string[] | undefined;

  constructor(o: IdpLinkOptions) {
    this.o = o;
    const ca = o.ca ? [...process.getBuiltinModule("node:tls").rootCertificates, o.ca] : undefined;
    this.ca = ca;
    this.getJson = (url) =>
      fetchJson(url, {
        timeoutMs: 5000,
        maxBytes: 1024 * 1024,
        plainHttp: "loopback",
        headers: { accept: "application/json" },
        ...(ca ? { ca } : {}),
      });
    this.jwks = new JwksCache({
      getJson: this.getJson,
      anchor: o.ca ? "private-ca" : "system",
      endpoints: [REVOCATIONS_ENDPOINT],
    });
    this.bearer = new BearerVerifier({
      keyFor: async (kid, now) => (await this.jwks.lookup(o.issuer, kid, now)).key,
      now: o.now,
      // Tokens come from the IdP's clock: the default leeway of protocol/jwt.ts.
      claims: {
        issuer: o.issuer,
        audience: o.audience,
        ...(o.leeway !== undefined ? { leeway: o.leeway } : {}),
      },
    });
  }

  /** Called for every revocation event (the hub closes sockets holding the handle). */
  onRevoked(listener: (handle: string, at: number) => void): void {
    this.listeners.push(listener);
  }

  /** Whether a token with these handles, issued at `iat`, has been revoked since. */
  isRevoked(rev: readonly string[], iat: number): boolean {
    return revokedBy(this.revoked, rev, iat);
  }

  /** True when the token was verified before (no signature check needed). */
  verified(token: string): boolean {
    return this.bearer.verified(token);
  }

  /** Verifies a bearer token and names its actor; throws AuthError. */
  async authenticate(token: string): Promise<Actor> {
    let claims: Record<string, unknown>;
    try {
      claims = await this.bearer.claims(token);
    } catch (e) {
      if (e instanceof JwtError) throw new AuthError(401, `invalid token: ${e.message}`);
      throw new AuthError(503, "the IdP's keys cannot be fetched now");
    }
    const r = actorOf(claims);
    if (!r.ok) throw new AuthError(403, r.reason);
    if (this.o.now() - this.lastFeedOk > FEED_STALE_S)
      throw new AuthError(503, "the IdP's revocation feed is not reachable; retry later");
    if (this.isRevoked(r.actor.rev, r.actor.iat))
      throw new AuthError(401, "the token was revoked at the IdP");
    return r.actor;
  }

  /** Reads the whole retained feed (so tokens revoked before this start are refused), then follows it. */
  async start(): Promise<void> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        while (await this.readFeed(0)) {
          // drain the retained events page by page
        }
        break;
      } catch (e) {
        if (Date.now() > deadline)
          throw new Error(`cannot read the IdP's revocation feed: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    void this.follow();
  }

  close(): void {
    this.stop.abort();
  }

  private async follow(): Promise<void> {
    while (!this.stop.signal.aborted) {
      try {
        await this.readFeed(FEED_WAIT_S);
      } catch (e) {
        if (this.stop.signal.aborted) return;
        this.o.log.log("warn", "revocation feed read failed; retrying", { error: (e as Error).message });
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** One read of the feed after the last seen event; true when a full page came (read again at once). */
  private async readFeed(waitS: number): Promise<boolean> {
    // From discovery, checked to be on the issuer's origin (protocol/jwks.ts); looked up once.
    this.feedUrl ??= (await this.jwks.lookup(this.o.issuer, "", this.o.now())).meta.endpoints[
      REVOCATIONS_ENDPOINT
    ]!;
    const endpoint = this.feedUrl;
    const answer = await fetchJson(`${endpoint}?after=${this.after}&limit=1000`, {
      timeoutMs: (waitS + 10) * 1000,
      maxBytes: 1024 * 1024,
      plainHttp: "loopback",
      signal: this.stop.signal,
      headers: { accept: "application/json", ...(waitS > 0 ? { prefer: `wait=${waitS}` } : {}) },
      ...(this.ca ? { ca: this.ca } : {}),
    });
    const body = answer.body as { events?: unknown; next?: unknown } | undefined;
    if (answer.status !== 200 || !body || !Array.isArray(body.events) || typeof body.next !== "number") {
      throw new Error(`GET ${endpoint} answered ${answer.status}`);
    }
    for (const e of body.events as { seq?: unknown; handle?: unknown; at?: unknown }[]) {
      if (typeof e?.handle !== "string" || typeof e.at !== "number" || typeof e.seq !== "number") continue;
      this.revoked.set(e.handle, Math.max(e.at, this.revoked.get(e.handle) ?? -1));
      this.after = Math.max(this.after, e.seq);
      for (const l of this.listeners) l(e.handle, e.at);
    }
    this.after = Math.max(this.after, body.next);
    this.lastFeedOk = this.o.now();
    this.prune();
    return body.events.length >= 1000;
  }

  /** Events older than any token the troop could still accept are forgotten (a day, as the IdP keeps them). */
  private prune(): void {
    if (this.revoked.size < 100_000) return;
    const horizon = this.o.now() - 86_400;
    for (const [h, at] of this.revoked) if (at < horizon) this.revoked.delete(h);
  }
}
