import { request } from "node:http";
import { connect } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { ProblemError } from "../../protocol/problem.ts";
import { bearerToken } from "../../server/bearer.ts";
import { Bytes, type Call, jsonBody, Router } from "../../server/http.ts";
import { type Listening, listen } from "../../server/lifecycle.ts";
import { jsonLogger } from "../../server/log.ts";
import { requestsInFlight } from "../../server/offload.ts";
import { type App, pipeline } from "../../server/pipeline.ts";

/** The shared request pipeline on a real loopback server: routes, principal hook, errors, close. */

interface Who {
  name: string;
}

const log = jsonLogger("error", () => {});
let running: Listening | undefined;
afterEach(async () => {
  await running?.close();
  running = undefined;
});

async function start(
  router: Router<Who>,
  authenticate: (call: Call) => Who | Promise<Who>,
  hooks: Partial<App<Who>> = {},
) {
  running = await listen({
    host: "127.0.0.1",
    port: 0,
    maxConnections: 100,
    maxConnectionsPerClient: 100,
    connectionRate: "off",
    log,
  });
  running.serve(
    pipeline({ router, log, base: "http://test", shutdown: running.shutdown, authenticate, ...hooks }),
  );
  return running.url;
}

function get(url: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; headers: Record<string, unknown>; body: string }>(
    (resolve, reject) => {
      const req = request(url, { headers }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          body += c;
        });
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      });
      req.on("error", reject);
      req.end();
    },
  );
}

