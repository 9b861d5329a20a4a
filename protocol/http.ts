import type { Agent, IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { SecureContext } from "node:tls";
import { boundedChunks, checkDeclaredLength, discardBody, readBounded } from "./bounded-body.ts";
import { isLoopbackHost } from "./ddisa.ts";

/**
 * The one HTTP client of apes (the CLI, client/ and the verifier): node:http(s), bounded in time (one
 * deadline for connect, TLS, headers and the whole body) and in size (a larger Content-Length is
 * refused before reading, a longer body is cut off while reading). node:http(s) is loaded with
 * process.getBuiltinModule on first use: synchronous, and without the ESM facade of `await import()`
 * whose lazy exports load Node's bundled undici (~40 ms); the verifier is one process per elevation.
 * Any HTTP answer, 4xx and 5xx included, is returned for the caller to judge; failures to get one are
 * an HttpFailure (or a BodyTooLargeError).
 */

export interface HttpOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  /**
   * Connect, TLS, headers and the whole body must be done within this. Optional only when `signal`
   * carries the caller's own deadline (a long poll); one of the two is required.
   */
  timeoutMs?: number;
  /** The most body bytes read; more ends the request. */
  maxBytes: number;
  /** Plain http: never (https only), only to a loopback host, or to any host. Default: loopback. */
  plainHttp?: "never" | "loopback" | "any";
  /** The only trust anchors (PEM) for https: the system roots are not trusted unless listed. */
  ca?: readonly string[];
  /** A prebuilt TLS context (e.g. the roots plus a private CA, built once per process). */
  secureContext?: SecureContext;
  /** Reuse pooled keep-alive sockets. Default false: one connection per request, none left behind. */
  keepAlive?: boolean;
  /**
   * A keep-alive pool of the caller's (a resident process's; one per trust anchor, since a pool does
   * not tell sockets of different secure contexts apart). A request that fails on a reused socket
   * before any answer (the server closed it while idle) is sent once more on a fresh connection.
   */
  agent?: Agent;
  /**
   * A connection to the URL's origin opened beforehand (TLS verified as this request's would be:
   * the same trust, the host's name), used for this request only; it closes with the answer.
   */
  socket?: Duplex;
  /** Ends the request (and a body being read) when it aborts. */
  signal?: AbortSignal;
}

export type HttpFailureKind = "timeout" | "aborted" | "network" | "scheme";

/** No (complete) HTTP answer: the deadline passed, the signal aborted, the network failed, or the URL was refused. */
export class HttpFailure extends Error {
  readonly kind: HttpFailureKind;
  /** The network error's code (ECONNREFUSED, ERR_TLS_..., ...), when there is one. */
  readonly code?: string;
  /** It failed before any answer on a kept-alive socket of `agent` (openHttp then tries once more). */
  readonly onReusedSocket: boolean;
  constructor(
    kind: HttpFailureKind,
    message: string,
    options: { cause?: unknown; code?: string; onReusedSocket?: boolean } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "HttpFailure";
    this.kind = kind;
    this.code = options.code;
    this.onReusedSocket = options.onReusedSocket === true;
  }
}

/**
 * An answer at its headers; the body is unread, bounded by maxBytes (a larger Content-Length is
 * refused before a byte is read) and still under the deadline.
 */
export interface HttpAnswer {
  status: number;
  headers: { get(name: string): string | null };
  /** The body's chunks; iterating past maxBytes throws BodyTooLargeError. `destroy()` drops it. */
  body: AsyncIterable<Uint8Array> & { destroy(): void };
  /** The whole body, at most maxBytes. */
  bytes(): Promise<Buffer>;
}

/** Why a URL may not be requested under `plainHttp`, or undefined when it may. */
export function schemeRefusal(
  url: URL,
  plainHttp: HttpOptions["plainHttp"] = "loopback",
): string | undefined {
  if (url.protocol === "https:") return undefined;
  if (url.protocol !== "http:") return `unsupported protocol ${url.protocol}`;
  if (plainHttp === "never") return `${url.href} is not https`;
  if (plainHttp === "loopback" && !isLoopbackHost(url.hostname))
    return `plain http to ${url.host} (not loopback)`;
  return undefined;
}

/** Sends the request; resolves at the answer's headers. */
export function openHttp(input: string | URL, options: HttpOptions): Promise<HttpAnswer> {
  const first = openOnce(input, options); // a missing deadline throws here, before anything is sent
  if (!options.agent) return first;
  return first.catch((e: unknown) => {
    if (!(e instanceof HttpFailure && e.onReusedSocket && IDLE_CLOSE_CODES.has(e.code ?? ""))) throw e;
    return openOnce(input, options);
  });
}

/** How a kept-alive socket that the server closed while it was idle fails the next request on it. */
const IDLE_CLOSE_CODES: ReadonlySet<string> = new Set(["ECONNRESET", "EPIPE", "ECONNABORTED"]);

