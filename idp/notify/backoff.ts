import type { AttemptOutcome } from "../store/types.ts";

/**
 * What one delivery attempt means for its outbox row: pure, so the schedule is tested without a clock.
 * Exponential backoff with "equal jitter" (half the step fixed, half random): retries of many rows
 * that failed together (a receiver that was down) spread out instead of arriving at once.
 */

export type DeliveryResult =
  | { ok: true }
  /** retry: a passing failure (network, timeout, 408/425/429, 5xx); gone: the receiver says the subscription no longer exists (404/410 for push, 410 otherwise). */
  | { ok: false; error: string; retry: boolean; gone?: boolean };

export interface RetryPolicy {
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
}

/** The delay before attempt `attempt + 1`, after `attempt` failed ones (attempt >= 1). */
export function backoffMs(attempt: number, policy: RetryPolicy, random: () => number): number {
  const step = Math.min(policy.retryMaxMs, policy.retryBaseMs * 2 ** Math.min(attempt - 1, 30));
  return Math.round(step / 2 + (step / 2) * random());
}

/** `attemptsBefore`: failed attempts already recorded on the row. */
export function outcomeOf(
  result: DeliveryResult,
  attemptsBefore: number,
  policy: RetryPolicy,
  nowMs: number,
  random: () => number = Math.random,
): AttemptOutcome {
  if (result.ok) return { delivered: true, at: Math.floor(nowMs / 1000) };
  const attempts = attemptsBefore + 1;
  if (!result.retry || attempts >= policy.maxAttempts) {
    const why = result.retry ? `${result.error} (gave up after ${attempts} attempts)` : result.error;
    return { delivered: false, error: why, dead: true };
  }
  return { delivered: false, error: result.error, retryAtMs: nowMs + backoffMs(attempts, policy, random) };
}

/** An HTTP answer's status as a delivery result. */
export function httpResult(status: number, goneStatuses: readonly number[] = [410]): DeliveryResult {
  if (status >= 200 && status < 300) return { ok: true };
  const error = `HTTP ${status}`;
  if (goneStatuses.includes(status)) return { ok: false, error, retry: false, gone: true };
  return { ok: false, error, retry: status >= 500 || status === 408 || status === 425 || status === 429 };
}
