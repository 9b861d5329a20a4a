import { requireEndpoint } from "../../client/discovery.ts";
import { HttpProblem, isClientError } from "../../client/errors.ts";
import { authed, grantsClient } from "../../client/grants.ts";
import type { Grant } from "../../protocol/types.ts";
import type { Context } from "../context.ts";
import { grantWarning, shown, shownCommand, WARNING_MARK } from "./format.ts";

/**
 * `apes grants watch`: the approver's live inbox. One long poll on the grant list (`GET /api/grants?
 * status=pending` with `Prefer: wait` and If-None-Match; the IdP answers when the list changes), a
 * diff against what was seen (pure: `inboxChanges`), and for each grant that left the list one read
 * of its decision. Falls back to polling every POLL_MS when the IdP ignores `Prefer: wait`.
 */

export const WAIT_S = 25;
export const POLL_MS = 3000;
const MAX_BACKOFF_MS = 30_000;

export type WatchEvent = { event: "pending"; grant: Grant } | { event: "decided"; grant: Grant };

/** Pending grants of others (the IdP lists only grants this user may see). */
export function inboxOnly(grants: readonly Grant[], me: string): Grant[] {
  return grants.filter((g) => g.status === "pending" && g.request?.requester !== me);
}

/** What changed between two views of the inbox: new grants, and ids that left it (decided or gone). */
export function inboxChanges(
  seen: ReadonlyMap<string, Grant>,
  now: readonly Grant[],
): { arrived: Grant[]; left: string[] } {
  const ids = new Set(now.map((g) => g.id));
  return {
    arrived: now.filter((g) => !seen.has(g.id)),
    left: [...seen.keys()].filter((id) => !ids.has(id)),
  };
}

function clock(nowMs: number): string {
  return new Date(nowMs).toISOString().slice(11, 19);
}

/** One line per event, every field from the IdP shown through display.ts. */
export function eventLine(e: WatchEvent, nowMs: number): string {
  const g = e.grant;
  const r = g.request ?? ({} as Grant["request"]);
  if (e.event === "pending") {
    const command = shownCommand(g);
    const what = command
      ? `${grantWarning(g) ? `${WARNING_MARK} ` : ""}${command}`
      : Array.isArray(r.permissions)
        ? `permissions: ${r.permissions.map((p) => shown(p)).join(" ")}`
        : "-";
    const reason = typeof r.reason === "string" && r.reason ? ` (reason: ${shown(r.reason)})` : "";
    return `${clock(nowMs)} pending  ${shown(g.id)} ${shown(r.requester)} on ${shown(r.target_host)}: ${what}${reason}`;
  }
  const by = g.decided_by ? ` by ${shown(g.decided_by)}` : "";
  return `${clock(nowMs)} ${shown(g.status).padEnd(8)} ${shown(g.id)} ${shown(r.requester)} on ${shown(r.target_host)}${by}`;
}

export async function watchInbox(
  ctx: Context,
  signal: AbortSignal,
  emit: (e: WatchEvent) => void,
  onStatus: (text: string) => void,
): Promise<void> {
  const client = await grantsClient(ctx);
  const auth = await authed(ctx);
  const me = client.session.email;
  const base = requireEndpoint(
    client.endpoints,
    client.endpoints.grantsEndpoint,
    "openape_grants_endpoint",
  ).replace(/\/+$/, "");
  const url = `${base}?status=pending&type=command&limit=100`;
  const seen = new Map<string, Grant>();
  let etag: string | undefined;
  let failures = 0;
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(t);
          resolve();
        },
        { once: true },
      );
    });
  let first = true;
  while (!signal.aborted) {
    let waitApplied = true;
    try {
      const res = await auth.call<{ data?: Grant[] }>({
        url,
        ...(first ? {} : { headers: { prefer: `wait=${WAIT_S}` } }),
        ...(etag ? { etag } : {}),
        signal,
        timeoutMs: (WAIT_S + 10) * 1000,
      });
      failures = 0;
      waitApplied = first || /\bwait\b/.test(res.headers.get("preference-applied") ?? "");
      first = false;
      if (!res.notModified) {
        etag = res.etag;
        const now = inboxOnly(Array.isArray(res.body?.data) ? res.body.data : [], me);
        const { arrived, left } = inboxChanges(seen, now);
        for (const g of arrived) {
          seen.set(g.id, g);
          emit({ event: "pending", grant: g });
        }
        for (const id of left) {
          seen.delete(id);
          try {
            const g = await client.get(id);
            if (g.status !== "pending") emit({ event: "decided", grant: g });
          } catch (e) {
            if (!(e instanceof HttpProblem && e.status === 404)) throw e;
          }
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      // Auth and permission problems end the watch; the network and the IdP coming back do not.
      const passing =
        isClientError(e, "idp_unreachable") ||
        (e instanceof HttpProblem && (e.status >= 500 || e.status === 429));
      if (!passing) throw e;
      failures++;
      const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(failures - 1, 5));
      onStatus(
        `the IdP did not answer (${(e as Error).message}); trying again in ${Math.round(delay / 1000)} s`,
      );
      await sleep(delay);
      continue;
    }
    if (!waitApplied) await sleep(POLL_MS);
  }
}

/** The words of a desktop notification for a pending grant (already made safe by eventLine's parts). */
export function desktopText(g: Grant): { title: string; body: string } {
  const r = g.request ?? ({} as Grant["request"]);
  const command = shownCommand(g);
  return {
    title: `apes: ${shown(r.requester)} asks for approval on ${shown(r.target_host)}`,
    body: [
      command ? `${grantWarning(g) ? `${WARNING_MARK} ` : ""}${command}` : "",
      r.reason ? `reason: ${shown(r.reason)}` : "",
    ]
      .filter(Boolean)
      .join("\n")
      .slice(0, 500),
  };
}

/**
 * `notify-send` when it is on PATH (a desktop session); argv only, no shell, 5 s at most, failures
 * ignored: the terminal line was printed already.
 */
export function sendDesktopNotification(g: Grant): void {
  const { title, body } = desktopText(g);
  const { execFile } = process.getBuiltinModule("node:child_process");
  execFile("notify-send", ["--app-name=apes", "--", title, body], { timeout: 5000 }, () => undefined).on(
    "error",
    () => undefined,
  );
}

/** The answer to "approve, deny or skip?": undefined for skip (the default) and for anything else. */
export function parseDecision(answer: string): "approve" | "deny" | undefined {
  const a = answer.trim().toLowerCase();
  if (a === "a" || a === "approve") return "approve";
  if (a === "d" || a === "deny") return "deny";
  return undefined;
}
