import { createHmac } from "node:crypto";
import { ProblemError } from "../../protocol/problem.ts";
import type { Idp, Principal } from "../context.ts";
import type { Router } from "../http.ts";
import { REVOCATION_RETENTION_S, type RevocationEvent } from "../store/types.ts";
import { MAX_WAIT, preferWait } from "./common.ts";
import { PATHS } from "./discovery.ts";

/**
 * The revocation feed (docs/control-plane.md, "Revocations"): an SP that keeps connections open on
 * tokens this IdP issued (the troop's nest sockets) learns here, within a second, that an identity
 * was disabled or a delegation revoked. Public, yet it names nobody: each event carries only an
 * opaque handle, HMAC(secret, kind | subject), which the tokens issued for SP audiences list in their
 * `rev` claim. Only a holder of such a token can link an event to it.
 */

const HANDLE_CONTEXT = "apes-revocation-handle-v1\n";
const MAX_EVENTS = 1000;
/** How often the watcher looks for new events while long polls wait (also those of other processes). */
const POLL_MS = 200;

/** The opaque handle of an identity (`user`) or a delegation, as events and `rev` claims carry it. */
export function revocationHandle(secret: Buffer, kind: RevocationEvent["kind"], subject: string): string {
  return createHmac("sha256", secret)
    .update(HANDLE_CONTEXT)
    .update(`${kind}\n${subject}`)
    .digest()
    .subarray(0, 16)
    .toString("base64url");
}

function count(value: string | null, name: string, max: number, fallback: number): number {
  if (value === null) return fallback;
  if (!/^\d{1,15}$/.test(value) || Number(value) > max) {
    throw new ProblemError("invalid_request", `${name} must be an integer in 0..${max}`);
  }
  return Number(value);
}

/**
 * One watcher for every waiting long poll: while any waits, it reads the newest seq every POLL_MS
 * (one indexed MAX per tick, however many wait: the feed is public, waiters must not multiply
 * database reads) and wakes each waiter whose `after` it has passed.
 */
function feedWatcher(idp: Idp) {
  const waiters = new Map<() => void, number>();
  let timer: NodeJS.Timeout | undefined;
  const tick = async () => {
    try {
      const seq = await idp.store.lastRevocation();
      for (const [wake, after] of [...waiters]) if (seq > after) wake();
    } catch (e) {
      idp.log.log("warn", "revocation feed check failed", { error: (e as Error).message });
    }
  };
  return {
    /** Resolves once an event after `after` exists, at `deadline` (ms), or when `signal` aborts. */
    wait(after: number, deadline: number, signal: AbortSignal): Promise<void> {
      return new Promise((resolve) => {
        const done = () => {
          waiters.delete(done);
          clearTimeout(timeout);
          signal.removeEventListener("abort", done);
          idp.shutdown.removeEventListener("abort", done);
          if (waiters.size === 0 && timer) {
            clearInterval(timer);
            timer = undefined;
          }
          resolve();
        };
        const timeout = setTimeout(done, Math.max(0, deadline - Date.now()));
        signal.addEventListener("abort", done, { once: true });
        idp.shutdown.addEventListener("abort", done, { once: true });
        waiters.set(done, after);
        if (!timer) {
          timer = setInterval(() => void tick(), POLL_MS);
          timer.unref();
        }
      });
    },
  };
}

export function registerRevocationRoutes(router: Router<Principal>, idp: Idp): void {
  const watcher = feedWatcher(idp);
  router.add("GET", PATHS.revocations, false, async (call) => {
    for (const k of call.query.keys()) {
      if (k !== "after" && k !== "limit")
        throw new ProblemError("invalid_request", `unknown query parameter "${k}"`);
    }
    const after = count(call.query.get("after"), "after", Number.MAX_SAFE_INTEGER, 0);
    const limit = count(call.query.get("limit"), "limit", MAX_EVENTS, MAX_EVENTS) || 1;
    const wait = preferWait(call) ?? 0;
    const deadline = Date.now() + Math.min(wait, MAX_WAIT) * 1000;
    let events = await idp.store.revocationsAfter(after, limit);
    // Long poll: the shared watcher sees writes of this process and of others (admin commands) alike.
    while (events.length === 0 && Date.now() < deadline && !call.closed.aborted && !idp.shutdown.aborted) {
      await watcher.wait(after, deadline, call.closed);
      events = await idp.store.revocationsAfter(after, limit);
    }
    const next = events.length ? events[events.length - 1]!.seq : Math.max(after, 0);
    return {
      status: 200,
      body: {
        events: events.map((e) => ({
          seq: e.seq,
          handle: idp.revocationHandle(e.kind, e.subject),
          at: e.at,
        })),
        next,
        retention_s: REVOCATION_RETENTION_S,
      },
    };
  });
}
