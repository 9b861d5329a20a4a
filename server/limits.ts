import { isIPv6, type Server, type Socket } from "node:net";
import { PROBLEM_CONTENT_TYPE, ProblemError } from "../protocol/problem.ts";
import type { RateLimiter } from "./rate-limit.ts";

/**
 * The resource limits every server shares (README "Limits and errors" lists them): what a client
 * may hold (connections) and how long it may take to send a request. How often it may call is per
 * endpoint class, which each server names (rate-limit.ts; the IdP's in idp/limits.ts).
 */

/** Headers must arrive within this; then the whole request (headers and body) within REQUEST. */
export const HEADERS_TIMEOUT_MS = 10_000;
/** A request's body must arrive whole within this of its start: bodies are <= 64 KiB, so a client
 *  sending slower than ~6.5 KB/s on average cannot hold a request (long polls are unaffected: the
 *  wait happens after the request has arrived). */
export const REQUEST_TIMEOUT_MS = 10_000;
/** An idle keep-alive connection is closed after this. */
export const KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** How often the deadlines above are checked (Node's default is 30 s). */
export const DEADLINE_CHECK_MS = 1_000;

export {
  DEFAULT_CONNECTION_RATE,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
} from "./limit-defaults.ts";

/**
 * The client a connection or request is counted against: the IPv4 address (also when IPv4-mapped),
 * or the /64 prefix of an IPv6 address (one subscriber usually holds a whole /64).
 */
export function clientKey(address: string): string {
  const bare = address.replace(/%.*$/, "").toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(bare);
  if (mapped) return mapped[1]!;
  if (!isIPv6(bare)) return bare;
  const [head, tail] = bare.includes("::") ? bare.split("::") : [bare, ""];
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  // An embedded dotted quad (::ffff:1.2.3.4 style) stands for two groups, always in the last 32 bits.
  const size = (groups: string[]) => groups.reduce((n, g) => n + (g.includes(".") ? 2 : 1), 0);
  const zeros = Array<string>(Math.max(0, 8 - size(left) - size(right))).fill("0");
  const prefix = [...left, ...zeros, ...right].slice(0, 4).map((g) => Number.parseInt(g, 16).toString(16));
  return `${prefix.join(":")}::/64`;
}

/** Open connections per client and in total; pure bookkeeping for capConnections. */
export class ConnectionCounter {
  private readonly open = new Map<string, number>();
  private total = 0;
  private readonly perClient: number;
  private readonly max: number;
  constructor(perClient: number, max: number) {
    this.perClient = perClient;
    this.max = max;
  }
  /** Counts the connection and returns true, or returns false (over a cap: refuse it). */
  tryOpen(client: string): boolean {
    const mine = this.open.get(client) ?? 0;
    if (mine >= this.perClient || this.total >= this.max) return false;
    this.open.set(client, mine + 1);
    this.total++;
    return true;
  }
  close(client: string): void {
    const mine = this.open.get(client) ?? 0;
    if (mine <= 1) this.open.delete(client);
    else this.open.set(client, mine - 1);
    this.total--;
  }
}

const REFUSED_BODY = JSON.stringify(
  new ProblemError("unavailable", "too many connections from this client or in total; retry later", {
    retry_after: 1,
  }).toProblem(),
);
const REFUSED_RESPONSE =
  "HTTP/1.1 503 Service Unavailable\r\n" +
  `content-type: ${PROBLEM_CONTENT_TYPE}\r\n` +
  `content-length: ${Buffer.byteLength(REFUSED_BODY)}\r\n` +
  "retry-after: 1\r\nconnection: close\r\n\r\n" +
  REFUSED_BODY;

/**
 * Caps connections at accept, before any parsing: beyond a cap (or the rate of new connections)
 * a plain-HTTP client gets a 503
 * with Retry-After and the connection is closed; a TLS connection is closed at once (nothing can
 * be said before the handshake). Wraps the server's own connection listeners so a refused socket
 * never reaches the HTTP parser.
 */
export function capConnections(
  server: Server,
  counter: ConnectionCounter,
  tls: boolean,
  newConnections?: RateLimiter,
): void {
  const inner = server.listeners("connection") as ((socket: Socket) => void)[];
  server.removeAllListeners("connection");
  server.on("connection", (socket: Socket) => {
    const client = clientKey(socket.remoteAddress ?? "");
    if ((newConnections?.take(client, Date.now()) ?? 0) > 0) return refuse(socket, tls);
    if (!counter.tryOpen(client)) return refuse(socket, tls);
    socket.once("close", () => counter.close(client));
    for (const listener of inner) listener.call(server, socket);
  });
}

function refuse(socket: Socket, tls: boolean): void {
  socket.on("error", () => {});
  if (tls) {
    socket.destroy();
    return;
  }
  // Answer, then drain what the client sends until it closes (closing with unread input would
  // reset the connection and could lose the answer), at most briefly.
  socket.end(REFUSED_RESPONSE);
  socket.resume();
  socket.once("end", () => socket.destroy());
  socket.setTimeout(2_000, () => socket.destroy());
}
