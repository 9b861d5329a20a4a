import WebSocket from "ws";
import { type JsonHttp, requestJson } from "../client/http.ts";
import {
  type Intent,
  MAX_FRAME_BYTES,
  NEST_SOCKET_PATH,
  type NestFrame,
  parseServerFrame,
  type ServerFrame,
  TROOP_SUBPROTOCOL,
} from "../protocol/troop.ts";
import { type BackoffPolicy, fullJitter, RECONNECT_BACKOFF } from "./backoff.ts";
import type { NestLog } from "./log.ts";

/**
 * The nest's link to the troop (the frames: protocol/troop.ts): a WebSocket authenticated at the upgrade by
 * `Authorization: Bearer` (the runtime's global WebSocket cannot send headers, hence the `ws`
 * client), subprotocol TROOP_SUBPROTOCOL. The troop pings; every frame or ping from it moves the
 * nest's own deadline, so a dead troop is noticed in seconds and the socket is dropped. Reconnects
 * with exponential backoff and full jitter; while the socket is down the nest polls the troop's REST
 * fallback (GET /v1/nest/intents, POST /v1/nest/frames) with the same token. Before `reauth_by` it
 * sends a fresh token in a `reauth` frame. Frames that cannot go out now wait in a bounded outbox.
 */

export interface LinkOptions {
  /** The troop's base URL (https, or http on loopback). */
  troop: string;
  /** A token for the troop's audience, fresh enough to be used now; `renew` asks for a new one. */
  token(renew?: boolean): Promise<string>;
  /** Called for every intent frame (socket) or polled intent, in order; the nest acks and reports. */
  onIntent(intent: Intent): Promise<void>;
  /** Called once per (re)connection after hello: e.g. to send the current status. */
  onConnected?(): void;
  log: NestLog;
  backoff?: BackoffPolicy;
  /** Fallback poll interval while the socket is down (ms). */
  pollMs?: number;
  /** Deadline for any sign of life from the troop before hello tells the ping interval (ms). */
  silenceMs?: number;
  random?: () => number;
  now?: () => number;
  /** Extra trust anchor for the troop's TLS (PEM). */
  ca?: string;
  http?: JsonHttp;
}

const OUTBOX_MAX = 1024;
const MAX_TIMER_MS = 2 ** 31 - 1;

export type LinkState = "connecting" | "open" | "down" | "stopped";

export class NestLink {
  private ws: WebSocket | undefined;
  private attempt = 0;
  private outbox: NestFrame[] = [];
  private timers = new Set<NodeJS.Timeout>();
  private deadline: NodeJS.Timeout | undefined;
  private reauthTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  /** A poll round is in flight: a second one would POST the outbox's head frame twice. */
  private polling = false;
  private silenceMs: number;
  private queue: Promise<void> = Promise.resolve();
  state: LinkState = "down";
  /** Counters for status and tests. */
  readonly stats = { connects: 0, polls: 0, reauths: 0, deadlineKills: 0 };

  private readonly o: LinkOptions;

  constructor(o: LinkOptions) {
    this.o = o;
    this.silenceMs = o.silenceMs ?? 15_000;
    const u = new URL(o.troop);
    if (u.protocol !== "https:" && !(u.protocol === "http:" && isLoopback(u.hostname)))
      throw new Error(`the troop URL must be https (plain http only on loopback): ${o.troop}`);
  }

  // Methods, not narrowed comparisons: the state changes while a method awaits.
  private stopped(): boolean {
    return this.state === "stopped";
  }

  private isOpen(): boolean {
    return this.state === "open";
  }

  private get now(): number {
    return (this.o.now ?? Date.now)();
  }

