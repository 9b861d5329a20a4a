import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { type WebSocket, WebSocketServer } from "ws";
import { localLauncher } from "../../nest/agents.ts";
import { IntentJournal } from "../../nest/journal.ts";
import { nestLogger } from "../../nest/log.ts";
import { Nest } from "../../nest/nest.ts";
import { type Intent, type NestFrame, TROOP_SUBPROTOCOL } from "../../protocol/troop.ts";

/**
 * The nest core against an in-test ws peer: an intent delivered twice (at-least-once) is acked
 * twice, executed once, its result sent again; an intent a previous run accepted but did not finish
 * is executed when the next run starts; results and status frames report each transition.
 */

const work = mkdtempSync(join(tmpdir(), "apes-nest-core-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const NEST = "nest-h+agent@example.com";
const ALICE = "alice@example.com";

let server: Server;
let wss: WebSocketServer;
const sockets: WebSocket[] = [];
const received: NestFrame[] = [];
const nests: Nest[] = [];

async function peer(): Promise<string> {
  wss = new WebSocketServer({ noServer: true, handleProtocols: () => TROOP_SUBPROTOCOL });
  server = createServer((_req, res) => res.writeHead(503).end());
  server.on("upgrade", (req, socket, head) =>
    wss.handleUpgrade(req, socket, head, (ws) => {
      sockets.push(ws);
      ws.on("message", (d) => received.push(JSON.parse(d.toString()) as NestFrame));
      ws.send(
        JSON.stringify({
          type: "hello",
          nest: NEST,
          server_time: 1,
          ping_interval_s: 0,
          reauth_by: 4_000_000_000,
        }),
      );
    }),
  );
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

afterEach(async () => {
  for (const n of nests.splice(0)) await n.drain();
  for (const s of wss?.clients ?? []) s.terminate();
  server?.closeAllConnections();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  sockets.length = 0;
  received.length = 0;
});

async function until<T>(what: string, probe: () => T | undefined | false, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const spawnIntent = (id: string, seq: number): Intent => ({
  id,
  nest: NEST,
  kind: "spawn",
  agent: "sleepy",
  seq,
  submitted_by: ALICE,
  created_at: 1,
  spec: { owner: ALICE, argv: ["/bin/sleep", "100"], env: [], secrets: [] },
});

async function startNest(url: string, dir: string, starts: string[]): Promise<Nest> {
  const launcher = localLauncher();
  const nest = new Nest({
    journal: await IntentJournal.open(dir),
    launcher: {
      ...launcher,
      start: async (a) => {
        starts.push(a.name);
        return launcher.start(a);
      },
    },
    log: nestLogger("error", () => undefined),
    version: "test",
    link: { troop: url, token: async () => "t.t.t", backoff: { baseMs: 10, maxMs: 50 } },
  });
  nests.push(nest);
  await nest.start();
  return nest;
}

describe("nest core", () => {
  it("a duplicate delivery is acked again and its result re-sent, but executed once", async () => {
    const url = await peer();
    const starts: string[] = [];
    const nest = await startNest(url, join(work, "dup"), starts);
    await until("open", () => nest.link.state === "open");
    const frame = JSON.stringify({ type: "intent", intent: spawnIntent("spawn-1", 1) });
    sockets[0]!.send(frame);
    await until("result", () => received.some((f) => f.type === "result"));
    sockets[0]!.send(frame);
    await until("second ack", () => received.filter((f) => f.type === "ack").length === 2);
    await until("second result", () => received.filter((f) => f.type === "result").length === 2);
    expect(starts).toEqual(["sleepy"]);
    // reauth_by is far away (a delay beyond setTimeout's range must not fire at once).
    expect(nest.link.stats.reauths).toBe(0);
    const results = received.filter((f) => f.type === "result");
    expect(results[0]).toEqual(results[1]);
    expect(results[0]).toMatchObject({ intent_id: "spawn-1", state: "done" });
    // ack before result, status frames report the agent running.
    expect(received.findIndex((f) => f.type === "ack")).toBeLessThan(
      received.findIndex((f) => f.type === "result"),
    );
    const statuses = received.filter((f): f is Extract<NestFrame, { type: "status" }> => f.type === "status");
    expect(statuses.at(-1)!.agents).toEqual([expect.objectContaining({ name: "sleepy", state: "running" })]);
  });

  it("an intent accepted by a previous run but not finished is executed when the next run starts", async () => {
    const url = await peer();
    const dir = join(work, "resume");
    const j = await IntentJournal.open(dir);
    await j.admit(spawnIntent("spawn-2", 1)); // persisted and acked, then the nest died
    const starts: string[] = [];
    const nest = await startNest(url, dir, starts);
    expect(starts).toEqual(["sleepy"]);
    await until("result sent", () => received.some((f) => f.type === "result" && f.intent_id === "spawn-2"));
    // A redelivery after the restart is a duplicate.
    await until("open", () => nest.link.state === "open");
    sockets.at(-1)!.send(JSON.stringify({ type: "intent", intent: spawnIntent("spawn-2", 1) }));
    await until("re-ack", () => received.some((f) => f.type === "ack" && f.intent_id === "spawn-2"));
    expect(starts).toEqual(["sleepy"]);
  });

  it("a refused intent reports failed with the reason", async () => {
    const url = await peer();
    const nest = await startNest(url, join(work, "refused"), []);
    await until("open", () => nest.link.state === "open");
    sockets[0]!.send(
      JSON.stringify({
        type: "intent",
        intent: { ...spawnIntent("bad", 1), submitted_by: "mallory@example.com" },
      }),
    );
    const r = await until("result", () => received.find((f) => f.type === "result"));
    expect(r).toMatchObject({ intent_id: "bad", state: "failed", detail: expect.stringMatching(/owner/) });
  });
});
