import { describe, expect, it } from "vitest";
import { limitClassOf } from "../../idp/limits.ts";
import { ConnectionCounter, clientKey } from "../../server/limits.ts";
import { RateLimiter } from "../../server/rate-limit.ts";

describe("clientKey", () => {
  it("keeps IPv4 addresses, also IPv4-mapped ones", () => {
    expect(clientKey("192.0.2.7")).toBe("192.0.2.7");
    expect(clientKey("::ffff:192.0.2.7")).toBe("192.0.2.7");
    expect(clientKey("::FFFF:192.0.2.7")).toBe("192.0.2.7");
  });

  it("aggregates IPv6 per /64, however the address is written", () => {
    const key = "2001:db8:1:2::/64";
    for (const a of [
      "2001:db8:1:2::1",
      "2001:db8:1:2:ffff:ffff:ffff:ffff",
      "2001:0db8:0001:0002:0000:0000:0000:0009",
      "2001:DB8:1:2:a::b",
      "2001:db8:1:2::7%eth0",
      "2001:db8:1:2::192.0.2.1",
    ]) {
      expect(clientKey(a), a).toBe(key);
    }
    expect(clientKey("2001:db8:1:3::1")).toBe("2001:db8:1:3::/64");
    expect(clientKey("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(clientKey("::1")).toBe("0:0:0:0::/64");
    expect(clientKey("fe80::1:2:3:4")).toBe("fe80:0:0:0::/64");
  });
});

describe("limitClassOf", () => {
  it("puts login, token and everything else in their classes", () => {
    expect(limitClassOf("/api/auth/challenge")).toBe("login");
    expect(limitClassOf("/api/agent/authenticate")).toBe("login");
    expect(limitClassOf("/token")).toBe("token");
    expect(limitClassOf("/api/grants")).toBe("api");
    expect(limitClassOf("/.well-known/openid-configuration")).toBe("api");
  });
});

describe("RateLimiter", () => {
  it("refuses beyond the limit and refills over the window", () => {
    const l = new RateLimiter(3, 60);
    expect([0, 1, 2, 3].map(() => l.take("a", 0))).toEqual([0, 0, 0, 20]);
    expect(l.take("a", 20_000)).toBe(0);
  });

  it("evicts the least recently used keys when full, never every count", () => {
    const l = new RateLimiter(2, 60); // tracks 100,000 keys
    for (let i = 0; i < 2; i++) l.take("busy", 0);
    expect(l.take("busy", 1)).toBeGreaterThan(0);
    // A flood of 150,000 new keys (each spending its whole budget) while the busy client keeps asking.
    for (let i = 0; i < 150_000; i++) {
      l.take(`flood-${i}`, 2);
      l.take(`flood-${i}`, 2);
      if (i % 10_000 === 0) expect(l.take("busy", 2)).toBeGreaterThan(0);
    }
    expect(l.take("busy", 3)).toBeGreaterThan(0);
    // The oldest flood keys were forgotten (a fresh bucket), the newest are still counted.
    expect(l.take("flood-0", 3)).toBe(0);
    expect(l.take("flood-149999", 3)).toBeGreaterThan(0);
  });
});

describe("ConnectionCounter", () => {
  it("caps per client and in total, and frees on close", () => {
    const c = new ConnectionCounter(2, 3);
    expect([c.tryOpen("a"), c.tryOpen("a"), c.tryOpen("a")]).toEqual([true, true, false]);
    expect([c.tryOpen("b"), c.tryOpen("c")]).toEqual([true, false]);
    c.close("a");
    expect(c.tryOpen("c")).toBe(true);
    expect(c.tryOpen("a")).toBe(false);
  });
});
