import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nodeFetch } from "../../cli/elevation/node-fetch.ts";

// The requester's small fetch against a local node:http server (its own transport, not our IdP).
let server: Server;
let base: string;
beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      if (req.url === "/etag") {
        res.writeHead(req.headers["if-none-match"] === '"v1"' ? 304 : 200, { etag: '"v1"' });
        return res.end(req.headers["if-none-match"] ? undefined : "{}");
      }
      if (req.url === "/redirect") {
        res.writeHead(302, { location: "http://elsewhere.example/" });
        return res.end();
      }
      if (req.url === "/slow") return setTimeout(() => res.end("{}"), 2000);
      res.writeHead(201, { "content-type": "application/json", "x-multi": ["a", "b"] });
      res.end(JSON.stringify({ method: req.method, body, auth: req.headers.authorization ?? null }));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

describe("nodeFetch", () => {
  const f = nodeFetch();
  it("sends method, headers and body and reads status, headers and text", async () => {
    const res = await f(`${base}/echo`, {
      method: "POST",
      headers: { Authorization: "Bearer t" },
      body: '{"a":1}',
    });
    expect(res.status).toBe(201);
    expect(res.headers.get("Content-Type")).toBe("application/json");
    expect(res.headers.get("x-multi")).toBe("a, b");
    expect(res.headers.get("missing")).toBeNull();
    expect(JSON.parse(await res.text())).toEqual({ method: "POST", body: '{"a":1}', auth: "Bearer t" });
  });
  it("answers 304 with If-None-Match (not taken for a redirect)", async () => {
    const res = await f(`${base}/etag`, { headers: { "if-none-match": '"v1"' }, redirect: "error" });
    expect(res.status).toBe(304);
  });
  it("refuses redirects when told to", async () => {
    await expect(f(`${base}/redirect`, { redirect: "error" })).rejects.toThrow(/redirect/);
  });
  it("aborts with the signal", async () => {
    await expect(f(`${base}/slow`, { signal: AbortSignal.timeout(50) })).rejects.toThrow();
  });
  it("fails like fetch when nothing listens", async () => {
    await expect(f("http://127.0.0.1:1/", {})).rejects.toThrow("fetch failed");
  });
});
