import { formatElapsed } from "../protocol/duration.ts";
import type { Grant } from "../protocol/types.ts";
import type { ClientContext } from "./context.ts";
import { ClientError } from "./errors.ts";
import type { GrantsClient } from "./grants.ts";

/**
 * Waits until a grant is no longer pending. Push first: `GET /{id}` with `Prefer: wait=N` and
 * `If-None-Match`, which an IdP that long-polls holds open until the grant changes (it says so with
 * `Preference-Applied: wait=N`); the next request goes out as soon as one returns. An IdP that
 * ignores the preference is polled every POLL_INTERVAL_MS (or its Retry-After, if longer) with
 * If-None-Match, so unchanged grants cost a 304. APES_NO_PUSH=1 forces polling (benchmarks, and
 * IdPs behind proxies that cut long requests); APES_POLL_INTERVAL_MS changes the interval.
 */

export const POLL_INTERVAL_MS = 3000;
/** Longest single long-poll; proxies commonly cut idle requests at 30-60 s. */
export const MAX_WAIT_S = 25;

export interface WaitOptions {
  /** Give up after this long (wait_timed_out); default: wait forever. */
  timeoutMs?: number;
  signal?: AbortSignal;
  onProgress?(elapsedMs: number, grant: Grant | undefined): void;
}

export function waitMode(ctx: ClientContext): { push: boolean; pollIntervalMs: number } {
  const v = Number(ctx.env.APES_POLL_INTERVAL_MS);
  return {
    push: ctx.env.APES_NO_PUSH !== "1",
    pollIntervalMs: Number.isFinite(v) && v >= 100 ? v : POLL_INTERVAL_MS,
  };
}

export async function waitForDecision(
  ctx: ClientContext,
  client: GrantsClient,
  id: string,
  options: WaitOptions = {},
): Promise<Grant> {
  const mode = waitMode(ctx);
  let push = mode.push;
  const started = ctx.clock.now();
  const deadline = options.timeoutMs !== undefined ? started + options.timeoutMs : Number.POSITIVE_INFINITY;
  let etag: string | undefined;
  let grant: Grant | undefined;
  let first = true;
  let fastAnswers = 0;
  let announced = false;
  for (;;) {
    options.signal?.throwIfAborted();
    const remainingMs = deadline - ctx.clock.now();
    if (remainingMs <= 0 && !first) throw timedOut(id, ctx.clock.now() - started);
    // The first read is plain (state + ETag); later ones long-poll against that ETag.
    const waitSeconds =
      push && !first ? Math.max(1, Math.min(MAX_WAIT_S, Math.ceil(remainingMs / 1000))) : undefined;
    const sent = Date.now();
    const r = await client.fetch(id, { etag, waitSeconds, signal: options.signal });
    if (waitSeconds !== undefined && r.waitApplied && !announced) {
      announced = true;
      ctx.debug(`wait: the IdP holds the request open (Prefer: wait=${waitSeconds} applied): push mode`);
    }
    if (r.grant) grant = r.grant;
    if (r.etag) etag = r.etag;
    if (grant && grant.status !== "pending") return grant;
    options.onProgress?.(ctx.clock.now() - started, grant);
    if (waitSeconds !== undefined && !r.waitApplied) {
      ctx.debug("wait: the IdP does not honour `Prefer: wait`; polling instead");
      push = false;
    } else if (waitSeconds !== undefined && Date.now() - sent < 50) {
      // Says it waited but answered at once: never spin against an IdP.
      if (++fastAnswers >= 3) push = false;
    } else fastAnswers = 0;
    first = false;
    if (push) continue;
    const left = deadline - ctx.clock.now();
    if (left <= 0) throw timedOut(id, ctx.clock.now() - started);
    const pause = Math.min(Math.max(mode.pollIntervalMs, r.retryAfterMs ?? 0), left);
    await ctx.clock.sleep(pause, options.signal);
  }
}

function timedOut(id: string, elapsedMs: number): ClientError<"wait_timed_out"> {
  return new ClientError("wait_timed_out", `grant ${id} is still pending after ${formatElapsed(elapsedMs)}`, {
    id,
    elapsedMs,
  });
}
