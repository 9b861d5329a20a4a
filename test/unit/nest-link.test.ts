import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { type WebSocket, WebSocketServer } from "ws";
import { NestLink } from "../../nest/link.ts";
import { nestLogger } from "../../nest/log.ts";
import { type Intent, NEST_SOCKET_PATH, type NestFrame, TROOP_SUBPROTOCOL } from "../../protocol/troop.ts";

/**
 * The nest's link against a small in-test peer (a `ws` server and an HTTP handler written here: the
 * troop itself is another part, tested on its own): what the upgrade carries, hello/intent/ack,
 * reconnect after a drop, the nest's own deadline against a silent peer, re-auth before reauth_by,
 * and the REST fallback while upgrades are refused.
 */

const NEST = "nest-h+agent@example.com";
const intent = (id: string, seq: number): Intent => ({
  id,
  nest: NEST,
  kind: "stop",
  agent: "bot1",
  seq,
  submitted_by: "alice@example.com",
  created_at: 1,
});

interface Peer {
  url: string;
  server: Server;
  wss: WebSocketServer;
  upgrades: IncomingMessage[];
  sockets: WebSocket[];
  received: NestFrame[];
  polled: string[];
  posted: NestFrame[][];
  refuseUpgrades: boolean;
  protocol: string;
  onSocket?: (ws: WebSocket) => void;
  queued: Intent[];
  close(): Promise<void>;
}

const peers: Peer[] = [];
const links: NestLink[] = [];
afterEach(async () => {
  for (const l of links.splice(0)) await l.stop();
  for (const p of peers.splice(0)) await p.close();
});