describe("typed routes", () => {
  it("a public handler gets the call alone and the principal hook never runs for it", async () => {
    const router = new Router<Who>();
    let argCount = -1;
    let hookRuns = 0;
    router.add("GET", "/open", false, (...args: unknown[]) => {
      argCount = args.length;
      return { status: 200, body: { ok: true } };
    });
    const url = await start(router, () => {
      hookRuns++;
      return { name: "x" };
    });
    const r = await get(`${url}/open`);
    expect(r.status).toBe(200);
    expect(argCount).toBe(1);
    expect(hookRuns).toBe(0);
  });

  it("an authenticated handler runs only with the principal the hook resolved (awaited)", async () => {
    const router = new Router<Who>();
    router.add("GET", "/me", true, (_call, who) => ({ status: 200, body: { name: who.name } }));
    const url = await start(router, async (call) => {
      const token = bearerToken(call);
      if (token !== "good") throw new ProblemError("invalid_token", "bad token");
      return { name: "alice" };
    });
    expect(JSON.parse((await get(`${url}/me`, { authorization: "Bearer good" })).body)).toEqual({
      name: "alice",
    });
    const refused = await get(`${url}/me`, { authorization: "Bearer bad" });
    expect(refused.status).toBe(401);
    expect(refused.headers["content-type"]).toBe("application/problem+json");
    expect((await get(`${url}/me`)).status).toBe(401);
  });

  it("decodes the parameters of the matching route only; a malformed one there is a 400", () => {
    const router = new Router<Who>();
    router.add("GET", "/g/:id", false, () => ({ status: 200 }));
    router.add("POST", "/g/:id/x", false, () => ({ status: 200 }));
    expect(router.match("GET", "/g/a%20b")).toMatchObject({ params: { id: "a b" } });
    expect(() => router.match("GET", "/g/%E0%A4%A")).toThrow(/percent-encoding/);
    // Another method on that path: 405 (allowed methods), not a 400 for a parameter never used.
    expect(router.match("PUT", "/g/%E0%A4%A")).toEqual({ allowed: ["GET"] });
  });

  it("finds the first route added that fits, as one scan of every route in order would", () => {
    // Literal and parameter segments of several shapes, added in an order where both kinds come
    // first; the answers are checked against that scan for paths that fit, fit partly, or fit none.
    const patterns: [string, string][] = [
      ["GET", "/"],
      ["GET", "/grants"],
      ["POST", "/grants"],
      ["GET", "/:kind"],
      ["GET", "/grants/:id"],
      ["POST", "/grants/batch"],
      ["GET", "/:kind/:id"],
      ["DELETE", "/users/:id"],
      ["POST", "/grants/:id/approve"],
      ["POST", "/:kind/:id/approve"],
      ["GET", "/users/me"],
      ["PUT", "/:kind/:id"],
      ["POST", "/grants/:id/:action"],
    ];
    const router = new Router<Who>();
    for (const [method, pattern] of patterns) router.add(method, pattern, false, () => ({ status: 200 }));
    const scan = (method: string, path: string) => {
      const parts = path.split("/").filter(Boolean);
      const allowed: string[] = [];
      for (const [m, pattern] of patterns) {
        const segs = pattern.split("/").filter(Boolean);
        if (segs.length !== parts.length || !segs.every((s, i) => s[0] === ":" || s === parts[i])) continue;
        if (m === method || (method === "HEAD" && m === "GET")) return `${m} ${pattern}`;
        allowed.push(m);
      }
      return allowed.length ? allowed.join(",") : "none";
    };
    const answer = (method: string, path: string) => {
      const m = router.match(method, path);
      if (!m) return "none";
      if ("allowed" in m) return m.allowed.join(",");
      return `${m.route.method} /${m.route.segments.join("/")}`;
    };
    const paths = [
      "/",
      "/grants",
      "/users",
      "/x",
      "/grants/1",
      "/grants/batch",
      "/users/me",
      "/users/1",
      "/x/1",
      "/grants/1/approve",
      "/x/1/approve",
      "/grants/1/deny",
      "/x/1/deny",
      "/a/b/c/d",
      "/:kind",
    ];
    let compared = 0;
    for (const method of ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]) {
      for (const path of paths) {
        expect(answer(method, path), `${method} ${path}`).toBe(scan(method, path));
        compared++;
      }
    }
    expect(compared).toBe(90);
    // Spot checks of what the order decides.
    expect(answer("GET", "/grants/batch")).toBe("GET /grants/:id");
    expect(answer("POST", "/grants/batch")).toBe("POST /grants/batch");
    expect(answer("PATCH", "/users/1")).toBe("GET,DELETE,PUT");
  });

  it("a handler cannot be registered with the wrong shape", () => {
    const router = new Router<Who>();
    // @ts-expect-error a public route's handler gets no principal
    router.add("GET", "/x", false, (_call: Call, who: Who) => ({ status: 200, body: who.name }));
    router.add("GET", "/y", true, (_call, who) => ({ status: 200, body: who.name }));
    expect(router.match("GET", "/y")).toMatchObject({ route: { auth: true } });
    expect(router.match("GET", "/x")).toMatchObject({ route: { auth: false } });
  });
});

describe("answers", () => {
  it("JSON answers say nosniff and no-store; Bytes keep their type; unknown paths are problems", async () => {
    const router = new Router<Who>();
    router.add("GET", "/j", false, () => ({ status: 200, body: { a: 1 } }));
    router.add("GET", "/t", false, () => ({
      status: 200,
      body: new Bytes("text/plain; charset=utf-8", "hi"),
    }));
    router.add("GET", "/boom", false, () => {
      throw new Error("secret detail");
    });
    const url = await start(router, () => ({ name: "x" }));
    const j = await get(`${url}/j`);
    expect(j.headers["x-content-type-options"]).toBe("nosniff");
    expect(j.headers["cache-control"]).toBe("no-store");
    expect(j.headers["x-request-id"]).toBeTypeOf("string");
    const t = await get(`${url}/t`);
    expect([t.headers["content-type"], t.body]).toEqual(["text/plain; charset=utf-8", "hi"]);
    const missing = await get(`${url}/nope`);
    expect(missing.status).toBe(404);
    expect(JSON.parse(missing.body).instance).toBe("http://test/nope");
    const boom = await get(`${url}/boom`);
    expect(boom.status).toBe(500);
    expect(boom.body).not.toContain("secret detail");
  });
});

