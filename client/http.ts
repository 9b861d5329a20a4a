import { fetchJson, HttpFailure } from "../protocol/http.ts";

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
