import { spawn } from "node:child_process";
import { Agent, fetch as undiciFetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  apesBin,
  api,
  type FetchLike,
  loginSignature,
  ls,
  newKey,
  startIdp,
  startWorld,
  USERS,
  type World,
} from "../helpers/idp.ts";
import { childPids } from "../helpers/process.ts";
import { httpReceiver } from "../helpers/receivers.ts";

/**
 * `apes idp serve --workers 2` on one SQLite data dir: the real binary, requests on separate
 * connections (the primary hands each new connection to the next worker), so a grant is created on
 * one worker and consumed, approved or waited on at the other. What holds for one process must
 * hold across its workers.
 */

/**
 * A fetch on a connection of its own (closed after the answer): the next worker serves it. Bounded:
 * a connection the primary was handing to a worker as it was killed is never answered (node:cluster
 * keeps it), as a client without a timeout would see it.
 */
const fresh: FetchLike = (async (url: string, init?: RequestInit) => {
  const dispatcher = new Agent({ connections: 1 });
  try {
    const r = await undiciFetch(url, {
      signal: AbortSignal.timeout(15_000),
      ...(init as object),
      dispatcher,
    });
    const body = await r.arrayBuffer();
    const empty = r.status === 204 || r.status === 304;
    return new Response(empty ? null : body, { status: r.status, headers: r.headers as Headers });
  } finally {
    await dispatcher.close();
  }
}) as unknown as FetchLike;

interface LogLine {
  msg: string;
  worker?: number;
  path?: string;
  method?: string;
  status?: number;
  [k: string]: unknown;
}
const lines = (w: World): LogLine[] =>
  w.idp
    .logs()
    .trim()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as LogLine);
/** The workers that logged a request for `path` (with `method`). */
const workersServing = (w: World, method: string, path: string) =>
  new Set(
    lines(w)
      .filter(
        (l) => l.msg === "request" && l.method === method && l.path === new URL(path, w.idp.url).pathname,
      )
      .map((l) => l.worker),
  );

