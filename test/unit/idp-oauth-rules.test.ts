import { describe, expect, it } from "vitest";
import {
  CLI_CLIENT_ID,
  clientIdProblem,
  isLoopbackRedirect,
  redirectUriAllowed,
  redirectUriRegistrationProblem,
  redirectWith,
} from "../../idp/oauth/clients.ts";
import {
  formatUserCode,
  newUserCode,
  normalizeUserCode,
  pollOutcome,
  USER_CODE_ALPHABET,
} from "../../idp/oauth/device-code.ts";
import { isCodeChallenge, isCodeVerifier, s256, verifierMatches } from "../../idp/oauth/pkce.ts";

describe("redirect URIs of the built-in CLI client (RFC 8252 loopback)", () => {
  it.each([
    "http://127.0.0.1:1/",
    "http://127.0.0.1:49152/callback",
    "http://127.0.0.1:65535",
    "http://[::1]:8080/",
    "http://[::1]:8080/a/b-c_d.e~f",
  ])("accepts %s on any port", (uri) => {
    expect(isLoopbackRedirect(uri)).toBe(true);
    expect(redirectUriAllowed(CLI_CLIENT_ID, undefined, uri)).toBe(true);
  });

  it.each([
    ["localhost", "http://localhost:8080/"],
    ["https loopback", "https://127.0.0.1:8080/"],
    ["no port", "http://127.0.0.1/"],
    ["port 0", "http://127.0.0.1:0/"],
    ["port > 65535", "http://127.0.0.1:65536/"],
    ["leading zero port", "http://127.0.0.1:08080/"],
    ["another loopback address", "http://127.0.0.2:8080/"],
    ["decimal IP", "http://2130706433:8080/"],
    ["IPv4-mapped IPv6", "http://[::ffff:127.0.0.1]:8080/"],
    ["userinfo", "http://evil.com@127.0.0.1:8080/"],
    ["userinfo after the host", "http://127.0.0.1:8080@evil.com/"],
    ["host after loopback", "http://127.0.0.1.evil.com:8080/"],
    ["fragment", "http://127.0.0.1:8080/#x"],
    ["query", "http://127.0.0.1:8080/?next=https://evil.com"],
    ["percent-encoding", "http://127.0.0.1:8080/%2e%2e/"],
    ["encoded slash", "http://127.0.0.1:8080/a%2Fb"],
    ["dot segment", "http://127.0.0.1:8080/a/../b"],
    ["single dot segment", "http://127.0.0.1:8080/./b"],
    ["backslash", "http://127.0.0.1:8080\\@evil.com/"],
    ["upper-case scheme", "HTTP://127.0.0.1:8080/"],
    ["protocol-relative", "//127.0.0.1:8080/"],
    ["whitespace", " http://127.0.0.1:8080/"],
    ["trailing newline", "http://127.0.0.1:8080/\n"],
    ["javascript", "javascript:alert(1)//127.0.0.1:8080"],
    ["empty", ""],
    ["a registered-looking https URI", "https://app.example.com/cb"],
  ])("refuses %s", (_what, uri) => {
    expect(isLoopbackRedirect(uri)).toBe(false);
    expect(redirectUriAllowed(CLI_CLIENT_ID, undefined, uri)).toBe(false);
  });

  it("accepts no other redirect whatever the store holds for apes-cli", () => {
    const planted = { id: CLI_CLIENT_ID, redirectUris: ["https://evil.example/cb"] };
    expect(redirectUriAllowed(CLI_CLIENT_ID, planted, "https://evil.example/cb")).toBe(false);
  });

  it("refuses a loopback URI longer than the limit", () => {
    expect(isLoopbackRedirect(`http://127.0.0.1:8080/${"a".repeat(2000)}`)).toBe(false);
  });
});

