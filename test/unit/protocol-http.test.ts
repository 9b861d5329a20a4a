import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BodyTooLargeError } from "../../protocol/bounded-body.ts";
import { fetchBytes, fetchJson, HttpFailure, openHttp } from "../../protocol/http.ts";
import { type HostileServer, startHostileServer } from "../helpers/hostile-http.ts";
import { loopbackCert } from "../helpers/idp.ts";

/**
 * The one HTTP client (protocol/http.ts) against real loopback servers: a dripping server meets the
 * deadline, an endless body and a huge Content-Length meet the size cap, a pinned CA refuses another
 * certificate, plain http is refused before any network, and no socket outlives a request.
 */

const KiB = 1024;

async function failureOf(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a failure");
}

describe("bounds against a hostile server", () => {
  let hostile: HostileServer | undefined;
  const start = async (mode: Parameters<typeof startHostileServer>[0]) => {
    await hostile?.close();
    hostile = await startHostileServer(mode);
    return hostile;
  };
  afterAll(() => hostile?.close());

  it("one deadline covers the whole body: a server dripping a byte every 50 ms is cut off", async () => {
    const s = await start("trickle");
    const e = await failureOf(fetchBytes(`${s.url}/x`, { timeoutMs: 400, maxBytes: 1024 * KiB }));
    expect(e).toBeInstanceOf(HttpFailure);
    expect((e as HttpFailure).kind).toBe("timeout");
    expect(e.message).toMatch(/no complete answer within 0.4 s/);
    await s.settled();
  });

  it("the deadline also covers a server that never answers", async () => {
    const s = await start(() => undefined);
    const e = await failureOf(fetchBytes(`${s.url}/x`, { timeoutMs: 300, maxBytes: KiB }));
    expect((e as HttpFailure).kind).toBe("timeout");
    await s.settled();
  });

  it("an endless body ends at the cap, reading little more than it", async () => {
    const s = await start("endless");
    const e = await failureOf(fetchBytes(`${s.url}/x`, { timeoutMs: 60_000, maxBytes: 256 * KiB }));
    expect(e).toBeInstanceOf(BodyTooLargeError);
    expect(e.message).toMatch(/larger than 256 KiB/);
    await s.settled();
    // Kernel buffers hold a few MiB at most; an unbounded reader would have taken all 60 s.
    expect(s.bytesSent()).toBeLessThan(64 * 1024 * KiB);
  });

  it("a Content-Length above the cap is refused before reading, and the connection closed", async () => {
    const s = await start("huge-length");
    const answer = await openHttp(`${s.url}/x`, { timeoutMs: 60_000, maxBytes: 256 * KiB });
    expect(answer.status).toBe(200);
    const e = await failureOf(answer.bytes());
    expect(e).toBeInstanceOf(BodyTooLargeError);
    // Closed now, not when the 60 s deadline passes.
    await s.settled();
  });

  it("an aborted signal ends a body being read", async () => {
    const s = await start("trickle");
    const controller = new AbortController();
    const answer = await openHttp(`${s.url}/x`, { signal: controller.signal, maxBytes: KiB });
    setTimeout(() => controller.abort(new Error("stop")), 100);
    const e = await failureOf(answer.bytes());
    expect((e as HttpFailure).kind).toBe("aborted");
    await s.settled();
  });

  it("without a deadline or a signal nothing is sent", async () => {
    const s = await start("endless");
    expect(() => openHttp(`${s.url}/x`, { maxBytes: KiB })).toThrow(/deadline/);
    expect(s.requests).toHaveLength(0);
  });
});

describe("plain http", () => {
  let hostile: HostileServer;
  beforeAll(async () => {
    hostile = await startHostileServer((_req, res) => res.end('{"ok":true}'));
  });
  afterAll(() => hostile.close());

  it("https only: refused before sending, even to loopback", async () => {
    const e = await failureOf(
      fetchJson(`${hostile.url}/x`, { timeoutMs: 5000, maxBytes: KiB, plainHttp: "never" }),
    );
    expect((e as HttpFailure).kind).toBe("scheme");
    expect(e.message).toMatch(/is not https/);
    expect(hostile.requests).toHaveLength(0);
  });

  it("loopback only: refused for another host without touching the network", async () => {
    // 192.0.2.0/24 is TEST-NET-1: a connection attempt would hang until the deadline, not fail fast.
    const e = await failureOf(
      fetchJson("http://192.0.2.10/x", { timeoutMs: 60_000, maxBytes: KiB, plainHttp: "loopback" }),
    );
    expect((e as HttpFailure).kind).toBe("scheme");
    expect(e.message).toMatch(/not loopback/);
  });

  it("loopback only: a loopback host is served", async () => {
    const r = await fetchJson(`${hostile.url}/x`, { timeoutMs: 5000, maxBytes: KiB, plainHttp: "loopback" });
    expect(r).toEqual({ status: 200, body: { ok: true } });
  });

  it("other schemes are refused", async () => {
    const e = await failureOf(
      fetchJson("file:///etc/passwd", { timeoutMs: 5000, maxBytes: KiB, plainHttp: "any" }),
    );
    expect((e as HttpFailure).kind).toBe("scheme");
  });
});

