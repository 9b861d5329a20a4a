/**
 * Every way a client/ call fails, one code each, with the facts a caller needs to decide what to
 * do or say (the CLI maps each code to an exit status and a hint in cli/errors.ts; the Nest retries,
 * re-authenticates or reports). Messages say what happened in plain words, with any text from a
 * server already passed through protocol/display.ts `visible()`; they never name a shell command.
 */

export interface ClientFailures {
  // HTTP (client/http.ts)
  /** Refused before sending: not https, and not plain http to a loopback address. */
  insecure_url: { url: string };
  /** No answer: connection refused, DNS, TLS, reset, timeout. */
  idp_unreachable: { url: string; reason: string };
  answer_too_large: { url: string; limit: number };
  /** A 2xx answer whose body is not JSON. */
  not_json: { url: string };
  /** An HTTP error answer (see HttpProblem). */
  http_problem: { url: string; status: number };
  ca_file_unreadable: { file: string };
  ca_file_not_pem: { file: string };
  ca_file_unusable: { file: string };
  // The IdP's discovery document (client/discovery.ts)
  idp_url_invalid: { raw: string; problem: "not_url" | "scheme" | "credentials" | "query" };
  discovery_invalid: { url: string };
  /** An advertised endpoint on another origin, with credentials, or over plain http to a remote host. */
  endpoint_refused: { idp: string; field: string; why: string };
  /** The IdP does not advertise an endpoint the call needs. */
  endpoint_missing: { idp: string; field: string };
  // DDISA: which IdP serves an email's domain (client/ddisa.ts)
  invalid_email: { email: string };
  configured_idp_invalid: { idp: string; source?: string };
  /** DNS (and DoH) could not be reached; `doh` says whether a DoH fallback is configured. */
  dns_unavailable: { doh: boolean };
  /** A bad DNS server address or DoH URL in the settings. */
  dns_config: Record<string, never>;
  no_ddisa_record: { email: string; name: string };
  ddisa_denied: { email: string; domain: string };
  // Key login (client/key-login.ts)
  issuer_mismatch: { idp: string; issuer: string };
  signing_failed: Record<string, never>;
  raw_signature_refused: { idp: string };
  bad_challenge: Record<string, never>;
  no_token: Record<string, never>;
  /** The IdP answered for another identity than the one logging in. */
  identity_mismatch: { email: string };
  /** The IdP refused the login (4xx other than 429); the HttpProblem is the cause. */
  login_refused: { email: string };
  // Private keys (client/keys.ts)
  key_unreadable: {
    path: string;
    code?: string /** Set when a session's renewal needed the key. */;
    email?: string;
  };
  key_encrypted: { path: string };
  key_invalid: { path: string };
  // Sessions (client/session.ts, client/session-store.ts)
  no_session: Record<string, never>;
  /** Expired (or refused) and no key recorded to renew it with. */
  session_no_key: { email: string };
  /** The recorded key is gone, and the same key (by fingerprint) sits at `found`. */
  key_moved: { email: string; found: string };
  /** The key at the recorded path is another key. */
  key_mismatch: { email: string; keyPath: string };
  /** Renewing with the recorded key was refused; the refusal is the cause. */
  renewal_failed: { email: string; keyPath: string };
  session_file_refused: { file: string; refusal: SessionFileRefusal };
  session_unreadable: { file: string };
  session_broken: { file: string };
  session_write_failed: { file: string; dir: string };
  lock_create_failed: { lock: string; dir: string };
  lock_busy: { lock: string };
  // Grants, delegations, token exchange (client/grants.ts, client/wait.ts, client/delegations.ts)
  not_a_grant_id: { id: string };
  /** A 2xx answer that does not have the shape the call expects. */
  unexpected_answer: Record<string, never>;
  /** The IdP only offers the client_credentials form, and the session has no key for it. */
  exchange_needs_key: { email: string };
  wait_timed_out: { id: string; elapsedMs: number };
  // Browser and device login, refresh (client/oauth.ts, browser-login.ts, device-login.ts)
  /** The IdP answered an OAuth step with an error (its `error` code, visible() and cut). */
  oauth_refused: { step: "authorize" | "code" | "device" | "refresh"; error: string };
  /** The person denied the login (access_denied). */
  login_denied: { email: string };
  /** The id_token failed a check (signature, iss, aud, nonce, act, lifetime). */
  id_token_refused: { why: string };
  /** The IdP no longer takes the session's refresh token (logged out, revoked, reused, expired). */
  session_ended: { email: string };
  /** No answer from the browser, or the device code expired first. */
  login_timed_out: { email: string; flow: "browser" | "device" };
}

export type ClientFailure = keyof ClientFailures;

/** Why auth.json must not be used (client/session-store.ts sessionFileRefusal). */
export type SessionFileRefusal = "symlink" | "not_file" | "foreign_owner" | "open_mode";

export class ClientError<F extends ClientFailure = ClientFailure> extends Error {
  readonly failure: F;
  readonly details: ClientFailures[F];
  constructor(failure: F, message: string, details: ClientFailures[F], options: { cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = "ClientError";
    this.failure = failure;
    this.details = details;
  }
}

/** An HTTP error answer. `code` is the OAuth `error` or the last segment of the problem `type`. */
export class HttpProblem extends ClientError<"http_problem"> {
  readonly status: number;
  readonly code?: string;
  readonly body: unknown;
  readonly url: string;
  /** The server's words (problem detail/title, error_description), visible() and cut. */
  readonly detail?: string;
  /** Retry-After as sent, visible() and cut. */
  readonly retryAfter?: string;
  constructor(
    message: string,
    o: { status: number; code?: string; body: unknown; url: string; detail?: string; retryAfter?: string },
  ) {
    super("http_problem", message, { url: o.url, status: o.status });
    this.name = "HttpProblem";
    this.status = o.status;
    this.code = o.code;
    this.body = o.body;
    this.url = o.url;
    this.detail = o.detail;
    this.retryAfter = o.retryAfter;
  }
}

/** Narrows `e` to a ClientError of one of `failures`. */
export function isClientError<F extends ClientFailure>(e: unknown, ...failures: F[]): e is ClientError<F> {
  return e instanceof ClientError && (failures.length === 0 || failures.includes(e.failure as F));
}

/**
 * Did the IdP (or the session's owner's setup) refuse, rather than fail? A refusal is final for
 * these credentials: another try with the same ones gets the same answer.
 */
export function isRefusal(e: unknown): boolean {
  if (e instanceof HttpProblem) return e.status === 401 || e.status === 403;
  return isClientError(
    e,
    "login_refused",
    "identity_mismatch",
    "renewal_failed",
    "session_no_key",
    "no_session",
    "session_ended",
    "login_denied",
  );
}
