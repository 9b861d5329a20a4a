import type { Agent } from "node:http";
import type { SecureContext } from "node:tls";
import { BodyTooLargeError, describeBytes } from "../protocol/bounded-body.ts";
import { isLoopbackHost } from "../protocol/ddisa.ts";
import { visible } from "../protocol/display.ts";
import { fetchJson, type HttpAnswer, HttpFailure, openHttp } from "../protocol/http.ts";
import { describeErrorBody } from "../protocol/problem.ts";
import type { ClientContext, Fetch } from "./context.ts";
import { ClientError, HttpProblem } from "./errors.ts";

/**
 * The one HTTP client every call to our servers goes through: `request` (JSON in and out via ctx.http,
 * a timeout on every request (the whole answer included), answers capped at MAX_RESPONSE_BYTES while
 * reading, plain http refused except to loopback, problem+json and OAuth error bodies turned into an
 * HttpProblem with the server's text escaped and cut (IDP_TEXT_MAX), ETag / If-None-Match, an optional
 * extra CA (config `ca_file`), and debug lines that never contain a token or a body), its fetch-shaped
 * transport `nodeFetch`, and `requestJson`, the small variant for verify-grant (no session, no context).
 * All of them go through protocol/http.ts.
 */

export const DEFAULT_TIMEOUT_MS = 10_000;
/**
 * The largest answer read from an IdP (a full page of 100 grants is well under this); more is refused
 * while reading, and a larger Content-Length before.
 */
export const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;
/** At most this many characters of an IdP's error text (problem detail/title, error_description). */
export const IDP_TEXT_MAX = 500;

export interface HttpRequest {
  url: string;
  method?: string;
  /** Sent as `Authorization: Bearer <token>`; never logged. */
  token?: string;
  json?: unknown;
  /** Sent as application/x-www-form-urlencoded (OAuth token endpoints). */
  form?: Record<string, string>;
  headers?: Record<string, string>;
  /** Sent as If-None-Match; a 304 answer then resolves with `notModified: true`. */
  etag?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Statuses (besides 2xx and 304-with-etag) that resolve instead of throwing. */
  accept?: readonly number[];
}

export interface HttpResponse<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
  etag?: string;
  notModified: boolean;
}

/** "IdP at https://id.example.com" for messages. */
export function serviceName(url: string): string {
  try {
    return `IdP at ${new URL(url).origin}`;
  } catch {
    return `IdP at ${visible(url, { max: 200 })}`;
  }
}

export async function request<T = unknown>(ctx: ClientContext, req: HttpRequest): Promise<HttpResponse<T>> {
  const method = req.method ?? (req.json !== undefined || req.form ? "POST" : "GET");
  const headers: Record<string, string> = {
    accept: "application/json, application/problem+json",
    ...req.headers,
  };
  let body: string | undefined;
  if (req.json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(req.json);
  } else if (req.form) {
    headers["content-type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(req.form).toString();
  }
  if (req.token) headers.authorization = `Bearer ${req.token}`;
  if (req.etag) headers["if-none-match"] = req.etag;

  // The last point before sending, whatever built the URL (config, discovery, a cached document).
  const refusal = insecureUrlRefusal(req.url);
  if (refusal) {
    throw new ClientError(
      "insecure_url",
      `refusing to send ${req.token ? "the session token" : "a request"} to ${refusal}`,
      { url: req.url },
    );
  }
  const timeoutMs = req.timeoutMs ?? httpTimeoutMs(ctx);
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
  const where = serviceName(req.url);
  const started = Date.now();
  const fetcher = await transport(ctx);
  let res: Response;
  let text: string;
  try {
    res = await fetcher(req.url, { method, headers, body, signal, redirect: "error" });
    text = await res.text();
  } catch (e) {
    if (req.signal?.aborted) throw req.signal.reason ?? e;
    if (e instanceof BodyTooLargeError) {
      ctx.debug(`${method} ${redactUrl(req.url)} -> refused: ${e.message}`);
      throw new ClientError(
        "answer_too_large",
        `${where} sent an answer larger than ${describeBytes(e.limit)}: refused`,
        { url: req.url, limit: e.limit },
        { cause: e },
      );
    }
    const why = timeout.aborted ? `no answer within ${Math.round(timeoutMs / 1000)} s` : networkReason(e);
    ctx.debug(`${method} ${redactUrl(req.url)} -> failed: ${why}`);
    throw new ClientError(
      "idp_unreachable",
      `${where} is unreachable (${why})`,
      { url: req.url, reason: why },
      { cause: e },
    );
  }
  ctx.debug(`${method} ${redactUrl(req.url)} -> ${res.status} (${Date.now() - started} ms)`);
  const etag = res.headers.get("etag") ?? undefined;
  if (res.status === 304) {
    return {
      status: 304,
      headers: res.headers,
      body: undefined as T,
      etag: etag ?? req.etag,
      notModified: true,
    };
  }
  let parsed: unknown;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
  }
  if ((res.status >= 200 && res.status < 300) || req.accept?.includes(res.status)) {
    if (res.status !== 204 && text && parsed === undefined) {
      throw new ClientError(
        "not_json",
        `${where} answered ${visible(req.url, { max: 200 })} with something that is not JSON`,
        { url: req.url },
      );
    }
    return { status: res.status, headers: res.headers, body: parsed as T, etag, notModified: false };
  }
  throw errorFor(res.status, parsed, req.url, res.headers);
}

