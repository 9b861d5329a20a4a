import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { PROBLEM_CONTENT_TYPE, ProblemError } from "../protocol/problem.ts";

/**
 * The small HTTP layer every server shares: a router over path segments with typed public and
 * authenticated routes, bounded body reading, JSON parsing and the serializer for problems
 * (RFC 7807). No framework: each request costs a few string splits.
 */

export const MAX_BODY_BYTES = 64 * 1024;

/** A body that is not JSON (HTML, an asset): sent as these bytes with this content type. */
export class Bytes {
  readonly contentType: string;
  readonly data: Buffer;
  constructor(contentType: string, data: Buffer | string) {
    this.contentType = contentType;
    this.data = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  }
}

export interface Reply {
  status: number;
  /** JSON-serialized, unless it is Bytes. */
  body?: unknown;
  headers?: Record<string, string>;
}

export interface Call {
  req: IncomingMessage;
  res: ServerResponse;
  method: string;
  path: string;
  params: Record<string, string>;
  query: URLSearchParams;
  rid: string;
  ip: string;
  /** Resolves when the client goes away (long polls stop waiting). */
  closed: AbortSignal;
}

/** A public route's handler: it gets no principal. */
export type PublicHandler = (call: Call) => Promise<Reply> | Reply;
/** An authenticated route's handler: the pipeline resolved the principal before it runs. */
export type Handler<P> = (call: Call, principal: P) => Promise<Reply> | Reply;

export type Route<P> = { method: string; segments: string[] } & (
  | { auth: false; handler: PublicHandler }
  | { auth: true; handler: Handler<P> }
);

/** The key of the routes whose first segment is a parameter (no path segment is empty). */
const PARAM = "";

export class Router<P> {
  /**
   * The routes that can match a path, by its number of segments and then its first segment (PARAM
   * for paths whose first segment no route names), each list in the order the routes were added: a
   * request tries a handful of routes, not all of them.
   */
  private readonly byShape = new Map<number, Map<string, Route<P>[]>>();

  /** `auth: true` routes run only with a principal; `auth: false` ones never see one. */
  add(method: string, pattern: string, auth: true, handler: Handler<P>): void;
  add(method: string, pattern: string, auth: false, handler: PublicHandler): void;
  add(method: string, pattern: string, auth: boolean, handler: Handler<P> | PublicHandler): void {
    const segments = pattern.split("/").filter(Boolean);
    const route: Route<P> = auth
      ? { method, segments, auth: true, handler: handler as Handler<P> }
      : { method, segments, auth: false, handler: handler as PublicHandler };
    let byFirst = this.byShape.get(segments.length);
    if (!byFirst) {
      byFirst = new Map([[PARAM, []]]);
      this.byShape.set(segments.length, byFirst);
    }
    const first = segments[0];
    if (first === undefined || first[0] === ":") {
      // A parameter (or the root) first: a candidate whatever the first segment is.
      for (const list of byFirst.values()) list.push(route);
      return;
    }
    let list = byFirst.get(first);
    if (!list) {
      list = [...byFirst.get(PARAM)!];
      byFirst.set(first, list);
    }
    list.push(route);
  }

  /** Finds the route; `allowed` lists methods of matching paths for a 405. */
  match(
    method: string,
    path: string,
  ): { route: Route<P>; params: Record<string, string> } | { allowed: string[] } | undefined {
    const parts = path.split("/").filter(Boolean);
    const byFirst = this.byShape.get(parts.length);
    if (!byFirst) return undefined;
    const candidates = byFirst.get(parts[0] ?? PARAM) ?? byFirst.get(PARAM)!;
    const allowed: string[] = [];
    for (const route of candidates) {
      let ok = true;
      for (let i = 0; i < parts.length; i++) {
        const seg = route.segments[i]!;
        if (seg[0] !== ":" && seg !== parts[i]) {
          ok = false;
          break;
        }
      }
      if (!ok) continue;
      if (route.method === method || (method === "HEAD" && route.method === "GET")) {
        // Parameters are decoded for the matching route only (not for each one tried).
        const params: Record<string, string> = {};
        for (let i = 0; i < parts.length; i++) {
          const seg = route.segments[i]!;
          if (seg[0] === ":") params[seg.slice(1)] = decodeURIComponentSafe(parts[i]!);
        }
        return { route, params };
      }
      allowed.push(route.method);
    }
    return allowed.length ? { allowed } : undefined;
  }
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new ProblemError("invalid_request", "malformed percent-encoding in the path");
  }
}

/**
 * A body must declare its length: a chunked one can come as 1-byte chunks, each costing the HTTP
 * parser a callback and an allocation (a CPU and memory amplifier for the sender's few bytes).
 * Answered before any route runs: 411, and not one more read from the connection, which closes
 * once the answer is out.
 */
export function isChunked(req: IncomingMessage): boolean {
  return req.headers["transfer-encoding"] !== undefined;
}

