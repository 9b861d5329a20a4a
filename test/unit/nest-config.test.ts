import { describe, expect, it } from "vitest";
import { NestConfigError, parseNestConfig, serializeNestConfig } from "../../nest/config.ts";
import { DEFAULT_SUPERVISOR_POLICY } from "../../nest/supervisor.ts";

const defaults = { shim: "/usr/local/bin/apes", exec: "/usr/local/libexec/apes/apes" };

describe("nest.toml", () => {
  it("parses every setting and keeps the defaults for the rest", () => {
    const c = parseNestConfig(
      [
        'idp = "https://id.example.com/"',
        'email = "Nest-Web1+agent@Example.com"',
        'troop = "http://127.0.0.1:8090"',
        'troop_audience = "troop.example.com"',
        'delegation = "0b5e0b5e-0b5e-4b5e-8b5e-0b5e0b5e0b5e"',
        'log_level = "debug"',
        'poll_interval = "2s"',
        "[supervisor]",
        "max_failures = 3",
        'failure_window = "1m"',
        'restart_backoff_max = "10s"',
      ].join("\n"),
      defaults,
    );
    expect(c).toMatchObject({
      idp: "https://id.example.com",
      troop: "http://127.0.0.1:8090",
      troopAudience: "troop.example.com",
      logLevel: "debug",
      pollMs: 2000,
      shim: defaults.shim,
      supervisor: { maxFailures: 3, windowMs: 60_000, restartBackoff: { baseMs: 500, maxMs: 10_000 } },
    });
    expect(c.email).toBe("nest-web1+agent@example.com");
    expect(parseNestConfig("", defaults).supervisor).toEqual(DEFAULT_SUPERVISOR_POLICY);
  });

  it("refuses unknown keys, plain http off loopback, relative paths, bad ids and out-of-range values", () => {
    for (const text of [
      'idpp = "https://x"',
      'troop = "http://troop.example.com"',
      'shim = "apes"',
      'delegation = "../../etc/passwd"',
      'email = "not an email"',
      'log_level = "loud"',
      'poll_interval = "1ms"',
      "[supervisor]\nmax_failures = 0",
      "[supervisor]\nrestarts = 1",
      'idp = "https://x\\u0007"',
      "not toml = = =",
    ])
      expect(() => parseNestConfig(text, defaults), text).toThrow(NestConfigError);
  });

  it("what init writes parses back to the same settings", () => {
    const c = parseNestConfig(
      serializeNestConfig({
        idp: "https://id.example.com",
        email: "n+agent@example.com",
        troop: "https://t.example",
        troopAudience: "t.example",
      }),
      defaults,
    );
    expect(c).toMatchObject({
      idp: "https://id.example.com",
      email: "n+agent@example.com",
      troop: "https://t.example",
      troopAudience: "t.example",
    });
  });
});
