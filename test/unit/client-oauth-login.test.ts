import { describe, expect, it } from "vitest";
import { ClientError } from "../../client/errors.ts";
import { startLoopbackReceiver } from "../../client/loopback.ts";
import { pkcePair, randomToken } from "../../client/oauth.ts";
import { parseSession } from "../../client/session-store.ts";
import { isLoopbackRedirect } from "../../idp/oauth/clients.ts";
import { s256 } from "../../idp/oauth/pkce.ts";

describe("the browser login's loopback receiver (RFC 8252)", () => {
  it("listens on 127.0.0.1 at a port of the system's choice, a redirect the IdP accepts for apes-cli", async () => {
    const a = await startLoopbackReceiver(randomToken());
    const b = await startLoopbackReceiver(randomToken());
    try {
      expect(a.redirectUri).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/callback$/);
      expect(a.redirectUri).not.toBe(b.redirectUri);
      expect(isLoopbackRedirect(a.redirectUri)).toBe(true);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("takes only this login's state: other answers are refused and the wait goes on", async () => {
    const state = randomToken();
    const r = await startLoopbackReceiver(state);
    try {
      const get = (q: string, path = "/callback") =>
        fetch(`${r.redirectUri.replace("/callback", path)}?${q}`);
      expect((await get(`code=abc&state=${state}`, "/other")).status).toBe(404);
      expect((await get("code=abc")).status).toBe(400);
      expect((await get(`code=abc&state=${randomToken()}`)).status).toBe(400);
      expect((await get(`code=abc&state=${state.slice(1)}`)).status).toBe(400);
      const ok = await get(`code=the-code&state=${state}`);
      expect(ok.status).toBe(200);
      expect(ok.headers.get("content-security-policy")).toContain("default-src 'none'");
      expect(await ok.text()).not.toContain("the-code");
      await expect(r.code).resolves.toBe("the-code");
      expect((await get(`code=second&state=${state}`)).status).toBe(410);
    } finally {
      await r.close();
    }
  });

  it("an error answer with the right state ends the wait with the IdP's error, escaped", async () => {
    const state = randomToken();
    const r = await startLoopbackReceiver(state);
    try {
      const res = await fetch(
        `${r.redirectUri}?error=access_denied&error_description=${encodeURIComponent("no\u001b[31m")}&state=${state}`,
      );
      expect(res.status).toBe(400);
      const e = await r.code.catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ClientError);
      expect((e as ClientError).message).toContain("access_denied");
      expect((e as ClientError).message).not.toContain("\u001b");
    } finally {
      await r.close();
    }
  });

  it("refuses a malformed code", async () => {
    const state = randomToken();
    const r = await startLoopbackReceiver(state);
    try {
      await fetch(`${r.redirectUri}?code=${encodeURIComponent("<script>")}&state=${state}`);
      await expect(r.code).rejects.toThrow(/no valid code/);
    } finally {
      await r.close();
    }
  });
});

describe("PKCE on the CLI side", () => {
  it("a fresh S256 pair each time, the challenge the IdP's own s256 of the verifier", () => {
    const a = pkcePair();
    const b = pkcePair();
    expect(a.verifier).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(a.challenge).toBe(s256(a.verifier));
    expect(a.verifier).not.toBe(b.verifier);
  });
});

describe("auth.json of a browser session", () => {
  const base = {
    version: 1,
    idp: "https://id.example",
    email: "a@example.com",
    act: "human",
    token: "t",
    expires_at: 1,
  };
  it("accepts a refresh token with its client_id and method", () => {
    expect(
      parseSession(
        JSON.stringify({ ...base, refresh_token: "r", client_id: "apes-cli", method: "browser" }),
        "f",
      ),
    ).toMatchObject({ refresh_token: "r", client_id: "apes-cli" });
  });
  it("refuses a refresh token without client_id, a bad method and non-string fields", () => {
    for (const bad of [
      { refresh_token: "r" },
      { refresh_token: "r", client_id: "apes-cli", method: "magic" },
      { refresh_token: 5, client_id: "apes-cli" },
      { refresh_token: "r", client_id: 7 },
    ]) {
      expect(() => parseSession(JSON.stringify({ ...base, ...bad }), "f")).toThrow(ClientError);
    }
  });
});
