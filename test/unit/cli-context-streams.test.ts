import { afterEach, describe, expect, it } from "vitest";
import { createContext } from "../../cli/context.ts";

// process.stdin/stdout/stderr are getters that make the stream on first access (up to ~2 ms each).
const NAMES = ["stdin", "stdout", "stderr"] as const;
const original = Object.fromEntries(NAMES.map((n) => [n, Object.getOwnPropertyDescriptor(process, n)!]));
afterEach(() => {
  for (const n of NAMES) Object.defineProperty(process, n, original[n]!);
});

describe("createContext's default io", () => {
  it("touches no process stream until a command uses it, then gives the process's own", () => {
    const touched: string[] = [];
    const fake = Object.fromEntries(NAMES.map((n) => [n, { name: n }]));
    for (const n of NAMES) {
      Object.defineProperty(process, n, {
        configurable: true,
        get: () => {
          touched.push(n);
          return fake[n];
        },
      });
    }
    const ctx = createContext({ json: false, debug: false, color: false }, { env: {} });
    ctx.debug("not shown");
    expect(touched).toEqual([]);
    expect(ctx.io.stderr).toBe(fake.stderr);
    expect(touched).toEqual(["stderr"]);
    expect(ctx.io.stdout).toBe(fake.stdout);
    expect(ctx.io.stdin).toBe(fake.stdin);
    expect(touched).toEqual(["stderr", "stdout", "stdin"]);
  });
});