describe("redirect URIs of registered clients: exact match", () => {
  const client = { id: "sp", redirectUris: ["https://sp.example.com/cb", "https://sp.example.com/cb?x=1"] };
  it("accepts exactly a registered URI", () => {
    expect(redirectUriAllowed("sp", client, "https://sp.example.com/cb")).toBe(true);
    expect(redirectUriAllowed("sp", client, "https://sp.example.com/cb?x=1")).toBe(true);
  });
  it.each([
    "https://sp.example.com/cb/",
    "https://sp.example.com/cb?x=2",
    "https://sp.example.com/cb#frag",
    "https://sp.example.com/CB",
    "HTTPS://sp.example.com/cb",
    "https://SP.example.com/cb",
    "https://sp.example.com./cb",
    "https://sp.example.com:443/cb",
    "https://sp.example.com:8443/cb",
    "http://sp.example.com/cb",
    "https://sp.example.com/cb/../cb",
    "https://sp.example.com/%63b",
    "https://sp.example.com/cb%2f..",
    "https://user@sp.example.com/cb",
    "https://sp.example.com@evil.com/cb",
    "https://sp.example.com.evil.com/cb",
    "https://evil.com/?https://sp.example.com/cb",
    "https://sp.example.com/cb?x=1&redirect=https://evil.com",
    "https://sp.example.com/cbx",
    "https://sp.example.com/c",
    "http://127.0.0.1:8080/",
  ])("refuses %s", (uri) => {
    expect(redirectUriAllowed("sp", client, uri)).toBe(false);
  });
  it("refuses an unknown client, and a record of another client", () => {
    expect(redirectUriAllowed("sp", undefined, "https://sp.example.com/cb")).toBe(false);
    expect(redirectUriAllowed("other", client, "https://sp.example.com/cb")).toBe(false);
  });
  it("a loopback URI is not a registered client's unless registered", () => {
    expect(redirectUriAllowed("sp", client, "http://127.0.0.1:5000/")).toBe(false);
  });
});

describe("registering clients", () => {
  it.each(["troop", "sp-1", "a", "my.app_2"])("accepts client id %s", (id) => {
    expect(clientIdProblem(id)).toBeUndefined();
  });
  it.each(["apes-cli", "", "Troop", "-x", "x-", "a b", "a/b", "é", "x".repeat(65)])(
    "refuses client id %j",
    (id) => {
      expect(clientIdProblem(id)).toBeDefined();
    },
  );
  it.each([
    "https://sp.example.com/cb",
    "https://sp.example.com/cb?mode=login",
    "http://127.0.0.1:3000/callback",
    "http://[::1]:3000/callback",
  ])("accepts %s", (uri) => {
    expect(redirectUriRegistrationProblem(uri)).toBeUndefined();
  });
  it.each([
    ["plain http elsewhere", "http://sp.example.com/cb"],
    ["localhost over http", "http://localhost:3000/cb"],
    ["a fragment", "https://sp.example.com/cb#x"],
    ["userinfo", "https://u:p@sp.example.com/cb"],
    ["an @ in the authority", "https://sp.example.com@evil.com/cb"],
    ["not normal form (case)", "HTTPS://sp.example.com/cb"],
    ["not normal form (default port)", "https://sp.example.com:443/cb"],
    ["not normal form (no path)", "https://sp.example.com"],
    ["dot segments", "https://sp.example.com/a/../cb"],
    ["encoded dots", "https://sp.example.com/%2e%2e/cb"],
    ["a space", "https://sp.example.com/c b"],
    ["a backslash", "https://sp.example.com\\cb"],
    ["non-ASCII", "https://sp.exämple.com/cb"],
    ["javascript", "javascript:alert(1)"],
    ["data", "data:text/html,hi"],
    ["relative", "/cb"],
    ["empty", ""],
    ["too long", `https://sp.example.com/${"a".repeat(2000)}`],
  ])("refuses %s", (_what, uri) => {
    expect(redirectUriRegistrationProblem(uri)).toBeDefined();
  });
});

