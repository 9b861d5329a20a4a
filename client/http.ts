import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { rootCertificates } from "node:tls";
import { BodyTooLargeError, readBoundedResponse } from "../protocol/bounded-body.ts";

/**
 * The one small HTTP client of client/: JSON over node:http(s), bounded in time (one deadline for
 * connect, headers and body) and in size (the answer is cut off, not buffered, past `maxBytes`). A
 * network failure, a timeout or an oversized answer is an `HttpUnreachable`; any HTTP answer,
 * 4xx and 5xx included, is returned for the caller to judge.
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

export const requestJson: JsonHttp = (url, init = {}) => {
  const timeoutMs = init.timeoutMs ?? HTTP_TIMEOUT_MS;
  const maxBytes = init.maxBytes ?? HTTP_MAX_BYTES;
  const u = new URL(url);
  if (u.protocol !== "https:" && u.protocol !== "http:")
    return Promise.reject(new HttpUnreachable(`${url}: not an http(s) URL`));
  const payload = init.json === undefined ? undefined : JSON.stringify(init.json);
  const headers: Record<string, string> = { accept: "application/json", ...init.headers };
  if (payload !== undefined) {
    headers["content-type"] = "application/json";
    headers["content-length"] = String(Buffer.byteLength(payload));
  }
  const send = u.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise<IncomingMessage>((resolve, reject) => {
    const req = send(u, {
      method: init.method ?? "GET",
      headers,
      // One deadline for connect, headers and body: the signal stays armed while the body is read.
      signal: AbortSignal.timeout(timeoutMs),
      ...(init.ca ? { ca: [...rootCertificates, init.ca] } : {}),
    });
    req.on("response", resolve);
    req.on("error", reject);
    req.end(payload);
  })
    .then(async (res) => {
      const headers = { get: (name: string) => res.headers[name.toLowerCase()]?.toString() ?? null };
      const bytes = await readBoundedResponse({ headers, body: res }, maxBytes);
      let body: unknown;
      try {
        body = bytes.length ? JSON.parse(bytes.toString("utf8")) : undefined;
      } catch {
        body = undefined;
      }
      return { status: res.statusCode ?? 0, body };
    })
    .catch((e: Error) => {
      throw unreachable(url, e, timeoutMs);
    });
};

function unreachable(url: string, e: Error & { code?: string }, timeoutMs: number): HttpUnreachable {
  if (e instanceof HttpUnreachable) return e;
  if (e instanceof BodyTooLargeError) return new HttpUnreachable(`${url}: ${e.message}`);
  if (e.name === "AbortError" || e.name === "TimeoutError" || e.code === "ABORT_ERR")
    return new HttpUnreachable(`${url}: no answer within ${timeoutMs / 1000} s`);
  if (e.code === "ECONNREFUSED") return new HttpUnreachable(`${url}: connection refused`);
  if (e.code === "ENOTFOUND" || e.code === "EAI_AGAIN")
    return new HttpUnreachable(`${url}: host name not found`);
  return new HttpUnreachable(`${url}: ${e.message}`);
}
