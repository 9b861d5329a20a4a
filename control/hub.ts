import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { type WebSocket, WebSocketServer } from "ws";
import { PROBLEM_CONTENT_TYPE, ProblemError } from "../protocol/problem.ts";
import {
  CLOSE,
  MAX_FRAME_BYTES,
  NEST_SOCKET_PATH,
  parseNestFrame,
  type ServerFrame,
  TROOP_SUBPROTOCOL,
} from "../protocol/troop.ts";
import { type Actor, chainOf } from "./actors.ts";
import type { Troop } from "./context.ts";
import { applyNestFrame } from "./frames.ts";
import { AuthError } from "./idp-link.ts";

/**
 * The nest sockets (docs/control-plane.md, "The socket"). Authenticated at the upgrade by the
 * Authorization header only (a query string is refused before any upgrade); one socket per nest
 * (a second one is refused with CLOSE.duplicate unless the first fails a ping within
 * DUPLICATE_PING_MS, then it replaces it); closed at the token's exp unless a reauth frame brought
 * a fresh token; closed within a second of a revocation event naming one of its token's handles;
 * pinged every pingIntervalS, closed when the pong does not come before the next ping.
 */

export const DUPLICATE_PING_MS = 1000;
/** Intents sent per (re)delivery round; the rest follow once these are acked or on the next push. */
const DELIVERY_BATCH = 256;

interface Conn {
  ws: WebSocket;
  nest: string;
  actor: Actor;
  alive: boolean;
  expTimer: NodeJS.Timeout | undefined;
  /** A delivery round is under way (pushes meanwhile run once more after it). */
  delivering: boolean;
  again: boolean;
  /** Intents sent on this connection (a new connection sends the unacknowledged ones again). */
  sent: Set<string>;
  /** Frames are handled one after another, in the order they came (a result never overtakes its ack). */
  chain: Promise<void>;
}

/** A close reason fits RFC 6455's 123 bytes (ws throws beyond): cut on a character boundary. */
export function closeReason(text: string): string {
  let out = text;
  while (Buffer.byteLength(out) > 123) out = out.slice(0, -1);
  return out;
}

function refuseUpgrade(
  socket: Duplex,
  status: number,
  code: ConstructorParameters<typeof ProblemError>[0],
  detail: string,
): void {
  const problem = new ProblemError(code, detail).toProblem(NEST_SOCKET_PATH);
  const body = JSON.stringify({ ...problem, status });
  const reason =
    {
      400: "Bad Request",
      401: "Unauthorized",
      403: "Forbidden",
      429: "Too Many Requests",
      503: "Service Unavailable",
    }[status] ?? "Error";
  socket.on("error", () => {});
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: ${PROBLEM_CONTENT_TYPE}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `${status === 401 ? 'www-authenticate: Bearer realm="apes-troop"\r\n' : ""}connection: close\r\n\r\n${body}`,
  );
  socket.destroy();
}

export class Hub {
  private readonly troop: Troop;
  private readonly wss: WebSocketServer;
  private readonly conns = new Map<string, Conn>();
  private readonly byHandle = new Map<string, Set<Conn>>();
  private readonly pinger: NodeJS.Timeout;