/**
 * Why a request to `url` must not be sent, or undefined: only https, or plain http to a loopback
 * address, so that a token, a challenge or a grant never crosses a network in the clear.
 */
export function insecureUrlRefusal(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `${visible(url, { max: 200 })}: not a URL`;
  }
  if (u.protocol === "https:") return undefined;
  if (u.protocol === "http:" && isLoopbackHost(u.hostname)) return undefined;
  if (u.protocol === "http:") return `${u.host} over plain http (allowed only on a loopback address)`;
  return `${visible(url, { max: 200 })}: not an http(s) URL`;
}

/**
 * The HttpProblem for an error answer; its message says what the server said, bounded and escaped.
 * (The CLI turns it into 5xx -> 69, 401/403 -> 77, 429 -> 75, other 4xx -> 1: cli/errors.ts.)
 */
export function errorFor(status: number, body: unknown, url: string, headers?: Headers): HttpProblem {
  const where = serviceName(url);
  // The server's words, shown but never obeyed: bounded, every control character escaped.
  const said = describeErrorBody(body);
  const detail = said === undefined ? undefined : visible(said, { max: IDP_TEXT_MAX });
  const code = errorCode(body);
  const retryAfterRaw = status === 429 ? headers?.get("retry-after") : undefined;
  const retryAfter = retryAfterRaw ? visible(retryAfterRaw, { max: 40 }) : undefined;
  const base = { status, code, body, url, detail, retryAfter };
  const message =
    status >= 500
      ? `${where} failed: ${status}${detail ? ` ${detail}` : ""}`
      : status === 401
        ? `${where} refused the session: ${detail ?? "authentication required"}`
        : status === 403
          ? `not permitted: ${detail ?? "the IdP refused this request"}`
          : status === 429
            ? `${where} is rate limiting: ${detail ?? "too many requests"}`
            : status === 404
              ? `not found: ${detail ?? visible(url, { max: IDP_TEXT_MAX })}`
              : `${where} rejected the request (${status}): ${detail ?? "no details given"}`;
  return new HttpProblem(message, base);
}

function errorCode(body: unknown): string | undefined {
  if (!body || typeof body !== "object") return undefined;
  const b = body as Record<string, unknown>;
  if (typeof b.error === "string") return b.error;
  if (typeof b.type === "string") return b.type.replace(/\/+$/, "").split("/").pop();
  return undefined;
}

function networkReason(e: unknown): string {
  let cur: unknown = e;
  for (let i = 0; i < 4 && cur; i++) {
    const err = cur as { code?: string; message?: string; cause?: unknown };
    if (err.code === "ECONNREFUSED") return "connection refused";
    if (err.code === "ENOTFOUND" || err.code === "EAI_AGAIN") return "host name not found";
    if (err.code === "ECONNRESET") return "connection reset";
    if (err.code === "UND_ERR_CONNECT_TIMEOUT" || err.code === "ETIMEDOUT") return "connection timed out";
    if (err.code?.startsWith("ERR_TLS") || /certificate/i.test(err.message ?? "")) {
      return `TLS: ${err.message}; for a private CA set \`ca_file\` in config.toml or APES_CA_FILE`;
    }
    if (!err.cause) return err.message ?? String(cur);
    cur = err.cause;
  }
  return String(e);
}

