import { describe, expect, it } from "vitest";
import { authorizeParams, checkAuthorizeRequest } from "../../idp/oauth/authorize-request.ts";

const CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const LOOPBACK = "http://127.0.0.1:5555/callback";
const good: Record<string, string> = {
  response_type: "code",
  client_id: "apes-cli",
  redirect_uri: LOOPBACK,
  state: "st-1",
  nonce: "n-1",
  code_challenge: CHALLENGE,
  code_challenge_method: "S256",
};
const sp = { id: "sp", redirectUris: ["https://sp.example.com/cb"] };
const check = (over: Record<string, string | undefined>, client = undefined as typeof sp | undefined) => {
  const p = Object.entries({ ...good, ...over }).filter((e): e is [string, string] => e[1] !== undefined);
  return checkAuthorizeRequest(p, client);
};
const redirectError = (r: ReturnType<typeof check>) => {
  expect(r.kind).toBe("redirect");
  return new URL((r as { location: string }).location);
};

describe("/authorize request checks", () => {
  it("accepts a complete request of the CLI client and of a registered client", () => {
    expect(check({})).toEqual({
      kind: "ok",
      request: {
        clientId: "apes-cli",
        redirectUri: LOOPBACK,
        state: "st-1",
        nonce: "n-1",
        codeChallenge: CHALLENGE,
      },
    });
    const r = check({ client_id: "sp", redirect_uri: "https://sp.example.com/cb", login_hint: "a@x" }, sp);
    expect(r).toMatchObject({ kind: "ok", request: { clientId: "sp", loginHint: "a@x" } });
  });

  it.each([
    ["no client", { client_id: undefined }],
    ["an unknown client", { client_id: "nobody" }],
    ["no redirect URI", { redirect_uri: undefined }],
    ["an open redirect", { redirect_uri: "https://evil.example/cb" }],
    ["localhost", { redirect_uri: "http://localhost:5555/callback" }],
    ["userinfo", { redirect_uri: "http://evil@127.0.0.1:5555/callback" }],
    ["a fragment", { redirect_uri: `${LOOPBACK}#x` }],
  ])("shows a page, never a redirect, for %s", (_what, over) => {
    expect(check(over).kind).toBe("page");
  });

  it("shows a page for a registered client's unregistered redirect, or a repeated client_id/redirect_uri", () => {
    expect(check({ client_id: "sp", redirect_uri: "https://sp.example.com/cb/" }, sp).kind).toBe("page");
    expect(check({ client_id: "sp", redirect_uri: LOOPBACK }, sp).kind).toBe("page");
    const twice = checkAuthorizeRequest(
      [...Object.entries(good), ["redirect_uri", "https://evil.example/"]],
      undefined,
    );
    expect(twice.kind).toBe("page");
  });

  it.each([
    ["unsupported_response_type", { response_type: "token" }],
    ["unsupported_response_type", { response_type: undefined }],
    ["invalid_request", { code_challenge_method: "plain" }],
    ["invalid_request", { code_challenge_method: undefined }],
    ["invalid_request", { code_challenge: undefined }],
    ["invalid_request", { code_challenge: "short" }],
    ["invalid_request", { nonce: undefined }],
    ["invalid_request", { nonce: "x".repeat(513) }],
    ["invalid_request", { nonce: "a\nb" }],
  ])("sends %s back to the checked redirect URI with the state (%j)", (error, over) => {
    const u = redirectError(check(over));
    expect(`${u.origin}${u.pathname}`).toBe(LOOPBACK);
    expect(u.searchParams.get("error")).toBe(error);
    expect(u.searchParams.get("state")).toBe("st-1");
    expect(u.searchParams.get("code")).toBeNull();
  });

  it("a missing or unsafe state is an error without echoing it", () => {
    for (const state of [undefined, "", "a\u0000b", "x".repeat(513)]) {
      const u = redirectError(check({ state }));
      expect(u.searchParams.get("error")).toBe("invalid_request");
      expect(u.searchParams.has("state")).toBe(false);
    }
  });

  it("a repeated parameter is refused", () => {
    const u = redirectError(checkAuthorizeRequest([...Object.entries(good), ["nonce", "other"]], undefined));
    expect(u.searchParams.get("error")).toBe("invalid_request");
  });

  it("ignores unknown parameters and an unsafe login_hint; carries the request through the form", () => {
    const r = check({ scope: "openid", login_hint: "a\u202eb" });
    expect(r.kind).toBe("ok");
    const req = (r as { request: Parameters<typeof authorizeParams>[0] }).request;
    expect(req.loginHint).toBeUndefined();
    expect(checkAuthorizeRequest(authorizeParams(req), undefined)).toEqual(r);
  });
});