describe("hooks", () => {
  class TeapotError extends Error {}

  it("answers app errors with errorReply, refuses through admitPublic, and a failed settle turns any answer into a 500", async () => {
    const router = new Router<Who>();
    router.add("GET", "/ok", false, () => ({ status: 200, body: {} }));
    router.add("GET", "/teapot", false, () => {
      throw new TeapotError("short and stout");
    });
    let failing = false;
    const url = await start(router, () => ({ name: "x" }), {
      settle: () => {
        if (failing) throw new Error("disk full");
      },
      errorReply: (e) => (e instanceof TeapotError ? { status: 418, body: { error: e.message } } : undefined),
      admitPublic: (call) => {
        if (call.query.has("deny")) throw new ProblemError("rate_limited", "slow down", { retry_after: 3 });
      },
    });
    expect((await get(`${url}/ok`)).status).toBe(200);
    const teapot = await get(`${url}/teapot`);
    expect([teapot.status, JSON.parse(teapot.body)]).toEqual([418, { error: "short and stout" }]);
    const denied = await get(`${url}/ok?deny`);
    expect([denied.status, denied.headers["retry-after"]]).toEqual([429, "3"]);
    failing = true;
    for (const path of ["/ok", "/teapot"]) {
      const r = await get(`${url}${path}`);
      expect(r.status, path).toBe(500);
      expect(JSON.parse(r.body).detail, path).toBe("storage failure");
    }
  });
});