async function until<T>(what: string, check: () => T | undefined | false, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe("idp serve --workers 2 (SQLite)", () => {
  let w: World;
  let hook: Awaited<ReturnType<typeof httpReceiver>>;
  const as = (name: keyof typeof USERS) => api(w.idp.url, w.tokens[name], fresh);
  const approve = async (id: string) => {
    const g = (await as("bot").get(`${w.grants}/${id}`)).body;
    return as("alice").post(`${w.grants}/${id}/approve`, { proof: w.proof("alice", g) });
  };
  const once = async (argv: string[]) => {
    const r = await as("bot").post(w.grants, { ...ls(argv), grant_type: "once" });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body as { id: string };
  };

  beforeAll(async () => {
    hook = await httpReceiver();
    const { mkdtempSync, writeFileSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const config = join(mkdtempSync(join(tmpdir(), "apes-workers-")), "idp.toml");
    writeFileSync(config, `[notify]\nallow_local_targets = true\ntimeout = "3s"\n`);
    w = await startWorld({
      store: "sqlite",
      // Every request here opens a connection of its own: no connection rate limit.
      extraArgs: [
        "--workers",
        "2",
        "--config",
        config,
        "--rate-limit",
        "off",
        "--login-rate-limit",
        "off",
      ].concat(["--connection-rate", "off"]),
    });
  });
  afterAll(async () => {
    await w?.idp.stop();
    await hook?.close();
  });

  it("starts two workers behind one listening line; requests on new connections reach both", async () => {
    const listening = lines(w).filter((l) => l.msg === "listening");
    expect(listening).toHaveLength(1);
    expect(listening[0]).toMatchObject({ workers: 2 });
    expect(listening[0]!.worker).toBeUndefined();
    expect(childPids(w.idp.pid)).toHaveLength(2);
    for (let i = 0; i < 6; i++) expect((await as("bot").get("/api/me")).status).toBe(200);
    expect(workersServing(w, "GET", "/api/me")).toEqual(new Set([1, 2]));
  });

  it("a once-grant's AuthZ-JWT presented 20 times at once over both workers is consumed exactly once", async () => {
    const g = await once(["consume-race"]);
    expect((await approve(g.id)).status).toBe(200);
    const jwt = (await as("bot").post(`${w.grants}/${g.id}/token`)).body.authz_jwt as string;
    const results = await Promise.all(
      Array.from({ length: 20 }, () => api(w.idp.url, jwt, fresh).post(`${w.grants}/${g.id}/consume`)),
    );
    const consumed = results.filter((r) => r.status === 200 && r.body.status === "consumed");
    expect(consumed).toHaveLength(1);
    for (const r of results) if (r !== consumed[0]) expect(r.status, JSON.stringify(r.body)).toBe(409);
    expect(workersServing(w, "POST", `${w.grants}/${g.id}/consume`)).toEqual(new Set([1, 2]));
  });

  it("of concurrent decisions on both workers exactly one wins", async () => {
    const g = await once(["decide-race"]);
    const grant = (await as("bot").get(`${w.grants}/${g.id}`)).body;
    const proof = w.proof("alice", grant);
    const results = await Promise.all(
      Array.from({ length: 10 }, () => as("alice").post(`${w.grants}/${g.id}/approve`, { proof })),
    );
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
    expect(workersServing(w, "POST", `${w.grants}/${g.id}/approve`)).toEqual(new Set([1, 2]));
  });

  it("a login challenge is spent once, whichever worker it is presented to", async () => {
    const d = w.discovery;
    const c = await api(w.idp.url, undefined, fresh).post(
      new URL(d.ddisa_auth_challenge_endpoint!).pathname,
      {
        id: USERS.alice,
      },
    );
    expect(c.status).toBe(200);
    const signature = loginSignature(d, USERS.alice, c.body.challenge, w.keys.alice.privateKey);
    const path = new URL(d.ddisa_auth_authenticate_endpoint!).pathname;
    const results = await Promise.all(
      Array.from({ length: 10 }, () =>
        api(w.idp.url, undefined, fresh).post(path, {
          id: USERS.alice,
          challenge: c.body.challenge,
          signature,
        }),
      ),
    );
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
    expect(workersServing(w, "POST", path)).toEqual(new Set([1, 2]));
  });

  it("long polls parked on both workers are answered when the approval lands on either", async () => {
    const g = await once(["push"]);
    const etag = (await as("bot").get(`${w.grants}/${g.id}`)).headers.get("etag")!;
    const started = Date.now();
    const waiters = Array.from({ length: 6 }, () =>
      as("bot")
        .get(`${w.grants}/${g.id}`, { prefer: "wait=50", "if-none-match": etag })
        .then((r) => ({ r, ms: Date.now() - started })),
    );
    // Every waiter parked (each is logged once answered; parked ones show as open connections).
    await new Promise((r) => setTimeout(r, 300));
    expect((await approve(g.id)).status).toBe(200);
    const answered = await Promise.all(waiters);
    for (const { r, ms } of answered) {
      expect(r.status).toBe(200);
      expect(r.body.status).toBe("approved");
      // Woken by the approval, not by the end of the 50 s wait.
      expect(ms).toBeLessThan(25_000);
    }
    const polls = lines(w).filter(
      (l) =>
        l.msg === "request" &&
        l.method === "GET" &&
        l.path === new URL(`${w.grants}/${g.id}`).pathname &&
        l.status === 200,
    );
    expect(new Set(polls.map((l) => l.worker))).toEqual(new Set([1, 2]));
  });

  it("inbox long polls on both workers hear of a grant created on either", async () => {
    const list = (await as("alice").get(w.grants)).headers.get("etag")!;
    const started = Date.now();
    const waiters = Array.from({ length: 6 }, () =>
      as("alice")
        .get(w.grants, { prefer: "wait=50", "if-none-match": list })
        .then((r) => ({ r, ms: Date.now() - started })),
    );
    await new Promise((r) => setTimeout(r, 300));
    await once(["inbox"]);
    for (const { r, ms } of await Promise.all(waiters)) {
      expect(r.status).toBe(200);
      expect(ms).toBeLessThan(25_000);
    }
  });

  it("a user added on one worker is seen at once by the other (its read cache follows data_version)", async () => {
    const key = newKey("late");
    const agent = "late+agent@example.com";
    const loginAs = async (id: string) => {
      const c = await api(w.idp.url, undefined, fresh).post(
        new URL(w.discovery.ddisa_auth_challenge_endpoint!).pathname,
        { id },
      );
      if (c.status !== 200) return c.status;
      const signature = loginSignature(w.discovery, id, c.body.challenge, key.privateKey);
      const t = await api(w.idp.url, undefined, fresh).post(
        new URL(w.discovery.ddisa_auth_authenticate_endpoint!).pathname,
        { id, challenge: c.body.challenge, signature },
      );
      return t.status;
    };
    // Both workers look the agent up before it exists (and keep it as absent) ...
    for (let i = 0; i < 4; i++) expect(await loginAs(agent)).not.toBe(200);
    const enrolled = await as("alice").post("/api/agents", { name: "late", public_key: key.publicLine });
    expect(enrolled.status, JSON.stringify(enrolled.body)).toBe(201);
    expect(enrolled.body.email).toBe(agent);
    // ... and both let it log in right after it was added on one of them.
    for (let i = 0; i < 6; i++) expect(await loginAs(agent)).toBe(200);
    // A disable by an admin command (another process) counts on both at once too.
    expect(await runDisable(w, agent)).toBe(0);
    for (let i = 0; i < 6; i++) expect(await loginAs(agent)).not.toBe(200);
    const path = new URL(w.discovery.ddisa_auth_authenticate_endpoint!).pathname;
    expect(workersServing(w, "POST", path)).toEqual(new Set([1, 2]));
  });

  it("many concurrent writers over both workers: no request fails (SQLITE_BUSY waits, never errors)", async () => {
    const results = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const out: number[] = [];
        for (let j = 0; j < 5; j++)
          out.push(
            (await as("bot").post(w.grants, { ...ls(["busy", String(i), String(j)]), grant_type: "once" }))
              .status,
          );
        return out;
      }),
    );
    expect(results.flat().filter((s) => s !== 201)).toEqual([]);
    expect(workersServing(w, "POST", w.grants)).toEqual(new Set([1, 2]));
  });

  it("notifications are delivered by worker 1 alone, once each, also for grants created on worker 2", async () => {
    const s = await as("alice").post("/api/notify/subscriptions", {
      channel: "webhook",
      target: `${hook.url}/workers`,
      events: ["pending"],
    });
    expect(s.status, JSON.stringify(s.body)).toBe(201);
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push((await once(["notify", String(i)])).id);
    expect(workersServing(w, "POST", w.grants)).toEqual(new Set([1, 2]));
    const got = await hook.waitFor(6, 15_000);
    await new Promise((r) => setTimeout(r, 1500)); // a second deliverer would have sent by now
    const keys = hook.received.filter((x) => x.path === "/workers").map((x) => x.headers["webhook-id"]);
    expect(got.length).toBeGreaterThanOrEqual(6);
    expect(keys).toHaveLength(6);
    expect(new Set(keys).size).toBe(6);
    const delivered = lines(w).filter((l) => l.msg === "notification delivered");
    expect(delivered).toHaveLength(6);
    expect(new Set(delivered.map((l) => l.worker))).toEqual(new Set([1]));
  });

  it("a SIGKILLed worker loses no acknowledged write and is restarted; the service keeps answering", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 60; i++) ids.push((await once(["durable", String(i)])).id);
    const acked = new Set<string>();
    let killed = false;
    const approver = Promise.all(
      [0, 1, 2, 3].map(async (lane) => {
        for (let i = lane; i < ids.length; i += 4) {
          try {
            const r = await approve(ids[i]!);
            if (r.status === 200) acked.add(ids[i]!);
          } catch {
            // the connection was on the killed worker
          }
        }
      }),
    );
    await until("some approvals", () => acked.size >= 15);
    const [victim] = childPids(w.idp.pid);
    process.kill(victim!, "SIGKILL");
    killed = true;
    await approver;
    expect(killed).toBe(true);
    await until("the worker restarted", () => {
      const pids = childPids(w.idp.pid);
      return (
        pids.length === 2 &&
        !pids.includes(victim!) &&
        lines(w).some((l) => l.msg === "worker died; restarting it")
      );
    });
    for (const id of acked)
      expect((await as("bot").get(`${w.grants}/${id}`)).body.status, id).toBe("approved");
    expect(acked.size).toBeGreaterThan(15);
    // Both workers serve again.
    for (let i = 0; i < 6; i++) expect((await as("bot").get("/api/me")).status).toBe(200);
  }, 60_000);

  it("SIGTERM drains every worker: waiters are answered, the last line is the primary's stopped, exit 0", async () => {
    const g = await once(["graceful"]);
    const etag = (await as("bot").get(`${w.grants}/${g.id}`)).headers.get("etag")!;
    const waiting = Promise.all(
      Array.from({ length: 4 }, () =>
        as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=60", "if-none-match": etag }),
      ),
    );
    await new Promise((r) => setTimeout(r, 300));
    const pids = childPids(w.idp.pid);
    await w.idp.stop();
    for (const r of await waiting) expect([200, 304]).toContain(r.status);
    expect(w.idp.exitCode()).toBe(0);
    const all = lines(w);
    expect(all.at(-1)).toMatchObject({ msg: "stopped" });
    expect(all.at(-1)!.worker).toBeUndefined();
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
    await w.idp.restart();
    expect((await as("bot").get(`${w.grants}/${g.id}`)).body.status).toBe("pending");
  });
});