async function startPeer(): Promise<Peer> {
  const wss = new WebSocketServer({
    noServer: true,
    handleProtocols: () => peer.protocol,
  });
  const server = createServer((req, res) => {
    const auth = req.headers.authorization ?? "";
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      if (!auth.startsWith("Bearer ")) {
        res.writeHead(401).end();
        return;
      }
      if (req.method === "GET" && req.url === "/v1/nest/intents") {
        peer.polled.push(auth);
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ data: peer.queued.splice(0) }));
        return;
      }
      if (req.method === "POST" && req.url === "/v1/nest/frames") {
        const frame = JSON.parse(body) as NestFrame;
        peer.posted.push([frame]);
        // Like the troop: a result for an intent not addressed to this nest is refused (and dropped).
        if (frame.type === "result" && frame.intent_id === "not-mine") res.writeHead(403).end();
        else res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
        return;
      }
      res.writeHead(404).end();
    });
  });
  server.on("upgrade", (req, socket, head) => {
    peer.upgrades.push(req);
    if (peer.refuseUpgrades) {
      socket.end("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      peer.sockets.push(ws);
      ws.on("message", (d) => peer.received.push(JSON.parse(d.toString()) as NestFrame));
      if (peer.onSocket) peer.onSocket(ws);
      else hello(ws);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as AddressInfo).port;
  const peer: Peer = {
    url: `http://127.0.0.1:${port}`,
    server,
    wss,
    upgrades: [],
    sockets: [],
    received: [],
    polled: [],
    posted: [],
    refuseUpgrades: false,
    protocol: TROOP_SUBPROTOCOL,
    queued: [],
    async close() {
      for (const s of wss.clients) s.terminate();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  peers.push(peer);
  return peer;
}

function hello(ws: WebSocket, reauthInS = 3600, pingIntervalS = 0): void {
  ws.send(
    JSON.stringify({
      type: "hello",
      nest: NEST,
      server_time: Math.floor(Date.now() / 1000),
      ping_interval_s: pingIntervalS,
      reauth_by: Math.floor(Date.now() / 1000) + reauthInS,
    }),
  );
}

async function until<T>(what: string, probe: () => T | undefined | false, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJuZXN0In0.c2ln";

function link(
  peer: Peer,
  extra: Partial<ConstructorParameters<typeof NestLink>[0]> = {},
  lines: string[] = [],
) {
  const got: Intent[] = [];
  const tokens: boolean[] = [];
  const l = new NestLink({
    troop: peer.url,
    token: async (renew) => {
      tokens.push(Boolean(renew));
      return renew ? `${TOKEN}-renewed` : TOKEN;
    },
    onIntent: async (i) => {
      got.push(i);
    },
    log: nestLogger("debug", (line) => lines.push(line)),
    backoff: { baseMs: 20, maxMs: 100 },
    pollMs: 50,
    ...extra,
  });
  links.push(l);
  l.start();
  return { l, got, tokens, lines };
}

describe("nest link (WebSocket client to the troop)", () => {
  it("authenticates at the upgrade by the Authorization header, never the URL, and offers the subprotocol", async () => {
    const peer = await startPeer();
    const { l } = link(peer);
    await until("open", () => l.state === "open");
    const req = peer.upgrades[0]!;
    expect(req.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(req.url).toBe(NEST_SOCKET_PATH);
    expect(req.headers["sec-websocket-protocol"]).toBe(TROOP_SUBPROTOCOL);
  });

  it("hands intent frames over in order and sends frames back on the socket", async () => {
    const peer = await startPeer();
    const { l, got } = link(peer);
    await until("open", () => l.state === "open");
    const ws = peer.sockets[0]!;
    ws.send(JSON.stringify({ type: "intent", intent: intent("a", 1) }));
    ws.send(JSON.stringify({ type: "intent", intent: { ...intent("b", 2), kind: "format-disk" } }));
    ws.send("{not json");
    ws.send(JSON.stringify({ type: "intent", intent: intent("c", 3) }));
    await until("two intents", () => got.length === 2);
    expect(got.map((i) => i.id)).toEqual(["a", "c"]);
    l.send({ type: "ack", intent_id: "a" });
    await until("ack", () => peer.received.length === 1);
    expect(peer.received[0]).toEqual({ type: "ack", intent_id: "a" });
  });

  it("reconnects after the socket drops, and flushes what waited in the outbox", async () => {
    const peer = await startPeer();
    const { l } = link(peer);
    await until("open", () => l.state === "open");
    peer.sockets[0]!.terminate();
    // The reconnect may come within one probe interval (full jitter from 0 ms): seen as a second connect.
    await until("down", () => l.state !== "open" || l.stats.connects >= 2);
    l.send({ type: "ack", intent_id: "while-down" });
    await until("reconnected", () => l.stats.connects >= 2 && l.state === "open");
    await until(
      "outbox flushed",
      () =>
        peer.received.some((f) => f.type === "ack" && f.intent_id === "while-down") ||
        peer.posted.flat().some((f) => f.type === "ack" && f.intent_id === "while-down"),
    );
  });

  it("drops a troop that goes silent past the nest's own deadline, and connects again", async () => {
    const peer = await startPeer();
    peer.onSocket = () => undefined; // accepts, then says nothing at all
    const { l } = link(peer, { silenceMs: 150 });
    await until("deadline kill", () => l.stats.deadlineKills >= 1);
    await until("second upgrade", () => peer.upgrades.length >= 2);
  });

  it("stays connected while the troop pings within the deadline", async () => {
    const peer = await startPeer();
    const pingers: NodeJS.Timeout[] = [];
    peer.onSocket = (ws) => pingers.push(setInterval(() => ws.ping(), 40));
    const { l } = link(peer, { silenceMs: 150 });
    await until("connected", () => l.stats.connects === 1);
    await new Promise((r) => setTimeout(r, 600));
    for (const p of pingers) clearInterval(p);
    expect(l.stats.deadlineKills).toBe(0);
    expect(peer.upgrades).toHaveLength(1);
  });

  it("sends a fresh token in a reauth frame before reauth_by", async () => {
    const peer = await startPeer();
    peer.onSocket = (ws) => hello(ws, 2);
    const { l, tokens } = link(peer);
    await until("open", () => l.state === "open");
    const reauth = await until("reauth frame", () => peer.received.find((f) => f.type === "reauth"));
    expect(reauth).toEqual({ type: "reauth", token: `${TOKEN}-renewed` });
    expect(tokens).toContain(true);
    expect(l.stats.reauths).toBe(1);
  });

  it("falls back to polling the REST API while upgrades fail: intents come in, frames go out", async () => {
    const peer = await startPeer();
    peer.refuseUpgrades = true;
    peer.queued.push(intent("p1", 1), intent("p2", 2));
    const { l, got, lines } = link(peer);
    l.send({ type: "result", intent_id: "not-mine", state: "done" });
    l.send({ type: "result", intent_id: "earlier", state: "done" });
    await until("polled intents", () => got.length === 2);
    expect(got.map((i) => i.id)).toEqual(["p1", "p2"]);
    await until("posted frames", () => peer.posted.length >= 2);
    // One frame per POST, in order; the refused one is not sent again.
    expect(peer.posted.slice(0, 2)).toEqual([
      [{ type: "result", intent_id: "not-mine", state: "done" }],
      [{ type: "result", intent_id: "earlier", state: "done" }],
    ]);
    expect(peer.polled[0]).toBe(`Bearer ${TOKEN}`);
    // Back to the socket once upgrades work again; polling stops.
    peer.refuseUpgrades = false;
    await until("open again", () => l.state === "open");
    const polls = l.stats.polls;
    await new Promise((r) => setTimeout(r, 200));
    expect(l.stats.polls).toBe(polls);
    expect(peer.posted.filter((p) => p[0]?.type === "result" && p[0].intent_id === "not-mine")).toHaveLength(
      1,
    );
    expect(lines.join("")).not.toContain(TOKEN);
  });

  it("refuses a troop that selects no or another subprotocol", async () => {
    const peer = await startPeer();
    peer.protocol = "something-else";
    const { l, lines } = link(peer);
    await until("second attempt", () => peer.upgrades.length >= 2);
    expect(l.stats.connects).toBe(0);
    expect(lines.join("")).not.toContain(TOKEN);
  });

  it("refuses a troop URL that is plain http off loopback", () => {
    expect(
      () =>
        new NestLink({
          troop: "http://troop.example.com",
          token: async () => TOKEN,
          onIntent: async () => undefined,
          log: nestLogger("error", () => undefined),
        }),
    ).toThrow(/https/);
  });
});