/** Query strings may carry codes; debug lines show the path only. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}${u.search ? "?…" : ""}`;
  } catch {
    return "<url>";
  }
}

export function httpTimeoutMs(ctx: ClientContext): number {
  const v = Number(ctx.env.APES_HTTP_TIMEOUT_MS);
  return Number.isFinite(v) && v > 0 ? v : DEFAULT_TIMEOUT_MS;
}

// The transport, chosen once per context: ctx.http, or with an extra CA (`ca_file` / APES_CA_FILE)
// nodeFetch with that CA added to the system roots. (Node's global fetch cannot take a dispatcher from
// the npm undici, a different major; node:https takes `ca` directly and starts ~30 ms faster.)
const transports = new WeakMap<ClientContext, Promise<Fetch>>();

async function transport(ctx: ClientContext): Promise<Fetch> {
  let t = transports.get(ctx);
  if (!t) {
    t = buildTransport(ctx);
    transports.set(ctx, t);
  }
  return t;
}

/**
 * A resident process (the caller's warm requester, cli/elevation/resident.ts) keeps one TLS context and
 * one kept-alive connection pool per extra CA across its contexts, so a request after the first costs
 * one round trip on a warm connection instead of a context build, a connect and a handshake. The CA
 * file is still read for every context: the pool is chosen by its content, so an edit takes effect.
 */
let warmPools: Map<string, Fetch> | undefined;

export function keepConnectionsWarm(): void {
  warmPools ??= new Map();
}

/** The system roots' fetch of a warm process (one kept-alive pool), or undefined in any other. */
export function warmFetch(): Fetch | undefined {
  if (!warmPools) return undefined;
  return pooledFetch("", undefined);
}

function pooledFetch(pem: string, secureContext: SecureContext | undefined): Fetch {
  let f = warmPools!.get(pem);
  if (!f) {
    // A pool per CA: an agent does not tell sockets of different secure contexts apart. LIFO: the
    // socket used last is the one least likely to have been closed by the server meanwhile.
    const pool = { keepAlive: true, maxSockets: 8, scheduling: "lifo" } as const;
    const tls = new (process.getBuiltinModule("node:https").Agent)(pool);
    const plain = new (process.getBuiltinModule("node:http").Agent)(pool);
    f = ((input: string | URL | Request, init?: RequestInit) =>
      nodeFetch(input, init, {
        ...(secureContext ? { secureContext } : {}),
        agent: String(input instanceof Request ? input.url : input).startsWith("https:") ? tls : plain,
      })) as Fetch;
    if (warmPools!.size >= 8) warmPools!.clear();
    warmPools!.set(pem, f);
  }
  return f;
}

async function buildTransport(ctx: ClientContext): Promise<Fetch> {
  const config = await ctx.config();
  const caFile = config.caFile;
  if (!caFile) return ctx.http;
  const { readFile } = await import("node:fs/promises");
  let pem: string;
  try {
    pem = await readFile(caFile, "utf8");
  } catch (e) {
    throw new ClientError(
      "ca_file_unreadable",
      `cannot read the CA file ${caFile}: ${(e as Error).message}`,
      {
        file: caFile,
      },
    );
  }
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
    throw new ClientError("ca_file_not_pem", `${caFile} holds no PEM certificate`, { file: caFile });
  }
  if (warmPools?.has(pem)) return warmPools.get(pem)!;
  const { createSecureContext } = await import("node:tls");
  // One TLS context for the process: the runtime's system roots (parsed once, in C++) plus the CA
  // added to this context's own copy of them, as createSecureContext({ ca }) adds each of its CAs.
  // Passing `ca: [...rootCertificates, pem]` instead parses ~140 PEM roots again: ~7-12 ms per process.
  let secureContext: SecureContext;
  try {
    secureContext = createSecureContext();
    secureContext.context.addCACert(pem);
  } catch (e) {
    throw new ClientError(
      "ca_file_unusable",
      `${caFile}: not a usable CA certificate (${(e as Error).message})`,
      { file: caFile },
    );
  }
  ctx.debug(`https: trusting the extra CA in ${caFile}`);
  if (warmPools) return pooledFetch(pem, secureContext);
  return ((input: string | URL | Request, init?: RequestInit) =>
    nodeFetch(input, init, { secureContext })) as Fetch;
}

/** The part of a fetch Response apes reads. */
interface MinimalResponse {
  status: number;
  ok: boolean;
  headers: { get(name: string): string | null };
  /** Unread, at most MAX_RESPONSE_BYTES; `text()` reads it. */
  body: AsyncIterable<Uint8Array>;
  text(): Promise<string>;
}

/**
 * A fetch-shaped face of the protocol client (protocol/http.ts) for the JSON requests apes makes
 * (string bodies, header records, AbortSignal, no redirects). It avoids loading the runtime's fetch
 * stack, which costs ~30 ms of start-up in the single executable, and takes an extra CA directly.
 * Answers carry status, headers.get(), the unread body and text() (at most MAX_RESPONSE_BYTES) only;
 * a failure to get one is fetch's TypeError("fetch failed") or the signal's reason.
 */
