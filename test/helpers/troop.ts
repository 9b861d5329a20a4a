import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { type ServerFrame, TROOP_SUBPROTOCOL } from "../../protocol/troop.ts";
import { apesBin, api, loginWithKey, type World } from "./idp.ts";

/**
 * The real troop (`dist/apes troop serve`) as a child process, tokens for its audience from the real
 * IdP (RFC 8693 exchange), and a real WebSocket client (package ws) that speaks the nest side of
 * protocol/troop.ts, for integration tests.
 */

export const TROOP_AUDIENCE = "troop.test";
const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";

export interface TroopHandle {
  url: string;
  wsUrl: string;
  dataDir: string;
  pid: number;
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: string | null }>;
  restart(): Promise<void>;
  logs(): string;
}

const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

export async function startTroop(
  idpIssuer: string,
  options: { dataDir?: string; extraArgs?: string[]; audience?: string; env?: Record<string, string> } = {},
): Promise<TroopHandle> {
  const dataDir = options.dataDir ?? join(mkdtempSync(join(tmpdir(), "apes-troop-")), "data");
  let stderr = "";
  let proc!: ChildProcess;
  let port = 0;
  let url = "";
  const launch = async () => {
    const args = ["troop", "serve", "--idp", idpIssuer, "--client-id", options.audience ?? TROOP_AUDIENCE];
    args.push(
      "--listen",
      `127.0.0.1:${port}`,
      "--data",
      dataDir,
      "--ping-interval",
      "1s",
      "--clock-skew",
      "0s",
    );
    args.push(...(options.extraArgs ?? []));
    const p = spawn(apesBin(), args, {
      stdio: ["ignore", "ignore", "pipe"],
      ...(options.env ? { env: { ...process.env, ...options.env } } : {}),
    });
    proc = p;
    live.add(p);
    p.once("exit", () => live.delete(p));
    const start = stderr.length;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        p.kill("SIGKILL");
        reject(new Error(`the troop did not report "listening" within 20 s:\n${stderr.slice(start)}`));
      }, 20_000);
      let buffer = "";
      let listening = false;
      p.stderr!.setEncoding("utf8");
      p.stderr!.on("data", (chunk: string) => {
        stderr += chunk;
        if (listening) return;
        buffer += chunk;
        for (let nl = buffer.indexOf("\n"); nl !== -1; nl = buffer.indexOf("\n")) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          try {
            const entry = JSON.parse(line) as { msg?: string; url?: string };
            if (entry.msg === "listening" && entry.url) {
              clearTimeout(timer);
              listening = true;
              url = entry.url;
              port = Number(new URL(url).port);
              resolve();
              return;
            }
          } catch {
            // not a log line
          }
        }
      });
      p.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`the troop exited (${code ?? signal}) before listening:\n${stderr.slice(start)}`));
      });
    });
  };
  await launch();
  const stop = (signal: NodeJS.Signals = "SIGTERM") =>
    new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null)
        return resolve({ code: proc.exitCode, signal: proc.signalCode });
      proc.once("exit", (code, sig) => resolve({ code, signal: sig }));
      proc.kill(signal);
    });
  return {
    get url() {
      return url;
    },
    get wsUrl() {
      return `${url.replace(/^http/, "ws")}/v1/nest/socket`;
    },
    dataDir,
    get pid() {
      return proc.pid!;
    },
    stop,
    async restart() {
      await stop();
      await launch();
    },
    logs: () => stderr,
  };
}

/** `name`'s own session token exchanged for the troop's audience. */
export async function troopToken(
  idpUrl: string,
  sessionToken: string,
  audience = TROOP_AUDIENCE,
): Promise<string> {
  const r = await api(idpUrl).post("/token", { grant_type: EXCHANGE, subject_token: sessionToken, audience });
  if (r.status !== 200) throw new Error(`token exchange failed: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.access_token as string;
}

/** A delegated token for the troop: `delegate` acting for `delegator` (who creates the delegation). */
export async function delegatedTroopToken(
  w: World,
  delegator: keyof World["tokens"],
  delegate: keyof World["tokens"],
  delegateEmail: string,
): Promise<{ token: string; delegation: string }> {
  const d = await w.as(delegator).post(w.delegations, { delegate: delegateEmail, audience: TROOP_AUDIENCE });
  if (d.status !== 201) throw new Error(`delegation failed: ${d.status} ${JSON.stringify(d.body)}`);
  const r = await api(w.idp.url).post("/token", {
    grant_type: EXCHANGE,
    actor_token: w.tokens[delegate],
    delegation_grant_id: d.body.id,
    audience: TROOP_AUDIENCE,
  });
  if (r.status !== 200) throw new Error(`delegated exchange failed: ${r.status} ${JSON.stringify(r.body)}`);
  return { token: r.body.access_token as string, delegation: d.body.id as string };
}

export { loginWithKey };

export interface NestClient {
  ws: WebSocket;
  frames: ServerFrame[];
  /** The next frame of this type (already received ones first, each handed out once). */
  next<T extends ServerFrame["type"]>(
    type: T,
    timeoutMs?: number,
  ): Promise<Extract<ServerFrame, { type: T }>>;
  send(frame: unknown): void;
  closed: Promise<{ code: number; reason: string }>;
  close(): void;
}

export type ConnectResult = { ok: true; nest: NestClient } | { ok: false; status: number; body: string };

/** Opens a nest socket with `token` as the bearer (or a raw url/headers for negative tests). */
export function connectNest(
  url: string,
  token: string | undefined,
  options: { autoPong?: boolean; protocols?: string[]; headers?: Record<string, string>; ca?: Buffer } = {},
): Promise<ConnectResult> {
  return new Promise((resolve) => {
    const headers: Record<string, string> = { ...options.headers };
    if (token) headers.authorization = `Bearer ${token}`;
    const ws = new WebSocket(url, options.protocols ?? [TROOP_SUBPROTOCOL], {
      headers,
      autoPong: options.autoPong ?? true,
      ...(options.ca ? { ca: options.ca } : {}),
    });
    const frames: ServerFrame[] = [];
    const waiters: { type: string; resolve: (f: ServerFrame) => void }[] = [];
    const taken = new Set<ServerFrame>();
    ws.on("message", (data) => {
      const f = JSON.parse(data.toString()) as ServerFrame;
      frames.push(f);
      const i = waiters.findIndex((w) => w.type === f.type);
      if (i !== -1) {
        taken.add(f);
        waiters.splice(i, 1)[0]!.resolve(f);
      }
    });
    const closed = new Promise<{ code: number; reason: string }>((r) =>
      ws.on("close", (code, reason) => r({ code, reason: reason.toString() })),
    );
    ws.on("unexpected-response", (_req, res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () => resolve({ ok: false, status: res.statusCode ?? 0, body }));
    });
    ws.on("error", () => {});
    ws.on("open", () =>
      resolve({
        ok: true,
        nest: {
          ws,
          frames,
          next(type, timeoutMs = 10_000) {
            const have = frames.find((f) => f.type === type && !taken.has(f));
            if (have) {
              taken.add(have);
              return Promise.resolve(have as never);
            }
            return new Promise((res, rej) => {
              const timer = setTimeout(
                () => rej(new Error(`no ${type} frame within ${timeoutMs} ms`)),
                timeoutMs,
              );
              waiters.push({
                type,
                resolve: (f) => {
                  clearTimeout(timer);
                  res(f as never);
                },
              });
            });
          },
          send: (frame) => ws.send(typeof frame === "string" ? frame : JSON.stringify(frame)),
          closed,
          close: () => ws.close(),
        },
      }),
    );
  });
}