function openOnce(input: string | URL, options: HttpOptions): Promise<HttpAnswer> {
  const url = new URL(String(input));
  const refusal = schemeRefusal(url, options.plainHttp);
  if (refusal) return Promise.reject(new HttpFailure("scheme", refusal));
  const { signal, timeoutMs } = options;
  if (timeoutMs === undefined && !signal)
    throw new TypeError("openHttp: a deadline (timeoutMs or signal) is required");
  if (signal?.aborted) return Promise.reject(abortFailure(signal));
  const secure = url.protocol === "https:";
  const body = typeof options.body === "string" ? Buffer.from(options.body, "utf8") : options.body;
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(options.headers ?? {})) headers[k.toLowerCase()] = v;
  if (body) headers["content-length"] = String(body.byteLength);
  const send = secure
    ? process.getBuiltinModule("node:https").request
    : process.getBuiltinModule("node:http").request;

  return new Promise<HttpAnswer>((resolve, reject) => {
    let res: IncomingMessage | undefined;
    // Ends the exchange wherever it is: before the headers the promise rejects, after them the
    // body's reader gets the failure.
    const end = (failure: Error) => {
      settle();
      if (res) res.destroy(failure);
      else {
        req.destroy();
        reject(failure);
      }
    };
    const deadline =
      timeoutMs === undefined
        ? undefined
        : setTimeout(
            () => end(new HttpFailure("timeout", `no complete answer within ${timeoutMs / 1000} s`)),
            timeoutMs,
          );
    const onAbort = () => end(abortFailure(signal as AbortSignal));
    signal?.addEventListener("abort", onAbort, { once: true });
    const settle = () => {
      clearTimeout(deadline);
      signal?.removeEventListener("abort", onAbort);
    };

    const req = send(url, {
      method: options.method ?? "GET",
      headers,
      ...(options.socket
        ? { createConnection: () => options.socket as Socket }
        : options.agent
          ? { agent: options.agent }
          : options.keepAlive
            ? {}
            : { agent: false }),
      ...(secure && options.ca ? { ca: [...options.ca] } : {}),
      ...(secure && options.secureContext ? { secureContext: options.secureContext } : {}),
    });
    req.on("error", (e: Error & { code?: string }) => {
      settle();
      const onReusedSocket = res === undefined && req.reusedSocket && options.agent !== undefined;
      reject(new HttpFailure("network", e.message, { cause: e, code: e.code, onReusedSocket }));
    });
    req.on("response", (answer) => {
      res = answer;
      answer.on("close", settle);
      // A failure while the body is read reaches its reader through the iterator; this listener only
      // keeps one before any read from being an uncaught 'error' event.
      answer.on("error", () => undefined);
      const bounded = cappedBody(answer, options.maxBytes);
      resolve({
        status: answer.statusCode ?? 0,
        headers: { get: (name) => headerValue(answer, name) },
        body: bounded,
        bytes: () => readBounded(bounded, options.maxBytes),
      });
    });
    req.end(body);
  });
}

/** Sends the request and reads the whole answer (at most maxBytes, within the deadline). */
export async function fetchBytes(
  input: string | URL,
  options: HttpOptions,
): Promise<{ status: number; headers: HttpAnswer["headers"]; body: Buffer }> {
  const answer = await openHttp(input, options);
  try {
    return { status: answer.status, headers: answer.headers, body: await answer.bytes() };
  } catch (e) {
    await discardBody(answer.body).catch(() => undefined);
    throw e;
  }
}

/** Like fetchBytes, with the body parsed as JSON: undefined when empty or not JSON. */
export async function fetchJson(
  input: string | URL,
  options: HttpOptions,
): Promise<{ status: number; body: unknown }> {
  const answer = await fetchBytes(input, options);
  return { status: answer.status, body: parseJsonBody(answer.body) };
}

export function parseJsonBody(bytes: Uint8Array): unknown {
  if (bytes.byteLength === 0) return undefined;
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8"));
  } catch {
    return undefined;
  }
}

function abortFailure(signal: AbortSignal): HttpFailure {
  return new HttpFailure("aborted", "the request was aborted", { cause: signal.reason });
}

function headerValue(res: IncomingMessage, name: string): string | null {
  const v = res.headers[name.toLowerCase()];
  return v === undefined ? null : Array.isArray(v) ? v.join(", ") : String(v);
}

function cappedBody(res: IncomingMessage, max: number): HttpAnswer["body"] {
  return {
    // A Node stream's iterator only cleans up once iteration has started; discardBody calls this.
    destroy: () => res.destroy(),
    async *[Symbol.asyncIterator]() {
      try {
        checkDeclaredLength(headerValue(res, "content-length"), max);
      } catch (e) {
        res.destroy();
        throw e;
      }
      // Leaving the loop early (a throw, a break) destroys the stream and so the socket.
      yield* boundedChunks(res, max);
    },
  };
}
