import { createHash, type KeyObject, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";
import { type DdisaMode, type DdisaRecord, emailDomain, isLoopbackHost } from "../protocol/ddisa.ts";
import { visible } from "../protocol/display.ts";
import { fetchJson } from "../protocol/http.ts";
import {
  fetchIssuerKeys,
  type GetJson,
  type IssuerKeys,
  JwksCache,
  normalizeIssuer,
} from "../protocol/jwks.ts";
import { canonicalIdentity } from "../protocol/names.ts";
import { ProblemError } from "../protocol/problem.ts";
import { DdisaCache, DnsUnavailableError, resolveDdisa } from "../protocol/resolver.ts";
import { Bytes, type Reply, readBody, send } from "../server/http.ts";
import { RateLimits } from "../server/rate-limit.ts";
import { type Asset, Assets } from "../server/web/assets.ts";
import { parseCookies, serializeCookie } from "../server/web/cookies.ts";
import { CSRF_FIELD, csrfProblem, csrfToken } from "../server/web/csrf.ts";
import { type Html, htmlReply } from "../server/web/html.ts";
import { type Allowlists, admit, type Role } from "./admission.ts";
import { type Act, type AssertionReason, assertionKid, checkAssertion } from "./assertion.ts";
import { continuePage, errorPage, loginPage, type PageContext } from "./pages.ts";

/**
 * DDISA login for any web service (docs/sp-login.md): the service is an SP, a registered OAuth
 * client of whatever IdP a person's email domain names in DNS. The flow:
 *
 *   GET  {base}/login            the "enter your email" page
 *   POST {base}/login            email -> domain -> `_ddisa` TXT (protocol/resolver.ts) -> the record's
 *                                mode and this SP's lists -> the IdP's discovery (its issuer must be the
 *                                record's idp) -> a login transaction (state, nonce, PKCE verifier,
 *                                kept here, single use, 10 min) bound to this browser by the cookie ->
 *                                a page that continues to /authorize (S256, state, nonce, login_hint)
 *   GET  {base}/callback         state checked against this browser's transaction (spent on first use)
 *                                -> the code exchanged at the token endpoint with the verifier ->
 *                                the assertion's checks (assertion.ts) -> the mode again, for the
 *                                verified identity -> the SP's own session -> 303 to the home path
 *   POST {base}/logout           CSRF-checked; ends the session
 *
 * One cookie, `__Host-<name>`, HttpOnly, Secure, SameSite=Lax (the IdP's redirect back is a
 * cross-site navigation: a Strict cookie would not come along), holds either the transaction's or
 * the session's random id; both records live in this process's memory, bounded. No token is ever in
 * a URL except the one-time code the IdP sends back; the only redirects go to this SP's own paths
 * and to the authorization endpoint of the discovered IdP's discovery document (on its origin).
 */

export interface SpConfig {
  /** This SP's client id at the IdPs (`apes idp clients add <id> --redirect-uri <origin><base>/callback`). */
  clientId: string;
  /** The service's public origin, e.g. `https://app.example.com` (http only for a loopback host). */
  origin: string;
  /** Path prefix of the SP's routes (default `/auth`). */
  base?: string;
  /** Where a signed-in person lands (default `/`). */
  home?: string;
  /** Shown on the pages. */
  service?: string;
  /** This SP's admins and users, for the `allowlist-admin` / `allowlist-user` modes (admission.ts). */
  admins?: readonly string[];
  users?: readonly string[];
  /** When set, only these IdPs (issuer URLs) are followed, whatever DNS says. */
  idps?: readonly string[];
  /** DNS servers (`host[:port]` IP literals; default the system's) and a DoH fallback URL. */
  dnsServers?: readonly string[];
  dohUrl?: string;
  /** Accept `http://` IdPs on a loopback host (tests, single-machine setups). */
  allowLoopbackHttp?: boolean;
  /** Actors signed in (default human and agent). */
  acts?: readonly Act[];
  /** Seconds a session lasts (default 8 h). */
  sessionTtlS?: number;
  /** Cookie name after `__Host-` (default `sp`); distinct per service on one host (cookies ignore ports). */
  cookieName?: string;
  /** Email form posts per client address: "N/PERIOD" or "off" (default 30/1m). */
  loginRateLimit?: string;
  /** Log lines (no token or code ever reaches this). */
  log?: (level: "info" | "warn", msg: string, fields?: Record<string, unknown>) => void;
}

/** What the SP's handlers need of a request (a subset of server/http.ts Call). */
export interface SpCall {
  method: string;
  path: string;
  query: URLSearchParams;
  req: IncomingMessage;
  ip: string;
}

export interface SpSession {
  id: string;
  email: string;
  act: Act;
  role: Role;
  /** The IdP that signed the person in. */
  issuer: string;
  /** Unix seconds. */
  createdAt: number;
  expiresAt: number;
}

/** Effects, injectable for unit tests; defaults are the real DNS, HTTP and clock. */
export interface SpDeps {
  resolve?: (domain: string) => Promise<{ selected?: DdisaRecord }>;
  getJson?: GetJson;
  postForm?: (url: string, form: URLSearchParams) => Promise<{ status: number; body: unknown }>;
  /** Milliseconds. */
  now?: () => number;
}

interface Transaction {
  state: string;
  nonce: string;
  verifier: string;
  issuer: string;
  tokenEndpoint: string;
  domain: string;
  mode: DdisaMode | undefined;
  expiresAt: number;
}

export const TRANSACTION_TTL_S = 600;
export const MAX_TRANSACTIONS = 10_000;
export const MAX_SESSIONS = 100_000;
const DEFAULT_SESSION_TTL_S = 8 * 3600;
const DISCOVERY_TTL_S = 300;
const HTTP_TIMEOUT_MS = 5000;
const MAX_CODE_LENGTH = 512;
const CLIENT_ID = /^[A-Za-z0-9._~-]{1,128}$/;
const COOKIE_NAME = /^[A-Za-z0-9_-]{1,32}$/;
const PATH = /^(\/[A-Za-z0-9._~-]+)*\/?$/;
const ENDPOINTS = ["authorization_endpoint", "token_endpoint"] as const;

/** The checks' reasons as a person reads them (the detail goes to the log). */
const REFUSALS: Record<AssertionReason, string> = {
  malformed: "its answer was not a valid assertion",
  alg: "its assertion is not signed with EdDSA",
  unknown_kid: "its assertion is signed with a key it does not publish",
  signature: "its assertion's signature is invalid",
  expired: "its assertion has expired",
  not_yet_valid: "its assertion is not valid yet (check the clocks)",
  issuer: "its assertion names another issuer",
  audience: "its assertion is for another service",
  nonce: "its assertion belongs to another sign-in",
  lifetime: "its assertion lives too long",
  act_missing: "its assertion names no actor",
  act_unknown: "its assertion names an actor this service does not sign in",
  sub: "its assertion names no valid identity",
  domain: "it asserted an identity of a domain that does not name it",
};

const randomId = () => randomBytes(32).toString("base64url");
const sameText = (a: string, b: string) => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

export class SpLogin {
  readonly clientId: string;
  readonly origin: string;
  readonly base: string;
  readonly home: string;
  readonly redirectUri: string;
  readonly cookie: string;
  private readonly c: SpConfig;
  private readonly lists: Allowlists;
  private readonly idps: ReadonlySet<string> | undefined;
  private readonly sessionTtlS: number;
  private readonly secret = randomBytes(32);
  private readonly transactions = new Map<string, Transaction>();
  private readonly sessions = new Map<string, SpSession>();
  private readonly discovered = new Map<string, IssuerKeys>();
  private readonly jwks: JwksCache;
  private readonly limits: RateLimits<"login">;
  private readonly assets = Assets.of("sp", new URL("./web/assets/", import.meta.url));
  private readonly resolve: NonNullable<SpDeps["resolve"]>;
  private readonly getJson: GetJson;
  private readonly postForm: NonNullable<SpDeps["postForm"]>;
  private readonly nowMs: () => number;
  private readonly page: PageContext;

  constructor(config: SpConfig, deps: SpDeps = {}) {
    this.c = config;
    if (!CLIENT_ID.test(config.clientId)) throw new Error("clientId: 1-128 of A-Z a-z 0-9 . _ ~ -");
    const origin = new URL(config.origin);
    if (origin.origin !== config.origin.replace(/\/+$/, ""))
      throw new Error("origin: scheme, host and port only (e.g. https://app.example.com)");
    if (origin.protocol !== "https:" && !(origin.protocol === "http:" && isLoopbackHost(origin.hostname)))
      throw new Error("origin: https (plain http only on a loopback host)");
    this.clientId = config.clientId;
    this.origin = origin.origin;
    this.base = (config.base ?? "/auth").replace(/\/+$/, "");
    this.home = config.home ?? "/";
    if (!PATH.test(this.base) || this.base === "" || !PATH.test(this.home))
      throw new Error("base and home: plain absolute paths");
    this.redirectUri = `${this.origin}${this.base}/callback`;
    const name = config.cookieName ?? "sp";
    if (!COOKIE_NAME.test(name)) throw new Error("cookieName: 1-32 of A-Z a-z 0-9 _ -");
    this.cookie = `__Host-${name}`;
    const canon = (list: readonly string[] | undefined, what: string) =>
      new Set(
        (list ?? []).map((e) => {
          const id = canonicalIdentity(e);
          if (!id) throw new Error(`${what}: "${visible(e)}" is not an identity`);
          return id;
        }),
      );
    this.lists = { admins: canon(config.admins, "admins"), users: canon(config.users, "users") };
    this.idps = config.idps ? new Set(config.idps.map(normalizeIssuer)) : undefined;
    this.sessionTtlS = config.sessionTtlS ?? DEFAULT_SESSION_TTL_S;
    this.limits = new RateLimits({ login: config.loginRateLimit ?? "30/1m" });
    this.nowMs = deps.now ?? Date.now;
    const plainHttp = config.allowLoopbackHttp ? ("loopback" as const) : ("never" as const);
    const http = { timeoutMs: HTTP_TIMEOUT_MS, maxBytes: 1024 * 1024, plainHttp };
    this.getJson =
      deps.getJson ?? ((url) => fetchJson(url, { ...http, headers: { accept: "application/json" } }));
    this.postForm =
      deps.postForm ??
      ((url, form) =>
        fetchJson(url, {
          ...http,
          method: "POST",
          body: form.toString(),
          headers: { accept: "application/json", "content-type": "application/x-www-form-urlencoded" },
        }));
    const dns = new DdisaCache({ now: () => this.nowMs() });
    this.resolve =
      deps.resolve ??
      (async (domain) =>
        (
          await resolveDdisa(domain, {
            ...(config.dnsServers ? { servers: config.dnsServers } : {}),
            ...(config.dohUrl ? { dohUrl: config.dohUrl } : {}),
            allowLoopbackHttp: config.allowLoopbackHttp === true,
            timeoutMs: 3000,
            cache: dns,
          })
        ).selection);
    this.jwks = new JwksCache({ getJson: this.getJson, endpoints: [...ENDPOINTS] });
    this.page = { service: config.service ?? "Sign in", css: `${this.base}/sp.css` };
  }

  /** Whether the path is one of the SP's routes (the caller sends those to `handle`). */
  handles(path: string): boolean {
    return path.startsWith(`${this.base}/`);
  }

  /** The signed-in person of a request, if any. */
  session(headers: IncomingHttpHeaders): SpSession | undefined {
    const id = this.cookieId(headers, "s");
    if (id === undefined) return undefined;
    const s = this.sessions.get(id);
    if (!s) return undefined;
    if (s.expiresAt <= this.nowS()) {
      this.sessions.delete(id);
      return undefined;
    }
    return s;
  }

  /** The CSRF token of the session's forms (pages.ts logoutForm). */
  csrf(session: SpSession): string {
    return csrfToken(this.secret, session.id);
  }

  get logoutPath(): string {
    return `${this.base}/logout`;
  }

  get cssPath(): string {
    return `${this.base}/sp.css`;
  }

  get loginPath(): string {
    return `${this.base}/login`;
  }

  /** The answer for one of the SP's routes; every failure is a page (never a bare problem). */
  async handle(call: SpCall): Promise<Reply> {
    try {
      const sub = call.path.slice(this.base.length);
      if (sub === "/login" && (call.method === "GET" || call.method === "HEAD")) {
        // Signed in already: on to the service (its own path: never a redirect anywhere else).
        if (this.session(call.req.headers)) return { status: 303, headers: { location: this.home } };
        return this.reply(200, loginPage(this.page, this.loginPath));
      }
      if (sub === "/login" && call.method === "POST") return await this.start(call);
      // GET only: a HEAD (a prefetcher's) must not spend the sign-in.
      if (sub === "/callback" && call.method === "GET") return await this.callback(call);
      if (sub === "/logout" && call.method === "POST") return await this.logout(call);
      if (sub === "/sp.css" && (call.method === "GET" || call.method === "HEAD")) {
        return this.asset(this.assets.get("sp.css"));
      }
      return this.fail(404, "Not found", "There is no such page.");
    } catch (e) {
      if (e instanceof ProblemError) return this.fail(e.status, "Sign-in failed", e.message);
      this.c.log?.("warn", "sign-in error", { error: (e as Error).message });
      return this.fail(500, "Sign-in failed", "Something went wrong on our side. Try again.");
    }
  }

  // --- the email form ---

  private async start(call: SpCall): Promise<Reply> {
    // Same-origin posts only (no session yet, so no CSRF token): a foreign page cannot start
    // sign-ins in a visitor's browser.
    const site = call.req.headers["sec-fetch-site"];
    const from = call.req.headers.origin;
    if ((site !== undefined && site !== "same-origin") || (site === undefined && from !== this.origin))
      throw new ProblemError("forbidden", "The sign-in form must be sent from this site.");
    this.limits.take("login", call.ip);
    const form = new URLSearchParams((await readBody(call.req)).toString("utf8"));
    const typed = (form.get("email") ?? "").trim();
    const again = (status: number, error: string) =>
      this.reply(status, loginPage(this.page, this.loginPath, { email: typed, error }));
    const email = canonicalIdentity(typed);
    if (!email) return again(400, "Enter a valid email address.");
    const domain = emailDomain(email);
    let record: DdisaRecord | undefined;
    try {
      record = (await this.resolve(domain)).selected;
    } catch (e) {
      if (!(e instanceof DnsUnavailableError)) throw e;
      this.c.log?.("warn", "DDISA lookup failed", { domain, error: e.message });
      return again(503, `The identity provider of ${domain} could not be looked up right now. Try again.`);
    }
    if (!record) return again(403, `${domain} names no identity provider (no DDISA record).`);
    if (this.idps && !this.idps.has(normalizeIssuer(record.idp)))
      return again(403, `This service does not accept the identity provider of ${domain}.`);
    const pre = admit(record.mode, email, this.lists);
    if (!pre.ok) return again(403, this.refusal(pre.reason, domain));
    let meta: IssuerKeys;
    try {
      meta = await this.discover(record.idp);
    } catch (e) {
      this.c.log?.("warn", "IdP discovery failed", { idp: record.idp, error: (e as Error).message });
      return again(502, `The identity provider of ${domain} did not answer as one.`);
    }
    const tx: Transaction = {
      state: randomId(),
      nonce: randomId(),
      verifier: randomId(),
      issuer: meta.issuer,
      tokenEndpoint: meta.endpoints.token_endpoint!,
      domain,
      mode: record.mode,
      expiresAt: this.nowS() + TRANSACTION_TTL_S,
    };
    const txId = this.keepTransaction(tx);
    const url = new URL(meta.endpoints.authorization_endpoint!);
    url.search = new URLSearchParams({
      response_type: "code",
      client_id: this.clientId,
      redirect_uri: this.redirectUri,
      state: tx.state,
      nonce: tx.nonce,
      code_challenge: createHash("sha256").update(tx.verifier).digest("base64url"),
      code_challenge_method: "S256",
      login_hint: email,
    }).toString();
    return this.reply(200, continuePage(this.page, new URL(meta.issuer).origin, url.href), {
      "set-cookie": this.setCookie(`t.${txId}`, TRANSACTION_TTL_S),
    });
  }

  // --- back from the IdP ---

  private async callback(call: SpCall): Promise<Reply> {
    const txId = this.cookieId(call.req.headers, "t");
    const tx = txId === undefined ? undefined : this.transactions.get(txId);
    if (txId !== undefined) this.transactions.delete(txId); // single use, whatever follows
    // The cookie is cleared only when it held this transaction: a replayed link keeps a session.
    const clear: Record<string, string> = txId === undefined ? {} : { "set-cookie": this.setCookie("", 0) };
    const refuse = (status: number, title: string, detail: string) => this.fail(status, title, detail, clear);
    if (!tx || tx.expiresAt <= this.nowS())
      return refuse(
        400,
        "Sign-in expired",
        "This sign-in was already used, has expired, or was started in another browser.",
      );
    const q = call.query;
    const state = q.get("state");
    if (state === null || q.getAll("state").length !== 1 || !sameText(state, tx.state))
      return refuse(400, "Sign-in refused", "The answer does not belong to the sign-in started here.");
    const iss = q.get("iss");
    if (iss !== null && normalizeIssuer(iss) !== tx.issuer)
      return refuse(400, "Sign-in refused", "The answer names another identity provider.");
    const error = q.get("error");
    if (error !== null) {
      const why = q.get("error_description");
      return refuse(
        403,
        "Not signed in",
        // The IdP's words as sent, cut: the page shows them through visible() (pages.ts untrusted).
        `The identity provider did not sign you in (${error.slice(0, 60)}${why ? `: ${why.slice(0, 200)}` : ""}).`,
      );
    }
    const code = q.get("code");
    if (code === null || code.length > MAX_CODE_LENGTH || !/^[\x21-\x7e]+$/.test(code))
      return refuse(400, "Sign-in refused", "The identity provider's answer has no valid code.");

    const answer = await this.postForm(
      tx.tokenEndpoint,
      new URLSearchParams({
        grant_type: "authorization_code",
        code,
        code_verifier: tx.verifier,
        redirect_uri: this.redirectUri,
        client_id: this.clientId,
      }),
    ).catch((e: Error) => {
      this.c.log?.("warn", "token endpoint unreachable", { issuer: tx.issuer, error: e.message });
      return undefined;
    });
    if (!answer) return refuse(502, "Sign-in failed", "The identity provider could not be reached.");
    const body = (answer.body ?? {}) as Record<string, unknown>;
    if (answer.status !== 200) {
      const code = typeof body.error === "string" ? body.error.slice(0, 60) : `HTTP ${answer.status}`;
      return refuse(502, "Sign-in failed", `The identity provider refused the sign-in code (${code}).`);
    }
    const token = body.assertion ?? body.id_token;
    const kid = typeof token === "string" ? assertionKid(token) : undefined;
    const now = this.nowS();
    let key: KeyObject | undefined;
    try {
      key = kid === undefined ? undefined : (await this.jwks.lookup(tx.issuer, kid, now)).key;
    } catch (e) {
      this.c.log?.("warn", "IdP keys unavailable", { issuer: tx.issuer, error: (e as Error).message });
      return refuse(502, "Sign-in failed", "The identity provider's signing keys could not be fetched.");
    }
    const checked = checkAssertion(token, key, {
      issuer: tx.issuer,
      clientId: this.clientId,
      nonce: tx.nonce,
      domain: tx.domain,
      now,
      ...(this.c.acts ? { acts: this.c.acts } : {}),
    });
    if (!checked.ok) {
      this.c.log?.("warn", "assertion refused", {
        issuer: tx.issuer,
        reason: checked.reason,
        detail: checked.detail,
      });
      return refuse(
        401,
        "Sign-in refused",
        `The identity provider's answer was refused: ${REFUSALS[checked.reason]}.`,
      );
    }
    const admitted = admit(tx.mode, checked.sub, this.lists);
    if (!admitted.ok) return refuse(403, "Not permitted", this.refusal(admitted.reason, tx.domain));
    const session: SpSession = {
      id: randomId(),
      email: checked.sub,
      act: checked.act,
      role: admitted.role,
      issuer: tx.issuer,
      createdAt: now,
      expiresAt: now + this.sessionTtlS,
    };
    this.keepSession(session);
    this.c.log?.("info", "signed in", {
      sub: session.email,
      act: session.act,
      role: session.role,
      issuer: tx.issuer,
    });
    return {
      status: 303,
      headers: {
        location: this.home,
        "set-cookie": this.setCookie(`s.${session.id}`, this.sessionTtlS),
        "cache-control": "no-store",
        "referrer-policy": "no-referrer",
      },
    };
  }

  private async logout(call: SpCall): Promise<Reply> {
    const s = this.session(call.req.headers);
    const form = new URLSearchParams((await readBody(call.req)).toString("utf8"));
    const problem = csrfProblem({
      method: call.method,
      headers: call.req.headers,
      origin: this.origin,
      secret: this.secret,
      sessionId: s?.id,
      token: form.get(CSRF_FIELD) ?? undefined,
    });
    if (problem && s)
      throw new ProblemError("forbidden", `Refused as a possible cross-site request: ${problem}.`);
    if (s) {
      this.sessions.delete(s.id);
      this.c.log?.("info", "signed out", { sub: s.email });
    }
    return { status: 303, headers: { location: this.loginPath, "set-cookie": this.setCookie("", 0) } };
  }

  // --- helpers ---

  private refusal(reason: "mode_deny" | "not_allowlisted", domain: string): string {
    return reason === "mode_deny"
      ? `${domain} does not allow signing in to services (its DDISA record says mode=deny).`
      : `${domain} allows only listed people to sign in here, and you are not on this service's list.`;
  }

  private async discover(idp: string): Promise<IssuerKeys> {
    const iss = normalizeIssuer(idp);
    const now = this.nowS();
    const hit = this.discovered.get(iss);
    if (hit && now - hit.fetchedAt < DISCOVERY_TTL_S && hit.fetchedAt <= now) return hit;
    const meta = await fetchIssuerKeys(this.getJson, iss, "system", now, [...ENDPOINTS]);
    if (this.discovered.size >= 1000) this.discovered.delete(this.discovered.keys().next().value!);
    this.discovered.set(iss, meta);
    return meta;
  }

  private keepTransaction(tx: Transaction): string {
    const now = this.nowS();
    // Oldest first (constant TTL): drop the expired ones; when still full, refuse (fail closed).
    for (const [id, t] of this.transactions) {
      if (t.expiresAt > now) break;
      this.transactions.delete(id);
    }
    if (this.transactions.size >= MAX_TRANSACTIONS)
      throw new ProblemError("unavailable", "Too many sign-ins are in progress. Try again in a few minutes.");
    const id = randomId();
    this.transactions.set(id, tx);
    return id;
  }

  private keepSession(s: SpSession): void {
    const now = this.nowS();
    for (const [id, old] of this.sessions) {
      if (old.expiresAt > now && this.sessions.size < MAX_SESSIONS) break;
      this.sessions.delete(id); // expired, or the oldest when full
    }
    this.sessions.set(s.id, s);
  }

  /** The id of kind `t` (transaction) or `s` (session) in this SP's cookie. */
  private cookieId(headers: IncomingHttpHeaders, kind: "t" | "s"): string | undefined {
    let value: string | undefined;
    try {
      value = parseCookies(headers.cookie).get(this.cookie);
    } catch {
      return undefined;
    }
    const m = value === undefined ? null : /^([ts])\.([A-Za-z0-9_-]{43})$/.exec(value);
    return m && m[1] === kind ? m[2] : undefined;
  }

  private setCookie(value: string, maxAge: number): string {
    return serializeCookie(this.cookie, value, { sameSite: "Lax", maxAge });
  }

  private nowS(): number {
    return Math.floor(this.nowMs() / 1000);
  }

  private reply(status: number, page: Html, headers: Record<string, string> = {}): Reply {
    return htmlReply(status, page, headers);
  }

  private fail(status: number, title: string, detail: string, headers: Record<string, string> = {}): Reply {
    return htmlReply(status, errorPage(this.page, title, detail, this.loginPath), headers);
  }

  private asset(a: Asset | undefined): Reply {
    if (!a) return this.fail(404, "Not found", "There is no such page.");
    return {
      status: 200,
      body: new Bytes(a.contentType, a.data),
      headers: { etag: a.etag, "cache-control": "no-cache" },
    };
  }
}

/** Writes a Reply to a node:http response (for services without server/'s pipeline). */
export function sendReply(res: ServerResponse, reply: Reply): void {
  send(res, reply.status, reply.body, reply.headers ?? {});
}
