import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { ProblemError } from "../../protocol/problem.ts";
import { Bytes, type Call } from "../../server/http.ts";
import { Assets, assetReply } from "../../server/web/assets.ts";
import {
  cookieProblem,
  MAX_COOKIE_HEADER_BYTES,
  parseCookies,
  serializeCookie,
} from "../../server/web/cookies.ts";
import { type CsrfInput, checkCsrf, csrfProblem, csrfToken } from "../../server/web/csrf.ts";
import { CONTENT_SECURITY_POLICY, HTML_HEADERS } from "../../server/web/headers.ts";
import { escapeHtml, html, htmlReply, untrusted } from "../../server/web/html.ts";

describe("html template", () => {
  it("escapes every interpolated value, in text and in attributes", () => {
    const evil = `<script>alert("x")</script>' onmouseover='x' \`&`;
    const page = html`<p title="${evil}">${evil}</p>`;
    expect(page.text).toBe(
      `<p title="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39; onmouseover=&#39;x&#39; &#96;&amp;">` +
        `&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39; onmouseover=&#39;x&#39; &#96;&amp;</p>`,
    );
    expect(page.text).not.toMatch(/<script/);
  });

  it("nests templates unescaped, joins arrays escaped, drops nullish values", () => {
    const items = ["a<b", "c"].map((x) => html`<li>${x}</li>`);
    expect(html`<ul>${items}${undefined}${null}${false}</ul>`.text).toBe(
      "<ul><li>a&lt;b</li><li>c</li></ul>",
    );
    expect(html`${["<i>", 3]}`.text).toBe("&lt;i&gt;3");
  });

  it("shows untrusted text with its invisible characters as escapes, cut, and escaped", () => {
    const shown = untrusted("rm\u202e -rf <x>\x1b[2J", 100).text;
    expect(shown).not.toContain("\u202e");
    expect(shown).not.toContain("\x1b");
    expect(shown).toContain("&lt;x&gt;");
    expect(untrusted("x".repeat(50), 10).text).toContain("40 more characters");
    expect(escapeHtml("&amp;")).toBe("&amp;amp;");
  });

  it("answers pages with the security headers", () => {
    const r = htmlReply(200, html`<p>hi</p>`);
    expect(r.body).toBeInstanceOf(Bytes);
    expect((r.body as Bytes).contentType).toBe("text/html; charset=utf-8");
    expect(r.headers).toMatchObject(HTML_HEADERS);
  });
});

describe("security headers", () => {
  it("the CSP allows no inline script or style, no framing, forms to us only", () => {
    const directives = new Map(
      CONTENT_SECURITY_POLICY.split(";").map((d) => {
        const [name, ...values] = d.trim().split(/\s+/);
        return [name!, values];
      }),
    );
    expect(directives.get("default-src")).toEqual(["'none'"]);
    expect(directives.get("script-src")).toEqual(["'self'"]);
    expect(directives.get("style-src")).toEqual(["'self'"]);
    expect(directives.get("frame-ancestors")).toEqual(["'none'"]);
    expect(directives.get("form-action")).toEqual(["'self'"]);
    expect(CONTENT_SECURITY_POLICY).not.toMatch(/unsafe-inline|unsafe-eval|\*/);
    expect(HTML_HEADERS["x-content-type-options"]).toBe("nosniff");
    expect(HTML_HEADERS["cache-control"]).toBe("no-store");
  });
});

describe("cookies", () => {
  const strict = { sameSite: "Strict" } as const;

  it("serializes with Secure, HttpOnly and Path=/ by default", () => {
    expect(serializeCookie("__Host-session", "abc", { ...strict, maxAge: 3600 })).toBe(
      "__Host-session=abc; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Strict",
    );
  });

  it("refuses a __Host- cookie without Secure or with another path, and other bad cookies", () => {
    expect(cookieProblem("__Host-s", "v", { ...strict, secure: false })).toMatch(/__Host-/);
    expect(cookieProblem("__Host-s", "v", { ...strict, path: "/app" })).toMatch(/__Host-/);
    expect(cookieProblem("__Secure-s", "v", { ...strict, secure: false })).toMatch(/__Secure-/);
    expect(cookieProblem("s", "v", { sameSite: "None", secure: false })).toMatch(/SameSite=None/);
    expect(cookieProblem("bad name", "v", strict)).toMatch(/name/);
    expect(cookieProblem("s", "a;b", strict)).toMatch(/value/);
    expect(cookieProblem("s", "v\r\nSet-Cookie: x=y", strict)).toMatch(/value/);
    expect(cookieProblem("s", "v", { ...strict, maxAge: -1 })).toMatch(/max-age/);
    expect(cookieProblem("s", "v", { ...strict, path: "/; Domain=evil" })).toMatch(/path/);
    expect(() => serializeCookie("s", "x".repeat(5000), strict)).toThrow(/exceeds/);
    expect(() => serializeCookie("__Host-s", "v", { ...strict, secure: false })).toThrow();
  });

  it("parses a Cookie header, tolerating quotes and a trailing separator", () => {
    const c = parseCookies('__Host-session=abc; theme="dark"; ');
    expect([...c]).toEqual([
      ["__Host-session", "abc"],
      ["theme", "dark"],
    ]);
    expect(parseCookies(undefined).size).toBe(0);
  });

  it("refuses malformed, duplicated, too many or oversized cookies", () => {
    const refused = (header: string) => {
      try {
        parseCookies(header);
      } catch (e) {
        expect(e).toBeInstanceOf(ProblemError);
        return (e as ProblemError).status;
      }
      return 200;
    };
    expect(refused("novalue")).toBe(400);
    expect(refused("a=b c")).toBe(400);
    expect(refused("a=1; a=2")).toBe(400);
    expect(refused(Array.from({ length: 51 }, (_, i) => `c${i}=1`).join("; "))).toBe(400);
    expect(refused(`a=${"x".repeat(MAX_COOKIE_HEADER_BYTES)}`)).toBe(400);
  });
});