/** `apes idp users disable` in its own process (another connection to the same database). */
function runDisable(w: World, email: string): Promise<number | null> {
  return new Promise((resolve) => {
    const p = spawn(apesBin(), ["idp", "users", "disable", email, "--data", w.idp.dataDir], {
      stdio: "ignore",
    });
    p.once("exit", (code) => resolve(code));
  });
}

describe("idp serve --workers 2: limits and start-up", () => {
  it("each worker admits its share of a rate limit: together no more than the limit", async () => {
    const idp = await startIdp({
      store: "sqlite",
      extraArgs: ["--workers", "2", "--login-rate-limit", "4/1m"],
    });
    try {
      const d = (await api(idp.url).get("/.well-known/openid-configuration")).body;
      const path = new URL(d.ddisa_auth_challenge_endpoint).pathname;
      const results = await Promise.all(
        Array.from({ length: 12 }, () => api(idp.url, undefined, fresh).post(path, { id: USERS.alice })),
      );
      const ok = results.filter((r) => r.status === 200).length;
      expect(ok).toBeGreaterThanOrEqual(1);
      expect(ok).toBeLessThanOrEqual(4);
      expect(results.filter((r) => r.status === 429).length).toBe(12 - ok);
    } finally {
      await idp.stop();
    }
  });

  it("a port in use and a locked data dir end the start with the exit codes of one process (69, 78)", async () => {
    const idp = await startIdp({ store: "sqlite" });
    try {
      const port = new URL(idp.url).port;
      const run = (args: string[]) =>
        new Promise<{ code: number | null; stderr: string }>((resolve) => {
          const p = spawn(apesBin(), ["idp", "serve", "--workers", "2", ...args], {
            stdio: ["ignore", "ignore", "pipe"],
          });
          let stderr = "";
          p.stderr!.on("data", (c) => (stderr += c));
          p.once("exit", (code) => resolve({ code, stderr }));
        });
      const { mkdtempSync } = await import("node:fs");
      const { join } = await import("node:path");
      const { tmpdir } = await import("node:os");
      const inUse = await run([
        "--listen",
        `127.0.0.1:${port}`,
        "--data",
        join(mkdtempSync(join(tmpdir(), "apes-w-")), "d"),
      ]);
      expect(inUse.code, inUse.stderr).toBe(69);
      expect(inUse.stderr).toContain("already in use");
      const locked = await run(["--listen", "127.0.0.1:0", "--data", idp.dataDir]);
      expect(locked.code, locked.stderr).toBe(78);
      expect(locked.stderr).toContain("already serving");
    } finally {
      await idp.stop();
    }
  });
});

