/**
 * Exponential backoff with full jitter (the delay is uniform in [0, min(cap, base * 2^attempt))):
 * after a troop restart a thousand nests spread their reconnects over the whole window instead of
 * arriving together at each doubling. Pure: the random source is injected.
 */
export interface BackoffPolicy {
  /** The first window, in milliseconds. */
  baseMs: number;
  /** The largest window, in milliseconds. */
  maxMs: number;
}

export const RECONNECT_BACKOFF: BackoffPolicy = { baseMs: 250, maxMs: 30_000 };

/** The upper end of the window for this attempt (0 = the first retry). */
export function backoffCeiling(attempt: number, policy: BackoffPolicy): number {
  const n = Math.max(0, Math.min(Math.floor(attempt), 30));
  return Math.min(policy.maxMs, policy.baseMs * 2 ** n);
}

/** The delay before retry number `attempt`: uniform in [0, ceiling). */
export function fullJitter(
  attempt: number,
  policy: BackoffPolicy,
  random: () => number = Math.random,
): number {
  const r = random();
  const unit = Number.isFinite(r) && r >= 0 && r < 1 ? r : 0;
  return Math.floor(unit * backoffCeiling(attempt, policy));
}