export async function nodeFetch(
  input: string | URL | Request,
  init: RequestInit = {},
  options: { secureContext?: SecureContext; agent?: Agent } = {},
): Promise<Response> {
  const headers = (init.headers ?? {}) as Record<string, string>;
  const credentials = Object.keys(headers).some((k) => k.toLowerCase() === "authorization");
  const signal = init.signal ?? undefined;
  let answer: HttpAnswer;
  try {
    answer = await openHttp(String(input), {
      method: init.method ?? "GET",
      headers,
      ...(typeof init.body === "string" ? { body: init.body } : {}),
      ...(signal ? { signal } : {}),
      ...(options.secureContext ? { secureContext: options.secureContext } : {}),
      ...(options.agent ? { agent: options.agent } : {}),
      // The same rule as request()'s, at the socket: whoever calls this, no token crosses a network in the clear.
      plainHttp: credentials ? "loopback" : "any",
      // request() bounds every call through the signal (a long poll may take minutes); without one,
      // the default deadline.
      ...(signal ? {} : { timeoutMs: DEFAULT_TIMEOUT_MS }),
      maxBytes: MAX_RESPONSE_BYTES,
    });
  } catch (e) {
    if (!(e instanceof HttpFailure)) throw e;
    if (e.kind === "aborted") throw signal?.reason ?? e;
    if (e.kind === "scheme") {
      const url = new URL(String(input));
      throw new TypeError(
        url.protocol === "http:" ? `refusing to send credentials over plain http to ${url.host}` : e.message,
      );
    }
    throw new TypeError("fetch failed", { cause: e.cause ?? e });
  }
  const response: MinimalResponse = {
    status: answer.status,
    ok: answer.status >= 200 && answer.status < 300,
    headers: answer.headers,
    body: answer.body,
    text: async () => (await answer.bytes()).toString("utf8"),
  };
  return response as unknown as Response;
}

/**
 * client/'s JSON calls over the protocol client (protocol/http.ts), with its defaults (5 s, 1 MiB)
 * and its errors: a network failure, a timeout or an oversized answer is an `HttpUnreachable`; any
 * HTTP answer, 4xx and 5xx included, is returned for the caller to judge.
 */

export interface JsonAnswer {
  status: number;
  /** The parsed JSON body, or undefined when there is none or it is not JSON. */
  body: unknown;
}

export interface JsonRequest {
  method?: "GET" | "POST";
  headers?: Record<string, string>;
  /** Sent as JSON. */
  json?: unknown;
  timeoutMs?: number;
  maxBytes?: number;
  /** Extra trust anchors (PEM) for https, in addition to Node's defaults. */
  ca?: string;
}

export type JsonHttp = (url: string, init?: JsonRequest) => Promise<JsonAnswer>;

export class HttpUnreachable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HttpUnreachable";
  }
}

export const HTTP_TIMEOUT_MS = 5000;
export const HTTP_MAX_BYTES = 1024 * 1024;

export const requestJson: JsonHttp = async (url, init = {}) => {
  const timeoutMs = init.timeoutMs ?? HTTP_TIMEOUT_MS;
  const payload = init.json === undefined ? undefined : JSON.stringify(init.json);
  const headers: Record<string, string> = { accept: "application/json", ...init.headers };
  if (payload !== undefined) headers["content-type"] = "application/json";
  // An extra CA is added to the system roots, not pinned.
  const ca = init.ca ? [...process.getBuiltinModule("node:tls").rootCertificates, init.ca] : undefined;
  try {
    return await fetchJson(url, {
      method: init.method ?? "GET",
      headers,
      ...(payload !== undefined ? { body: payload } : {}),
      ...(ca ? { ca } : {}),
      // Plain http only to a loopback IdP, as for the issuers verify-grant accepts.
      plainHttp: "loopback",
      timeoutMs,
      maxBytes: init.maxBytes ?? HTTP_MAX_BYTES,
    });
  } catch (e) {
    throw unreachable(url, e as Error, timeoutMs);
  }
};

function unreachable(url: string, e: Error, timeoutMs: number): HttpUnreachable {
  if (e instanceof HttpFailure) {
    if (e.kind === "timeout") return new HttpUnreachable(`${url}: no answer within ${timeoutMs / 1000} s`);
    if (e.kind === "scheme") return new HttpUnreachable(`${url}: ${e.message}`);
    if (e.code === "ECONNREFUSED") return new HttpUnreachable(`${url}: connection refused`);
    if (e.code === "ENOTFOUND" || e.code === "EAI_AGAIN")
      return new HttpUnreachable(`${url}: host name not found`);
  }
  return new HttpUnreachable(`${url}: ${e.message}`);
}