describe("idp serve --workers 2 on PostgreSQL", () => {
  let w: World;
  beforeAll(async () => {
    // startWorld adds its users to the test store (test/helpers/idp.ts testStore): PostgreSQL here.
    const before = process.env.APES_TEST_STORE;
    process.env.APES_TEST_STORE = "postgres";
    try {
      w = await startWorld({ store: "postgres", extraArgs: ["--workers", "2", "--connection-rate", "off"] });
    } finally {
      if (before === undefined) delete process.env.APES_TEST_STORE;
      else process.env.APES_TEST_STORE = before;
    }
  });
  afterAll(async () => {
    await w?.idp.stop();
  });
  const as = (name: keyof typeof USERS) => api(w.idp.url, w.tokens[name], fresh);

  it("consumes a once-grant once over both workers and answers a long poll across them", async () => {
    const g = (await as("bot").post(w.grants, { ...ls(["pg-workers"]), grant_type: "once" })).body;
    const etag = (await as("bot").get(`${w.grants}/${g.id}`)).headers.get("etag")!;
    const waiters = Array.from({ length: 4 }, () =>
      as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=50", "if-none-match": etag }),
    );
    await new Promise((r) => setTimeout(r, 300));
    const grant = (await as("bot").get(`${w.grants}/${g.id}`)).body;
    expect(
      (await as("alice").post(`${w.grants}/${g.id}/approve`, { proof: w.proof("alice", grant) })).status,
    ).toBe(200);
    for (const r of await Promise.all(waiters)) expect(r.body.status).toBe("approved");
    const jwt = (await as("bot").post(`${w.grants}/${g.id}/token`)).body.authz_jwt as string;
    const results = await Promise.all(
      Array.from({ length: 12 }, () => api(w.idp.url, jwt, fresh).post(`${w.grants}/${g.id}/consume`)),
    );
    expect(results.filter((r) => r.status === 200 && r.body.status === "consumed")).toHaveLength(1);
    expect(workersServing(w, "POST", `${w.grants}/${g.id}/consume`)).toEqual(new Set([1, 2]));
    expect(lines(w).filter((l) => l.msg === "listening")).toHaveLength(1);
  });
});
