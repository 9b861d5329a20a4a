import { randomUUID } from "node:crypto";
import { request } from "../../client/http.ts";
import { troopTokens } from "../../nest/identity.ts";
import type { IntentKind, SpawnSpec } from "../../protocol/troop.ts";
import type { Context } from "../context.ts";
import { usageError } from "../errors.ts";

/**
 * The troop's REST API (docs/control-plane.md, REST) for owners and operators: `apes nest ...`.
 * Authenticated with the caller's own token for the troop's audience (their session exchanged at the
 * IdP), never a token for the IdP's own APIs. The troop is named by --troop or APES_TROOP; its
 * audience by --troop-audience, APES_TROOP_AUDIENCE, or its host.
 */

export interface TroopOptions {
  troop?: string;
  troopAudience?: string;
}

export interface TroopIntent {
  id: string;
  nest: string;
  kind: IntentKind;
  agent: string;
  state: string;
  detail?: string;
  seq?: number;
  submitted_by?: string;
  submitted_via?: string;
  created_at?: number;
  updated_at?: number;
  nest_connected?: boolean;
}

export function troopClient(ctx: Context, o: TroopOptions) {
  const base = (o.troop ?? ctx.env.APES_TROOP ?? "").replace(/\/+$/, "");
  if (!base) throw usageError("which troop? pass --troop <url> or set APES_TROOP");
  let audience: string;
  try {
    audience = o.troopAudience ?? ctx.env.APES_TROOP_AUDIENCE ?? new URL(base).host;
  } catch {
    throw usageError(`--troop ${base} is not a URL`);
  }
  const token = troopTokens(ctx, audience);
  const call = async <T>(method: "GET" | "POST", path: string, json?: unknown): Promise<T> =>
    (
      await request<T>(ctx, {
        url: `${base}${path}`,
        method,
        token: await token(),
        ...(json !== undefined ? { json } : {}),
      })
    ).body;
  return {
    base,
    submit(nest: string, kind: IntentKind, agent: string, spec?: SpawnSpec, id?: string) {
      return call<TroopIntent>("POST", "/v1/intents", {
        id: id ?? `${kind}-${agent}-${randomUUID()}`,
        nest,
        kind,
        agent,
        ...(spec ? { spec } : {}),
      });
    },
    intent: (id: string) => call<TroopIntent>("GET", `/v1/intents/${encodeURIComponent(id)}`),
    intents: (nest: string, limit = 20) =>
      call<{ data: TroopIntent[] }>("GET", `/v1/intents?nest=${encodeURIComponent(nest)}&limit=${limit}`),
    nests: () => call<{ data: Record<string, unknown>[] }>("GET", "/v1/nests"),
    agents: (nest: string) =>
      call<{ nest: string; data: Record<string, unknown>[] }>(
        "GET",
        `/v1/nests/${encodeURIComponent(nest)}/agents`,
      ),
  };
}

/** Polls the intent until the nest reports it done or failed (or the deadline passes). */
export async function waitForIntent(
  ctx: Context,
  client: ReturnType<typeof troopClient>,
  id: string,
  timeoutMs: number,
  onProgress?: (i: TroopIntent) => Promise<void>,
): Promise<TroopIntent> {
  const end = ctx.clock.now() + timeoutMs;
  for (;;) {
    const i = await client.intent(id);
    if (i.state === "done" || i.state === "failed") return i;
    if (onProgress) await onProgress(i);
    if (ctx.clock.now() > end) return i;
    await ctx.clock.sleep(500);
  }
}