  private later(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  private clear(t: NodeJS.Timeout | undefined): void {
    if (!t) return;
    clearTimeout(t);
    this.timers.delete(t);
  }

  start(): void {
    if (this.state === "stopped") return;
    void this.connect();
  }

  /** Sends a frame now if the socket is open, else keeps it for the socket or the next poll. */
  send(frame: NestFrame): void {
    if (this.ws && this.state === "open" && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return;
    }
    this.outbox.push(frame);
    if (this.outbox.length > OUTBOX_MAX) this.outbox.splice(0, this.outbox.length - OUTBOX_MAX);
  }

  async stop(): Promise<void> {
    this.state = "stopped";
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const ws = this.ws;
    this.ws = undefined;
    if (ws && ws.readyState === WebSocket.OPEN) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          ws.terminate();
          resolve();
        }, 2000);
        ws.once("close", () => {
          clearTimeout(t);
          resolve();
        });
        ws.close(1000, "nest stopping");
      });
    } else ws?.terminate();
    await this.queue.catch(() => undefined);
  }

  private socketUrl(): string {
    const u = new URL(NEST_SOCKET_PATH, this.o.troop);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.toString();
  }

  private async connect(): Promise<void> {
    if (this.state === "stopped") return;
    this.state = "connecting";
    let token: string;
    try {
      token = await this.o.token();
    } catch (e) {
      this.o.log.log("warn", "no token for the troop", { error: (e as Error).message });
      return this.down();
    }
    if (this.stopped()) return;
    const ws = new WebSocket(this.socketUrl(), [TROOP_SUBPROTOCOL], {
      headers: { authorization: `Bearer ${token}` },
      maxPayload: MAX_FRAME_BYTES,
      handshakeTimeout: 10_000,
      perMessageDeflate: false,
      ...(this.o.ca ? { ca: this.o.ca } : {}),
    });
    this.ws = ws;
    let closed = false;
    const onGone = (why: string, fields: Record<string, unknown> = {}) => {
      if (closed) return;
      closed = true;
      this.clear(this.deadline);
      this.clear(this.reauthTimer);
      if (this.ws === ws) this.ws = undefined;
      if (this.state !== "stopped") {
        this.o.log.log("info", "troop connection lost", { why, ...fields });
        this.down();
      }
    };
    ws.on("unexpected-response", (_req, res) => {
      onGone("upgrade refused", { status: res.statusCode });
      ws.terminate();
    });
    ws.on("error", (e) => onGone("error", { error: e.message }));
    ws.on("close", (code, reason) =>
      onGone("closed", { code, reason: reason.toString("utf8").slice(0, 200) }),
    );
    ws.on("open", () => {
      if (ws.protocol !== TROOP_SUBPROTOCOL) {
        this.o.log.log("warn", "troop selected another subprotocol", { protocol: ws.protocol });
        ws.terminate();
        return;
      }
      this.stats.connects++;
      this.arm(ws, this.silenceMs);
    });
    ws.on("ping", () => this.arm(ws, this.silenceMs));
    ws.on("message", (data, isBinary) => {
      this.arm(ws, this.silenceMs);
      if (isBinary) {
        this.o.log.log("warn", "binary frame from the troop ignored");
        return;
      }
      const parsed = parseServerFrame(data.toString("utf8"));
      if (!parsed.ok) {
        this.o.log.log("warn", "bad frame from the troop", { reason: parsed.reason });
        return;
      }
      this.onFrame(ws, parsed.value);
    });
  }

  /** The troop must show a sign of life (a frame, a ping) within `ms`, else the socket is dropped. */
  private arm(ws: WebSocket, ms: number): void {
    this.clear(this.deadline);
    this.deadline = this.later(ms, () => {
      if (this.ws !== ws) return;
      this.stats.deadlineKills++;
      this.o.log.log("warn", "troop silent past its deadline: dropping the socket", { ms });
      ws.terminate();
    });
  }

  private onFrame(ws: WebSocket, f: ServerFrame): void {
    switch (f.type) {
      case "hello": {
        this.state = "open";
        this.attempt = 0;
        this.stopPolling();
        // Two missed pings and some slack: the troop pings every ping_interval_s.
        if (f.ping_interval_s > 0) this.silenceMs = f.ping_interval_s * 2000 + 2000;
        this.arm(ws, this.silenceMs);
        this.scheduleReauth(ws, f.reauth_by);
        this.o.log.log("info", "connected to the troop", { nest: f.nest, reauth_by: f.reauth_by });
        const pending = this.outbox.splice(0);
        for (const frame of pending) this.send(frame);
        this.o.onConnected?.();
        return;
      }
      case "reauth_ok":
        this.scheduleReauth(ws, f.reauth_by);
        return;
      case "intent":
        this.deliver(f.intent);
        return;
      case "error":
        this.o.log.log("warn", "troop reported an error", { code: f.code, detail: f.detail });
        return;
    }
  }

  /** Intents are handled one after the other, in the order they arrived. */
  private deliver(intent: Intent): void {
    this.queue = this.queue
      .then(() => this.o.onIntent(intent))
      .catch((e) =>
        this.o.log.log("error", "intent handling failed", { intent: intent.id, error: (e as Error).message }),
      );
  }

  private scheduleReauth(ws: WebSocket, reauthByS: number): void {
    this.clear(this.reauthTimer);
    const left = reauthByS * 1000 - this.now;
    // A fifth of what is left, at least one second and at most thirty before the deadline.
    const margin = Math.min(30_000, Math.max(1000, Math.floor(left / 5)));
    // setTimeout fires at once for delays beyond 2^31-1 ms (~24.8 days): clamp, re-auth early instead.
    this.reauthTimer = this.later(Math.min(MAX_TIMER_MS, Math.max(0, left - margin)), () => {
      void (async () => {
        try {
          const token = await this.o.token(true);
          if (this.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
          ws.send(JSON.stringify({ type: "reauth", token } satisfies NestFrame));
          this.stats.reauths++;
        } catch (e) {
          this.o.log.log("warn", "re-authentication failed: the troop will close at its deadline", {
            error: (e as Error).message,
          });
        }
      })();
    });
  }

  private down(): void {
    if (this.state === "stopped") return;
    this.state = "down";
    const delay = fullJitter(this.attempt++, this.o.backoff ?? RECONNECT_BACKOFF, this.o.random);
    this.later(delay, () => void this.connect());
    this.startPolling();
  }

  private startPolling(): void {
    if (this.pollTimer || this.polling || this.state === "stopped") return;
    const tick = async () => {
      this.pollTimer = undefined;
      if (this.state === "open" || this.state === "stopped") return;
      this.polling = true;
      try {
        await this.pollOnce();
      } catch (e) {
        this.o.log.log("debug", "poll failed", { error: (e as Error).message });
      } finally {
        this.polling = false;
      }
      if (!this.isOpen() && !this.stopped())
        this.pollTimer = this.later(this.o.pollMs ?? 5000, () => void tick());
    };
    this.pollTimer = this.later(0, () => void tick());
  }

  private stopPolling(): void {
    this.clear(this.pollTimer);
    this.pollTimer = undefined;
  }

  /** One round of the REST fallback: flush the outbox, then fetch and handle queued intents. */
  async pollOnce(): Promise<void> {
    const http = this.o.http ?? requestJson;
    const token = await this.o.token();
    const headers = { authorization: `Bearer ${token}` };
    const base = this.o.troop.replace(/\/+$/, "");
    this.stats.polls++;
    // One frame per POST (docs/control-plane.md, REST). A frame the troop refuses (403: not addressed
    // to us, 409: a transition that does not apply) is dropped; any other failure keeps the rest queued.
    while (this.outbox.length > 0) {
      const frame = this.outbox[0]!;
      const res = await http(`${base}/v1/nest/frames`, {
        method: "POST",
        headers,
        json: frame,
        ...(this.o.ca ? { ca: this.o.ca } : {}),
      });
      if (res.status === 403 || res.status === 409) {
        this.o.log.log("warn", "troop refused a frame", { status: res.status, type: frame.type });
      } else if (res.status >= 300) {
        throw new Error(`POST /v1/nest/frames: ${res.status}`);
      }
      this.outbox.shift();
    }
    const res = await http(`${base}/v1/nest/intents`, {
      headers,
      maxBytes: 4 * MAX_FRAME_BYTES * 16,
      ...(this.o.ca ? { ca: this.o.ca } : {}),
    });
    if (res.status !== 200) throw new Error(`GET /v1/nest/intents: ${res.status}`);
    const b = res.body as { intents?: unknown; data?: unknown } | unknown[] | undefined;
    const list = Array.isArray(b)
      ? b
      : Array.isArray(b?.intents)
        ? b.intents
        : Array.isArray(b?.data)
          ? b.data
          : [];
    for (const raw of (list as unknown[]).slice(0, 256)) {
      const parsed = parseServerFrame(JSON.stringify({ type: "intent", intent: raw }));
      if (parsed.ok && parsed.value.type === "intent") this.deliver(parsed.value.intent);
      else
        this.o.log.log("warn", "bad polled intent", { reason: parsed.ok ? "not an intent" : parsed.reason });
    }
    await this.queue;
  }
}

function isLoopback(host: string): boolean {
  return host === "127.0.0.1" || host === "[::1]" || host === "::1" || host === "localhost";
}
