import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type IdpHandle, startIdp } from "../helpers/idp.ts";

/** The real dist/apes serves web assets embedded in the single executable (scripts/build.mjs). */
describe("idp serve: embedded web assets", () => {
  let idp: IdpHandle;
  const robots = readFileSync(
    join(import.meta.dirname, "..", "..", "idp", "web", "assets", "robots.txt"),
    "utf8",
  );

  beforeAll(async () => {
    idp = await startIdp();
  });
  afterAll(async () => {
    await idp?.stop();
  });

  it("serves /robots.txt from the executable with its type, an ETag and nosniff", async () => {
    const r = await fetch(`${idp.url}/robots.txt`);
    expect(r.status).toBe(200);
    expect(await r.text()).toBe(robots);
    expect(r.headers.get("content-type")).toBe("text/plain; charset=utf-8");
    expect(r.headers.get("x-content-type-options")).toBe("nosniff");
    expect(r.headers.get("cache-control")).toBe("no-cache");
    const etag = r.headers.get("etag");
    expect(etag).toMatch(/^"[A-Za-z0-9_-]+"$/);
    const again = await fetch(`${idp.url}/assets/robots.txt`, { headers: { "if-none-match": etag! } });
    expect(again.status).toBe(304);
    expect(await again.text()).toBe("");
  });

  it("serves nothing else: unknown names and paths out of the folder are 404 problems", async () => {
    for (const path of ["/assets/missing.css", "/assets/..%2Fserver.lock", "/assets/.%2E%2Fidp.db"]) {
      const r = await fetch(`${idp.url}${path}`);
      expect(r.status, path).toBe(404);
      expect(r.headers.get("content-type"), path).toBe("application/problem+json");
    }
    expect((await fetch(`${idp.url}/robots.txt`, { method: "POST" })).status).toBe(405);
  });
});