  constructor(troop: Troop) {
    this.troop = troop;
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: MAX_FRAME_BYTES,
      perMessageDeflate: false,
      clientTracking: false,
      handleProtocols: (offered) => (offered.has(TROOP_SUBPROTOCOL) ? TROOP_SUBPROTOCOL : false),
    });
    troop.link.onRevoked((handle) => this.revoked(handle));
    // One sweep for every socket: a missing pong since the last ping ends the connection.
    this.pinger = setInterval(() => this.pingAll(), troop.pingIntervalS * 1000);
    this.pinger.unref();
  }

  get size(): number {
    return this.conns.size;
  }

  connected(nest: string): boolean {
    return this.conns.has(nest);
  }

  /** The nests holding a socket here. */
  nests(): string[] {
    return [...this.conns.keys()];
  }

  /** The `upgrade` event of the HTTP server. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    void this.admit(req, socket, head).catch((e) => {
      this.troop.log.log("error", "upgrade failed", { error: (e as Error).message });
      refuseUpgrade(socket, 503, "unavailable", "try again later");
    });
  }

  private async admit(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const url = req.url ?? "";
    const refuse = (
      status: number,
      code: ConstructorParameters<typeof ProblemError>[0],
      detail: string,
      fields: Record<string, unknown> = {},
    ) => {
      this.troop.audit.write("socket.refused", { status, reason: detail, ...fields });
      refuseUpgrade(socket, status, code, detail);
    };
    // Never a token (or anything else) in the URL: it ends up in proxy and access logs.
    if (url.includes("?"))
      return refuse(400, "invalid_request", "no query string is accepted on the nest socket");
    if (url !== NEST_SOCKET_PATH) return refuse(400, "not_found", `the nest socket is ${NEST_SOCKET_PATH}`);
    const protocols = String(req.headers["sec-websocket-protocol"] ?? "")
      .split(",")
      .map((p) => p.trim());
    if (!protocols.includes(TROOP_SUBPROTOCOL))
      return refuse(400, "invalid_request", `offer the subprotocol ${TROOP_SUBPROTOCOL}`);
    const h = req.headers.authorization;
    const m = h ? /^Bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(h) : null;
    if (!m)
      return refuse(
        401,
        "unauthorized",
        "send Authorization: Bearer <token> (the nest's token for the troop)",
      );
    let actor: Actor;
    try {
      this.troop.admitToken(m[1]!, req.socket.remoteAddress ?? "");
      actor = await this.troop.link.authenticate(m[1]!);
    } catch (e) {
      if (e instanceof ProblemError && e.status === 429) return refuse(429, "rate_limited", e.message);
      if (e instanceof AuthError)
        return refuse(
          e.status,
          e.status === 403 ? "forbidden" : e.status === 503 ? "unavailable" : "invalid_token",
          e.message,
        );
      throw e;
    }
    const nest = actor.holder;
    const old = this.conns.get(nest);
    if (old && (await this.answersPing(old))) {
      // No silent takeover: the live connection stays, the new one learns why it is refused.
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        this.troop.audit.write("socket.refused", { ...chainOf(actor), nest, reason: "duplicate" });
        ws.close(CLOSE.duplicate, "this nest is already connected");
      });
      return;
    }
    if (old) this.end(old, CLOSE.pingTimeout, "replaced: no pong to the duplicate check");
    await this.troop.store.seenNest(nest, actor.commanders, actor.actingFor, this.troop.now());
    this.wss.handleUpgrade(req, socket, head, (ws) => this.opened(ws, nest, actor));
  }

  private answersPing(c: Conn): Promise<boolean> {
    return new Promise((resolve) => {
      if (c.ws.readyState !== c.ws.OPEN) return resolve(false);
      const timer = setTimeout(() => {
        c.ws.off("pong", pong);
        resolve(false);
      }, DUPLICATE_PING_MS);
      const pong = () => {
        clearTimeout(timer);
        resolve(true);
      };
      c.ws.once("pong", pong);
      c.ws.ping();
    });
  }

  private opened(ws: WebSocket, nest: string, actor: Actor): void {
    const c: Conn = {
      ws,
      nest,
      actor,
      alive: true,
      expTimer: undefined,
      delivering: false,
      again: false,
      sent: new Set(),
      chain: Promise.resolve(),
    };
    // Another upgrade for this nest may have completed meanwhile: the first one stays.
    if (this.conns.has(nest)) {
      ws.close(CLOSE.duplicate, "this nest is already connected");
      return;
    }
    this.conns.set(nest, c);
    this.index(c);
    this.armExpiry(c);
    ws.on("pong", () => {
      c.alive = true;
    });
    ws.on("message", (data, isBinary) => {
      if (isBinary) return this.end(c, CLOSE.badFrame, "binary frames are not accepted");
      const text = data.toString();
      c.chain = c.chain
        .then(() => this.frame(c, text))
        .catch((e) => {
          this.troop.log.log("error", "frame handling failed", { nest, error: (e as Error).message });
          this.end(c, CLOSE.badFrame, "internal error");
        });
    });
    ws.on("error", () => {});
    ws.on("close", (code) => {
      this.forget(c);
      this.troop.audit.write("socket.closed", { ...chainOf(c.actor), nest, code });
    });
    this.troop.audit.write("socket.open", { ...chainOf(actor), nest, kind: actor.kind });
    this.troop.log.log("info", "nest connected", { nest, kind: actor.kind });
    this.send(c, {
      type: "hello",
      nest,
      server_time: this.troop.now(),
      ping_interval_s: this.troop.pingIntervalS,
      reauth_by: actor.exp,
    });
    this.push(nest);
  }

  private index(c: Conn): void {
    for (const h of c.actor.rev) {
      const set = this.byHandle.get(h) ?? new Set<Conn>();
      this.byHandle.set(h, set);
      set.add(c);
    }
  }

  private unindex(c: Conn): void {
    for (const h of c.actor.rev) {
      const set = this.byHandle.get(h);
      set?.delete(c);
      if (set?.size === 0) this.byHandle.delete(h);
    }
  }

  private armExpiry(c: Conn): void {
    clearTimeout(c.expTimer);
    const ms = Math.max(0, c.actor.exp * 1000 - Date.now());
    c.expTimer = setTimeout(
      () => this.end(c, CLOSE.tokenExpired, "the token expired; reauth before reauth_by"),
      ms,
    );
    c.expTimer.unref();
  }

  private forget(c: Conn): void {
    clearTimeout(c.expTimer);
    this.unindex(c);
    if (this.conns.get(c.nest) === c) this.conns.delete(c.nest);
  }

  private end(c: Conn, code: number, reason: string): void {
    this.forget(c);
    if (c.ws.readyState === c.ws.OPEN || c.ws.readyState === c.ws.CONNECTING) {
      c.ws.close(code, closeReason(reason));
      // A peer that does not finish the closing handshake is cut off.
      setTimeout(() => c.ws.terminate(), 2000).unref();
    }
  }

  private send(c: Conn, frame: ServerFrame): void {
    if (c.ws.readyState === c.ws.OPEN) c.ws.send(JSON.stringify(frame));
  }

  private async frame(c: Conn, text: string): Promise<void> {
    if (this.conns.get(c.nest) !== c) return;
    const parsed = parseNestFrame(text);
    if (!parsed.ok) {
      this.troop.audit.write("frame.refused", { ...chainOf(c.actor), nest: c.nest, reason: parsed.reason });
      return this.end(c, CLOSE.badFrame, parsed.reason);
    }
    const f = parsed.value;
    if (f.type === "reauth") return this.reauth(c, f.token);
    const r = await applyNestFrame(this.troop, c.nest, c.actor, f, "socket");
    if (!r.ok) this.send(c, { type: "error", code: r.code, detail: r.detail });
    else if (f.type === "ack") {
      c.sent.delete(f.intent_id);
      this.push(c.nest);
    }
  }

  private async reauth(c: Conn, token: string): Promise<void> {
    let actor: Actor;
    try {
      actor = await this.troop.link.authenticate(token);
    } catch (e) {
      const reason = e instanceof Error ? e.message : "refused";
      this.troop.audit.write("frame.refused", { ...chainOf(c.actor), nest: c.nest, type: "reauth", reason });
      return this.end(c, CLOSE.reauthRefused, reason);
    }
    if (actor.holder !== c.nest || actor.kind !== c.actor.kind || actor.actingFor !== c.actor.actingFor) {
      this.troop.audit.write("frame.refused", {
        ...chainOf(c.actor),
        nest: c.nest,
        type: "reauth",
        reason: "names someone else",
      });
      return this.end(c, CLOSE.reauthRefused, "the fresh token names another actor");
    }
    this.unindex(c);
    c.actor = actor;
    this.index(c);
    this.armExpiry(c);
    await this.troop.store.seenNest(c.nest, actor.commanders, actor.actingFor, this.troop.now());
    this.troop.audit.write("socket.reauth", { ...chainOf(actor), nest: c.nest, exp: actor.exp });
    this.send(c, { type: "reauth_ok", reauth_by: actor.exp });
  }

  /** Sends the nest's unacknowledged intents in seq order, marking queued ones delivered. */
  push(nest: string): void {
    const c = this.conns.get(nest);
    if (!c) return;
    if (c.delivering) {
      c.again = true;
      return;
    }
    c.delivering = true;
    void (async () => {
      try {
        do {
          c.again = false;
          const pending = await this.troop.store.pendingFor(nest, DELIVERY_BATCH);
          for (const p of pending) {
            if (this.conns.get(nest) !== c) return;
            // Delivered again after a reconnect (at-least-once): the nest dedupes by id.
            if (c.sent.has(p.intent.id)) continue;
            c.sent.add(p.intent.id);
            this.send(c, { type: "intent", intent: p.intent });
            if (p.state === "queued") {
              await this.troop.store.applyEvent(p.intent.id, nest, "delivered", undefined, this.troop.now());
              this.troop.audit.write("intent.delivered", {
                nest,
                intent: p.intent.id,
                seq: p.intent.seq,
                channel: "socket",
              });
            }
          }
        } while (c.again);
      } finally {
        c.delivering = false;
      }
    })().catch((e) => this.troop.log.log("error", "delivery failed", { nest, error: (e as Error).message }));
  }

  private revoked(handle: string): void {
    const set = this.byHandle.get(handle);
    if (!set) return;
    for (const c of [...set]) {
      this.troop.audit.write("socket.closed", { ...chainOf(c.actor), nest: c.nest, reason: "revoked" });
      this.end(c, CLOSE.revoked, "revoked at the IdP");
    }
  }

  private pingAll(): void {
    for (const c of [...this.conns.values()]) {
      if (!c.alive) {
        this.end(c, CLOSE.pingTimeout, "no pong");
        continue;
      }
      // A socket closing meanwhile is left to its close event (ping would throw on it).
      if (c.ws.readyState !== c.ws.OPEN) continue;
      c.alive = false;
      c.ws.ping();
    }
  }

  /** Shutdown: every socket is closed with 1001 (going away), then cut off if it lingers. */
  async close(): Promise<void> {
    clearInterval(this.pinger);
    const all = [...this.conns.values()];
    await Promise.all(
      all.map(
        (c) =>
          new Promise<void>((resolve) => {
            this.forget(c);
            c.ws.once("close", () => resolve());
            c.ws.close(CLOSE.goingAway, "the troop is shutting down");
            setTimeout(() => {
              c.ws.terminate();
              resolve();
            }, 2000).unref();
          }),
      ),
    );
  }
}