describe("redirectWith", () => {
  it("adds parameters to the query, encoded", () => {
    expect(redirectWith("http://127.0.0.1:5/cb", { code: "a b", state: "s&t" })).toBe(
      "http://127.0.0.1:5/cb?code=a+b&state=s%26t",
    );
    expect(redirectWith("https://x/cb?m=1", { code: "c" })).toBe("https://x/cb?m=1&code=c");
  });
});

describe("PKCE (S256 only)", () => {
  // RFC 7636 appendix B.
  const verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
  const challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
  it("matches the RFC's example", () => {
    expect(s256(verifier)).toBe(challenge);
    expect(verifierMatches(verifier, challenge)).toBe(true);
  });
  it("refuses another verifier, the challenge itself (plain), and malformed values", () => {
    expect(verifierMatches(`${verifier.slice(0, -1)}l`, challenge)).toBe(false);
    expect(verifierMatches(challenge, challenge)).toBe(false);
    expect(isCodeVerifier("short")).toBe(false);
    expect(isCodeVerifier("a".repeat(129))).toBe(false);
    expect(isCodeVerifier(`${"a".repeat(42)} `)).toBe(false);
    expect(isCodeChallenge(`${challenge}=`)).toBe(false);
    expect(isCodeChallenge(challenge.slice(1))).toBe(false);
    expect(verifierMatches("a".repeat(42), s256("a".repeat(42)))).toBe(false);
  });
});

describe("device codes (RFC 8628)", () => {
  it("user codes use the unambiguous alphabet, 8 letters, shown as XXXX-XXXX", () => {
    for (let i = 0; i < 200; i++) {
      const c = newUserCode();
      expect(c).toMatch(new RegExp(`^[${USER_CODE_ALPHABET}]{8}$`));
      expect(formatUserCode(c)).toMatch(/^[A-Z]{4}-[A-Z]{4}$/);
    }
    expect(USER_CODE_ALPHABET).not.toMatch(/[AEIOUY0-9]/);
  });
  it("normalises what a person types and refuses anything else", () => {
    expect(normalizeUserCode("bcdf-ghjk")).toBe("BCDFGHJK");
    expect(normalizeUserCode(" BCDF GHJK ")).toBe("BCDFGHJK");
    for (const bad of [
      "BCDF-GHJ",
      "BCDF-GHJKL",
      "BCDF-GHJA",
      "BCDF-GHJ0",
      "BCDF_GHJK",
      "",
      5,
      undefined,
      "B".repeat(40),
    ]) {
      expect(normalizeUserCode(bad)).toBeUndefined();
    }
  });
  const base = { status: "pending" as const, expiresAt: 1000, interval: 5 };
  it("pending, then slow_down for a poll sooner than the interval (which grows by 5)", () => {
    expect(pollOutcome(base, 100)).toEqual({ kind: "authorization_pending" });
    expect(pollOutcome({ ...base, lastPollAt: 100 }, 105)).toEqual({ kind: "authorization_pending" });
    expect(pollOutcome({ ...base, lastPollAt: 100 }, 104)).toEqual({ kind: "slow_down", interval: 10 });
    expect(pollOutcome({ ...base, interval: 10, lastPollAt: 100 }, 109)).toEqual({
      kind: "slow_down",
      interval: 15,
    });
  });
  it("expired, denied, approved, and a spent code counts as expired", () => {
    expect(pollOutcome(base, 1000)).toEqual({ kind: "expired_token" });
    expect(pollOutcome({ ...base, status: "approved" }, 1000)).toEqual({ kind: "expired_token" });
    expect(pollOutcome({ ...base, status: "denied" }, 100)).toEqual({ kind: "access_denied" });
    expect(pollOutcome({ ...base, status: "approved", lastPollAt: 100 }, 101)).toEqual({ kind: "approved" });
    expect(pollOutcome({ ...base, status: "used" }, 100)).toEqual({ kind: "expired_token" });
  });
});
