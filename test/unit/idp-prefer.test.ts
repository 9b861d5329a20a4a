import { describe, expect, it } from "vitest";
import { MAX_WAIT, preferences, preferWait } from "../../idp/routes/common.ts";
import type { Call } from "../../server/http.ts";

const call = (prefer: string | string[] | undefined) => ({ req: { headers: { prefer } } }) as unknown as Call;

describe("the Prefer header (RFC 7240)", () => {
  it("splits every line at commas, semicolons and whitespace", () => {
    expect(preferences(call(undefined))).toEqual([]);
    expect(preferences(call("wait=5, authz-jwt"))).toEqual(["wait=5", "authz-jwt"]);
    expect(preferences(call(["respond-async;wait=3", "authz-jwt"]))).toEqual([
      "respond-async",
      "wait=3",
      "authz-jwt",
    ]);
  });

  it("reads wait=N capped at the maximum, and only as a whole word", () => {
    expect(preferWait(call("wait=5"))).toBe(5);
    expect(preferWait(call("authz-jwt, wait=999999"))).toBe(MAX_WAIT);
    expect(preferWait(call("wait=1234567"))).toBeUndefined(); // more than six digits
    expect(preferWait(call("nowait=5"))).toBeUndefined();
    expect(preferWait(call("wait=5x"))).toBeUndefined();
    expect(preferWait(call("wait="))).toBeUndefined();
  });
});
