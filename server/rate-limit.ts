import { ProblemError } from "../protocol/problem.ts";

/**
 * Token bucket per key: `limit` requests per `windowSec`, refilled continuously. At most `capacity`
 * keys are tracked; beyond, the least recently used bucket is forgotten (it has had the longest to
 * refill), never the whole table: a flood of new keys cannot reset an active client's count.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly limit: number;
  private readonly perMs: number;
  private readonly capacity: number;
  constructor(limit: number, windowSec: number, capacity = 100_000) {
    this.limit = limit;
    this.perMs = limit / (windowSec * 1000);
    this.capacity = capacity;
  }
  /** Seconds to wait, or 0 when the request may proceed. */
  take(key: string, nowMs: number): number {
    let b = this.buckets.get(key);
    if (b) {
      this.buckets.delete(key); // re-inserted below: the Map's order is the order of last use
    } else {
      b = { tokens: this.limit, at: nowMs };
      if (this.buckets.size >= this.capacity) this.buckets.delete(this.buckets.keys().next().value!);
    }
    this.buckets.set(key, b);
    b.tokens = Math.min(this.limit, b.tokens + (nowMs - b.at) * this.perMs);
    b.at = nowMs;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / this.perMs / 1000));
  }
}

/** `N/PERIOD` like "600/1m", "20/10s", "100000/1h"; "off" disables. */
export function parseRateLimit(spec: string): { limit: number; windowSec: number } | null {
  if (spec === "off" || spec === "0") return null;
  const m = /^(\d+)\/(\d*)(s|m|h)$/.exec(spec.trim());
  if (!m) throw new Error(`invalid rate limit "${spec}" (expected N/PERIOD such as 600/1m)`);
  const limit = Number(m[1]);
  const windowSec = Number(m[2] || "1") * { s: 1, m: 60, h: 3600 }[m[3] as "s" | "m" | "h"];
  if (limit < 1 || windowSec < 1) throw new Error(`invalid rate limit "${spec}"`);
  return { limit, windowSec };
}

/**
 * One of `workers` processes' share of a limit: N/PERIOD becomes floor(N/workers)/PERIOD (at least
 * 1), so however a client's connections are spread over the workers, together they admit no more
 * than the limit (a client on one keep-alive connection gets one share). "off" stays off.
 */
export function shareOfRateLimit(spec: string, workers: number): string {
  const limit = parseRateLimit(spec);
  if (!limit || workers <= 1) return spec;
  return `${Math.max(1, Math.floor(limit.limit / workers))}/${limit.windowSec}s`;
}

/** A limiter for a spec, or undefined for "off". */
export function rateLimiterOf(spec: string): RateLimiter | undefined {
  const limit = parseRateLimit(spec);
  return limit ? new RateLimiter(limit.limit, limit.windowSec) : undefined;
}

/** One bucket table per endpoint class (the server names its classes, e.g. "login" | "api"). */
export class RateLimits<C extends string> {
  private readonly limiters = new Map<C, RateLimiter>();
  constructor(specs: Readonly<Record<C, string>>) {
    for (const [limitClass, spec] of Object.entries(specs) as [C, string][]) {
      const limiter = rateLimiterOf(spec);
      if (limiter) this.limiters.set(limitClass, limiter);
    }
  }
  /** Takes one request from `key`'s bucket of the class; throws 429 (with retry_after) when empty. */
  take(limitClass: C, key: string): void {
    const limiter = this.limiters.get(limitClass);
    if (!limiter) return;
    const wait = limiter.take(key, Date.now());
    if (wait > 0)
      throw new ProblemError("rate_limited", `slow down; retry in ${wait} s`, { retry_after: wait });
  }
}