export function refuseChunked(req: IncomingMessage, res: ServerResponse): void {
  req.socket.pause();
  res.on("finish", () => req.socket.destroy());
  const problem = new ProblemError(
    "length_required",
    "send the body with Content-Length (chunked is refused)",
  );
  sendProblem(res, problem, (req.url ?? "/").split("?")[0]!);
}

/**
 * Reads the body up to MAX_BODY_BYTES (413 beyond, checked against Content-Length first) into one
 * buffer: sized from Content-Length when given, else grown by doubling up to the limit. Chunks are
 * copied, never kept: a body sent as 1-byte chunks costs its bytes, not a Buffer object each. Plain
 * listeners, not an async iterator (which cost several objects and promises per request). A body
 * over the limit or a failed stream destroys the request: nothing more is read from it.
 */
export function readBody(req: IncomingMessage): Promise<Buffer> {
  const tooLarge = () => new ProblemError("payload_too_large", `the body exceeds ${MAX_BODY_BYTES} bytes`);
  const declared = Number(req.headers["content-length"] ?? Number.NaN);
  if (declared > MAX_BODY_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    let body = Buffer.alloc(declared >= 0 ? declared : 0);
    let size = 0;
    const finish = (e: Error | undefined) => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", finish);
      req.off("close", onClose);
      if (e === undefined) return resolve(body.subarray(0, size));
      req.destroy();
      reject(e);
    };
    const onData = (chunk: Buffer) => {
      const needed = size + chunk.length;
      if (needed > MAX_BODY_BYTES) return finish(tooLarge());
      if (needed > body.length) {
        const grown = Buffer.alloc(Math.min(MAX_BODY_BYTES, Math.max(needed, body.length * 2, 1024)));
        body.copy(grown, 0, 0, size);
        body = grown;
      }
      chunk.copy(body, size);
      size = needed;
    };
    const onEnd = () => finish(undefined);
    // Closed before its end (the client went away): what an async iterator reports as premature.
    const onClose = () =>
      finish(Object.assign(new Error("Premature close"), { code: "ERR_STREAM_PREMATURE_CLOSE" }));
    if (req.readableEnded) return resolve(body.subarray(0, 0));
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", finish);
    req.on("close", onClose);
  });
}

export function mediaType(req: IncomingMessage): string {
  return (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
}

export const isJsonType = (t: string) =>
  t === "application/json" || (t.startsWith("application/") && t.endsWith("+json"));

/** A JSON object body; an empty body is `{}` (e.g. approve without overrides). */
export async function jsonBody(call: Call): Promise<Record<string, unknown>> {
  const raw = await readBody(call.req);
  if (raw.length === 0) return {};
  const type = mediaType(call.req);
  if (!isJsonType(type)) {
    throw new ProblemError("unsupported_media_type", `send application/json (got "${type || "none"}")`);
  }
  return parseJsonObject(raw);
}

export function parseJsonObject(raw: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(raw.toString("utf8"));
  } catch (e) {
    throw new ProblemError("invalid_json", `the body is not valid JSON: ${(e as Error).message}`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new ProblemError("invalid_request", "the body must be a JSON object");
  }
  return value as Record<string, unknown>;
}

/** Rejects fields the endpoint does not know (a typo must not silently change meaning). */
export function onlyFields(body: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(body)) {
    if (!allowed.includes(k)) throw new ProblemError("invalid_request", `unknown field "${k}"`);
  }
}

/** JSON (no-store) or Bytes; every answer says nosniff, so no body is ever sniffed into HTML. */
export function send(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
) {
  if (res.headersSent || res.destroyed) return;
  if (body === undefined) {
    res.writeHead(status, { "x-content-type-options": "nosniff", ...headers });
    res.end();
    return;
  }
  const bytes = body instanceof Bytes;
  const data = bytes ? body.data : JSON.stringify(body);
  res.writeHead(status, {
    "content-type": bytes ? body.contentType : "application/json",
    "content-length": String(Buffer.byteLength(data)),
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    ...headers,
  });
  res.end(res.req.method === "HEAD" ? undefined : data);
}

/** Answers a ProblemError as RFC 7807 (anything else as a 500 that says nothing more). */
export function sendProblem(res: ServerResponse, e: unknown, path: string): number {
  const p = e instanceof ProblemError ? e : new ProblemError("internal", "internal error");
  const headers: Record<string, string> = { "content-type": PROBLEM_CONTENT_TYPE };
  const retry = p.extensions.retry_after;
  if (typeof retry === "number") headers["retry-after"] = String(retry);
  if (p.status === 401) headers["www-authenticate"] = 'Bearer realm="apes"';
  // A refused upload is not read to the end: close the connection after answering.
  if (p.status === 413 || p.status === 411) headers.connection = "close";
  send(res, p.status, p.toProblem(path), headers);
  return p.status;
}

const RID = /^[A-Za-z0-9._-]{1,64}$/;

export function requestId(req: IncomingMessage): string {
  const given = req.headers["x-request-id"];
  return typeof given === "string" && RID.test(given) ? given : randomUUID();
}