describe("begin and bodies", () => {
  /** Writes `parts` to one connection (pausing between them) and returns all it answered. */
  const raw = (url: string, parts: string[]) =>
    new Promise<string>((resolve, reject) => {
      const u = new URL(url);
      const sock = connect(Number(u.port), u.hostname);
      let answer = "";
      sock.setEncoding("utf8");
      sock.on("data", (c: string) => {
        answer += c;
      });
      sock.on("end", () => resolve(answer));
      sock.on("error", reject);
      sock.on("connect", async () => {
        for (const p of parts) {
          sock.write(p);
          await new Promise((r) => setTimeout(r, 20));
        }
      });
    });

  it("begin runs before each request's route, also for requests pipelined in one write", async () => {
    const router = new Router<Who>();
    let begun = 0;
    const seen: number[] = [];
    router.add("GET", "/open", false, () => {
      seen.push(begun);
      return { status: 200, body: {} };
    });
    router.add("GET", "/me", true, () => {
      seen.push(begun);
      return { status: 200, body: {} };
    });
    const url = await start(
      router,
      () => {
        seen.push(begun);
        return { name: "x" };
      },
      { begin: () => void begun++ },
    );
    const two =
      "GET /open HTTP/1.1\r\nHost: x\r\n\r\nGET /me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    const answer = await raw(url, [two]);
    expect(answer.match(/HTTP\/1.1 200/g)).toHaveLength(2);
    // The second request's principal hook and route saw its own begin.
    expect(seen).toEqual([1, 2, 2]);
  });

  it("call.closed aborts when the client goes away, also when first asked for after it left", async () => {
    const router = new Router<Who>();
    const seen: Record<string, boolean> = {};
    let done!: () => void;
    const both = new Promise<void>((r) => {
      let n = 0;
      done = () => {
        if (++n === 2) r();
      };
    });
    router.add("GET", "/early", false, async (call) => {
      const signal = call.closed;
      await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
      seen.early = signal.aborted;
      done();
      return { status: 200 };
    });
    router.add("GET", "/late", false, async (call) => {
      await new Promise((r) => setTimeout(r, 150));
      seen.late = call.closed.aborted;
      done();
      return { status: 200 };
    });
    const url = await start(router, () => ({ name: "x" }));
    for (const path of ["/early", "/late"]) {
      const u = new URL(url);
      const sock = connect(Number(u.port), u.hostname, () => {
        sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
        setTimeout(() => sock.destroy(), 30);
      });
    }
    await both;
    expect(seen).toEqual({ early: true, late: true });
    // A finished answer is not a client gone away.
    let after: boolean | undefined;
    router.add("GET", "/done", false, (call) => {
      call.res.on("finish", () => setImmediate(() => (after = call.closed.aborted)));
      return { status: 200, body: {} };
    });
    expect((await get(`${url}/done`)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 50));
    expect(after).toBe(false);
  });

  it("a JSON body is read whole across several packets; a client gone mid-body gets no answer", async () => {
    const router = new Router<Who>();
    router.add("POST", "/echo", false, async (call) => ({ status: 200, body: await jsonBody(call) }));
    const url = await start(router, () => ({ name: "x" }));
    const body = JSON.stringify({ a: "x".repeat(3000), b: [1, 2, 3] });
    const head = `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
    const answer = await raw(url, [head, body.slice(0, 10), body.slice(10, 2000), body.slice(2000)]);
    expect(answer).toMatch(/^HTTP\/1.1 200/);
    expect(JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4))).toEqual(JSON.parse(body));
    // Half a body, then the client goes: nothing is answered and the server keeps serving.
    const half = await new Promise<string>((resolve) => {
      const u = new URL(url);
      const sock = connect(Number(u.port), u.hostname, () => {
        sock.write(head + body.slice(0, 100));
        setTimeout(() => sock.destroy(), 20);
      });
      let got = "";
      sock.on("data", (c) => {
        got += c;
      });
      sock.on("close", () => resolve(got));
    });
    expect(half).toBe("");
    expect((await raw(url, [head, body])).startsWith("HTTP/1.1 200")).toBe(true);
  });
});

describe("requests in flight (what server/offload.ts decides by)", () => {
  it("counts each request from its start to its answer, also one that fails or is refused", async () => {
    const router = new Router<Who>();
    const seen: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let entered = 0;
    router.add("GET", "/slow", false, async () => {
      entered++;
      await gate;
      seen.push(requestsInFlight());
      return { status: 200, body: {} };
    });
    router.add("GET", "/fails", false, () => {
      seen.push(requestsInFlight());
      throw new Error("boom");
    });
    const url = await start(router, () => ({ name: "x" }));
    expect(requestsInFlight()).toBe(0);
    const slow = [get(`${url}/slow`), get(`${url}/slow`)];
    while (entered < 2) await new Promise((r) => setTimeout(r, 5));
    expect((await get(`${url}/fails`)).status).toBe(500);
    expect((await get(`${url}/missing`)).status).toBe(404);
    release();
    expect((await Promise.all(slow)).map((r) => r.status)).toEqual([200, 200]);
    // The failing one saw both slow ones and itself; the slow ones, released together, both.
    expect(seen).toEqual([3, 2, 2]);
    expect(requestsInFlight()).toBe(0);
  });
});

describe("lifecycle", () => {
  it("close runs the close hooks, lets an in-flight request finish, and is idempotent", async () => {
    const router = new Router<Who>();
    const entered = Promise.withResolvers<void>();
    const release = Promise.withResolvers<void>();
    router.add("GET", "/slow", false, async () => {
      entered.resolve();
      await release.promise;
      return { status: 200, body: { done: true } };
    });
    const url = await start(router, () => ({ name: "x" }));
    const server = running!;
    let hookSawShutdown: boolean | undefined;
    server.onClose(() => {
      hookSawShutdown = server.shutdown.aborted;
    });
    const inFlight = get(`${url}/slow`);
    await entered.promise;
    const closed = server.close();
    expect(server.close()).toBe(closed);
    release.resolve();
    const r = await inFlight;
    expect(r.status).toBe(200);
    expect(r.headers.connection).toBe("close");
    await closed;
    expect(hookSawShutdown).toBe(true);
    await expect(get(`${url}/slow`)).rejects.toThrow();
    running = undefined;
  });
});