describe("https with a pinned CA", () => {
  let dir: string;
  let server: Server;
  let url: string;
  let servedCa: string;
  let otherCa: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "apes-protocol-http-"));
    mkdirSync(join(dir, "served"));
    mkdirSync(join(dir, "other"));
    const served = loopbackCert(join(dir, "served"));
    const other = loopbackCert(join(dir, "other"));
    servedCa = readFileSync(served.cert, "utf8");
    otherCa = readFileSync(other.cert, "utf8");
    server = createServer({ cert: servedCa, key: readFileSync(served.key) }, (_req, res) =>
      res.end('{"n":1}'),
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/x`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  it("the pinned certificate is trusted", async () => {
    expect(await fetchJson(url, { timeoutMs: 5000, maxBytes: KiB, ca: [servedCa] })).toEqual({
      status: 200,
      body: { n: 1 },
    });
  });

  it("another CA's certificate is refused", async () => {
    const e = await failureOf(fetchJson(url, { timeoutMs: 5000, maxBytes: KiB, ca: [otherCa] }));
    expect((e as HttpFailure).kind).toBe("network");
    expect(e.message).toMatch(/certificate|self.signed/i);
  });

  it("without a CA the system roots do not trust a self-signed certificate", async () => {
    const e = await failureOf(fetchJson(url, { timeoutMs: 5000, maxBytes: KiB }));
    expect((e as HttpFailure).kind).toBe("network");
  });
});

describe("connections", () => {
  let server: HttpServer;
  let base: string;
  const open = new Set<Socket>();
  beforeAll(async () => {
    server = createHttpServer({ keepAlive: true }, (_req, res) => res.end('{"ok":true}'));
    server.on("connection", (socket: Socket) => {
      open.add(socket);
      socket.on("close", () => open.delete(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  /** Open sockets once they have had up to two seconds to close. */
  async function openAfterSettling(): Promise<number> {
    for (let i = 0; i < 40 && open.size > 0; i++) await new Promise((r) => setTimeout(r, 50));
    return open.size;
  }

  it("by default no socket outlives the request (agent: false)", async () => {
    await fetchJson(`${base}/x`, { timeoutMs: 5000, maxBytes: KiB });
    expect(await openAfterSettling()).toBe(0);
  });

  it("with keepAlive the pooled socket stays open (the contrast that shows the check works)", async () => {
    await fetchJson(`${base}/x`, { timeoutMs: 5000, maxBytes: KiB, keepAlive: true });
    expect(await openAfterSettling()).toBe(1);
    server.closeAllConnections();
  });
});

describe("a caller's keep-alive agent", () => {
  /**
   * A raw server: every connection answers its first request with keep-alive, and resets
   * (`resetOnSecond`) instead of answering a second one: what a server that closed an idle
   * kept-alive socket looks like to the next request on it.
   */
  async function resettingServer(resetFirst: boolean) {
    const { createServer: createNetServer } = await import("node:net");
    let connections = 0;
    let answered = 0;
    const server = createNetServer((socket) => {
      const n = ++connections;
      let requests = 0;
      socket.on("data", (d) => {
        if (!d.toString().includes("\r\n\r\n")) return;
        requests++;
        if ((resetFirst && n === 1) || requests > 1) return void socket.resetAndDestroy();
        answered++;
        socket.write(
          "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n{}",
        );
      });
      socket.on("error", () => {});
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/x`;
    return { url, server, stats: () => ({ connections, answered }) };
  }

  it("sends a request that failed on a reused socket once more, on a fresh connection", async () => {
    const { Agent } = await import("node:http");
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const s = await resettingServer(false);
    try {
      const opts = { timeoutMs: 2000, maxBytes: 100, agent } as const;
      expect((await fetchJson(s.url, opts)).status).toBe(200);
      expect((await fetchJson(s.url, opts)).status).toBe(200); // reset on the kept socket, then fresh
      expect(s.stats()).toEqual({ connections: 2, answered: 2 });
    } finally {
      agent.destroy();
      s.server.close();
    }
  });

  it("does not retry a failure on a fresh connection, nor without an agent", async () => {
    const { Agent } = await import("node:http");
    const agent = new Agent({ keepAlive: true });
    const s = await resettingServer(true);
    try {
      const e = await failureOf(fetchJson(s.url, { timeoutMs: 2000, maxBytes: 100, agent }));
      expect(e).toBeInstanceOf(HttpFailure);
      expect((e as HttpFailure).onReusedSocket).toBe(false);
      expect(s.stats()).toEqual({ connections: 1, answered: 0 });
    } finally {
      agent.destroy();
      s.server.close();
    }
  });
});