describe("CSRF", () => {
  const secret = Buffer.alloc(32, 7);
  const base: CsrfInput = {
    method: "POST",
    headers: { origin: "https://id.example", "sec-fetch-site": "same-origin" },
    origin: "https://id.example",
    secret,
    sessionId: "session-1",
    token: csrfToken(secret, "session-1"),
  };

  it("accepts a same-origin post with this session's token, and safe methods without one", () => {
    expect(csrfProblem(base)).toBeUndefined();
    expect(csrfProblem({ ...base, headers: { origin: "https://id.example" } })).toBeUndefined();
    expect(csrfProblem({ ...base, method: "GET", headers: {}, token: undefined })).toBeUndefined();
  });

  it("refuses cross-site, foreign-origin, origin-less, token-less and other-session posts", () => {
    expect(csrfProblem({ ...base, headers: { ...base.headers, "sec-fetch-site": "cross-site" } })).toMatch(
      /cross-site/,
    );
    expect(csrfProblem({ ...base, headers: { ...base.headers, "sec-fetch-site": "same-site" } })).toMatch(
      /same-site/,
    );
    expect(csrfProblem({ ...base, headers: { origin: "https://evil.example" } })).toMatch(/another origin/);
    expect(
      csrfProblem({ ...base, headers: { "sec-fetch-site": "same-origin", origin: "https://evil.example" } }),
    ).toMatch(/another origin/);
    expect(csrfProblem({ ...base, headers: {} })).toMatch(/no origin/);
    expect(csrfProblem({ ...base, token: undefined })).toMatch(/no CSRF token/);
    expect(csrfProblem({ ...base, sessionId: undefined })).toMatch(/no session/);
    expect(csrfProblem({ ...base, token: csrfToken(secret, "session-2") })).toMatch(/not this session's/);
    expect(csrfProblem({ ...base, token: csrfToken(Buffer.alloc(32, 8), "session-1") })).toMatch(/not this/);
    expect(csrfProblem({ ...base, token: "short" })).toMatch(/not this/);
    expect(() => checkCsrf({ ...base, headers: {} })).toThrow(ProblemError);
  });
});

describe("assets", () => {
  const dir = mkdtempSync(join(tmpdir(), "apes-assets-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "robots.txt"), "User-agent: *\n");
  writeFileSync(join(dir, "app.0123abcd.css"), "p{}");
  writeFileSync(join(dir, "notes.md"), "x");
  const assets = Assets.of("test", pathToFileURL(`${dir}/`));
  const call = (headers: Record<string, string> = {}) => ({ req: { headers } }) as unknown as Call;

  it("serves files with their type and an ETag; hashed names are cached for good", () => {
    const robots = assets.get("robots.txt")!;
    const r = assetReply(call(), robots);
    expect(r.status).toBe(200);
    expect((r.body as Bytes).contentType).toBe("text/plain; charset=utf-8");
    expect(r.headers).toMatchObject({ etag: robots.etag, "cache-control": "no-cache" });
    const css = assetReply(call(), assets.get("app.0123abcd.css")!);
    expect(css.headers!["cache-control"]).toBe("public, max-age=31536000, immutable");
  });

  it("answers 304 when the client has this version", () => {
    const robots = assets.get("robots.txt")!;
    expect(assetReply(call({ "if-none-match": `"old", ${robots.etag}` }), robots).status).toBe(304);
    expect(assetReply(call({ "if-none-match": '"old"' }), robots).status).toBe(200);
  });

  it("reads a found file once and remembers no miss (the names asked for are the client's)", () => {
    const reads: string[] = [];
    const counted = new Assets((name) => {
      reads.push(name);
      return name === "a.txt" ? Buffer.from("a") : undefined;
    });
    for (let i = 0; i < 3; i++) {
      expect(counted.get("a.txt")).toBeDefined();
      expect(counted.get("b.txt")).toBeUndefined();
    }
    expect(reads).toEqual(["a.txt", "b.txt", "b.txt", "b.txt"]);
  });

  it("serves no path outside the folder, no dot file, no unknown type", () => {
    for (const name of ["../robots.txt", "..", ".hidden.txt", "sub/robots.txt", "notes.md", "missing.txt"]) {
      expect(assets.get(name), name).toBeUndefined();
    }
  });
});
