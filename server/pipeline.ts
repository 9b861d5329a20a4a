import type { IncomingMessage, ServerResponse } from "node:http";
import { ProblemError } from "../protocol/problem.ts";
import { type Call, type Reply, type Router, requestId, send, sendProblem } from "./http.ts";
import type { Logger } from "./log.ts";
import { requestEnded, requestStarted } from "./offload.ts";

/** What an app on server/ gives the request pipeline. */
export interface App<P> {
  router: Router<P>;
  log: Logger;
  /** Base URL of the problem `instance` (the path is appended). */
  base: string;
  /** Aborted when the server shuts down: answers then carry Connection: close. */
  shutdown: AbortSignal;
  /** The principal of a request to an authenticated route; throws (a ProblemError) to refuse it. */
  authenticate(call: Call): P | Promise<P>;
  /** Runs before a public route (e.g. a per-address rate limit); throws to refuse. */
  admitPublic?(call: Call): void;
  /** Who made the request, on each of its log lines. */
  who?(principal: P): Record<string, string>;
  /** Runs first for every request (e.g. what a cache trusts is looked at again). */
  begin?(): void;
  /** Awaited before any answer leaves (e.g. a store's group commit); a failure answers 500. */
  settle?(): Promise<void> | void;
  /** The answer for an error the app expects that is not a ProblemError (undefined: not one). */
  errorReply?(e: unknown): Reply | undefined;
}

/** One request's frame: id, parsed target, the route, its answer, one log line. */
export function pipeline<P>(app: App<P>): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  return async (req, res) => {
    const started = performance.now();
    app.begin?.();
    const call = callOf(req, res);
    res.setHeader("x-request-id", call.rid);
    let status = 500;
    let who: Record<string, string> = {};
    requestStarted();
    try {
      const reply = await route(app, call, (p) => {
        if (app.who) who = app.who(p);
      });
      // Acknowledge nothing before it is durable.
      await app.settle?.();
      status = reply.status;
      // While shutting down, do not keep the connection for another request.
      if (app.shutdown.aborted) res.setHeader("connection", "close");
      send(res, reply.status, reply.body, reply.headers);
    } catch (e) {
      status = await answerError(app, call, e, who);
    } finally {
      requestEnded();
    }
    if (app.log.enabled("info")) {
      app.log.log("info", "request", {
        rid: call.rid,
        method: call.method,
        path: call.path,
        status,
        ms: Math.round((performance.now() - started) * 10) / 10,
        ...who,
      });
    }
  };
}

function callOf(req: IncomingMessage, res: ServerResponse): Call {
  return new RequestCall(req, res);
}

/**
 * A request's Call. The query string's parameters and the signal of the client going away (which
 * only long polls wait on) are made when first asked for: most requests need neither. A class, so
 * the getters live on its prototype (an object literal with getters costs more than both values).
 */
class RequestCall implements Call {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly method: string;
  readonly path: string;
  params: Record<string, string> = {};
  readonly rid: string;
  readonly ip: string;
  private readonly rawQuery: string;
  private parsedQuery: URLSearchParams | undefined;
  private closedSignal: AbortSignal | undefined;

  constructor(req: IncomingMessage, res: ServerResponse) {
    const rawUrl = req.url ?? "/";
    const q = rawUrl.indexOf("?");
    this.req = req;
    this.res = res;
    this.method = req.method ?? "GET";
    this.path = q === -1 ? rawUrl : rawUrl.slice(0, q);
    this.rawQuery = q === -1 ? "" : rawUrl.slice(q + 1);
    this.rid = requestId(req);
    this.ip = req.socket.remoteAddress ?? "";
  }

  get query(): URLSearchParams {
    this.parsedQuery ??= new URLSearchParams(this.rawQuery);
    return this.parsedQuery;
  }

  get closed(): AbortSignal {
    if (!this.closedSignal) {
      const res = this.res;
      const ac = new AbortController();
      // The client going away (not a finished response) stops a long poll; it may be gone already.
      if (res.closed) {
        if (!res.writableFinished) ac.abort();
      } else
        res.on("close", () => {
          if (!res.writableFinished) ac.abort();
        });
      this.closedSignal = ac.signal;
    }
    return this.closedSignal;
  }
}

async function route<P>(app: App<P>, call: Call, authenticated: (p: P) => void): Promise<Reply> {
  const m = app.router.match(call.method, call.path);
  if (!m) throw new ProblemError("not_found", `no endpoint ${call.path}`);
  if ("allowed" in m) {
    call.res.setHeader("allow", m.allowed.join(", "));
    throw new ProblemError("method_not_allowed", `${call.method} is not allowed on ${call.path}`);
  }
  call.params = m.params;
  const r = m.route;
  if (!r.auth) {
    app.admitPublic?.(call);
    return r.handler(call);
  }
  const principal = await app.authenticate(call);
  authenticated(principal);
  return r.handler(call, principal);
}

async function answerError<P>(app: App<P>, call: Call, e: unknown, who: Record<string, string>) {
  let error = e;
  const expected = app.errorReply?.(e);
  if (!(e instanceof ProblemError) && !expected) {
    app.log.log("error", "unhandled error", {
      rid: call.rid,
      error: e instanceof Error ? e.message : String(e),
      ...who,
    });
  }
  try {
    await app.settle?.();
  } catch {
    error = new ProblemError("internal", "storage failure");
  }
  if (error === e && expected) {
    send(call.res, expected.status, expected.body, expected.headers);
    return expected.status;
  }
  return sendProblem(call.res, error, app.base + call.path);
}
