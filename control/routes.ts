import { canonicalIdentity } from "../protocol/names.ts";
import { ProblemError } from "../protocol/problem.ts";
import {
  INTENT_ID,
  type IntentSubmission,
  parseIntentSubmission,
  parseNestFrame,
} from "../protocol/troop.ts";
import { type Call, jsonBody, Router, readBody } from "../server/http.ts";
import { type Actor, chainOf, mayCommand, sessionActor } from "./actors.ts";
import type { Troop } from "./context.ts";
import { applyNestFrame } from "./frames.ts";
import { statusPage } from "./status-page.ts";
import type { NestRecord, StoredIntent } from "./store/types.ts";

/**
 * The troop's REST API (docs/control-plane.md, "REST"): every route takes a bearer token verified
 * like the socket's. People and scripts submit and read intents for nests they may command; a nest
 * without a socket fetches its intents and posts its frames here.
 */

const MAX_WAIT_S = 60;

/** The body's meaning, independent of key order and whitespace: what "the same intent" compares. */
export function canonicalSubmission(s: IntentSubmission): string {
  const spec = s.spec
    ? { owner: s.spec.owner, argv: s.spec.argv, env: s.spec.env, secrets: s.spec.secrets }
    : undefined;
  return JSON.stringify({ id: s.id, nest: s.nest, kind: s.kind, agent: s.agent, ...(spec ? { spec } : {}) });
}

function intentView(s: StoredIntent, connected: boolean) {
  return {
    ...s.intent,
    state: s.state,
    ...(s.detail !== undefined ? { detail: s.detail } : {}),
    updated_at: s.updated_at,
    nest_connected: connected,
  };
}

function nestView(troop: Troop, n: NestRecord) {
  return {
    id: n.id,
    connected: troop.connected(n.id),
    last_seen: n.lastSeen,
    ...(n.version !== undefined ? { version: n.version } : {}),
    ...(n.actingFor !== undefined ? { acting_for: n.actingFor } : {}),
    commanders: n.commanders,
    agents: n.agents.length,
  };
}

/** The nest named by `id` if the actor may see it (command it, or be it); 404 otherwise (no probing). */
async function visibleNest(troop: Troop, actor: Actor, id: string): Promise<NestRecord> {
  const nestId = canonicalIdentity(id);
  const n = nestId ? await troop.store.getNest(nestId) : undefined;
  if (!n || !(n.id === actor.holder || mayCommand(actor, n)))
    throw new ProblemError("not_found", "no such nest");
  return n;
}

function onlyQuery(call: Call, allowed: readonly string[]): void {
  const seen = new Set<string>();
  for (const k of call.query.keys()) {
    if (!allowed.includes(k)) throw new ProblemError("invalid_request", `unknown query parameter "${k}"`);
    if (seen.has(k)) throw new ProblemError("invalid_request", `query parameter "${k}" is repeated`);
    seen.add(k);
  }
}

function limitOf(call: Call): number {
  const text = call.query.get("limit");
  const limit = text === null ? 20 : Number(text);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100)
    throw new ProblemError("invalid_request", "limit must be an integer in 1..100");
  return limit;
}

function preferWait(call: Call): number {
  const raw = call.req.headers.prefer;
  const m = typeof raw === "string" ? /(?:^|[,;\s])wait=(\d{1,6})(?:$|[,;\s])/.exec(raw) : null;
  return m ? Math.min(Number(m[1]), MAX_WAIT_S) : 0;
}

export function troopRoutes(troop: Troop): Router<Actor> {
  const router = new Router<Actor>();

  router.add("POST", "/v1/intents", true, async (call, actor) => {
    const body = await jsonBody(call);
    const parsed = parseIntentSubmission(body);
    const chain = chainOf(actor);
    if (!parsed.ok) {
      troop.audit.write("intent.refused", { ...chain, reason: parsed.reason });
      throw new ProblemError("invalid_request", parsed.reason);
    }
    const s = parsed.value;
    // Routing is explicit: the named nest, and only for its owner and approvers.
    const nest = await troop.store.getNest(s.nest);
    if (!nest || !mayCommand(actor, nest)) {
      troop.audit.write("intent.refused", {
        ...chain,
        nest: s.nest,
        intent: s.id,
        reason: nest ? "not a commander" : "unknown nest",
      });
      if (!nest) throw new ProblemError("not_found", `no nest ${s.nest} has connected to this troop`);
      throw new ProblemError("forbidden", `only the owner and approvers of ${s.nest} may command it`);
    }
    // A new agent belongs to whoever asked for it (its owner approves its grants): nobody spawns
    // an agent in someone else's name.
    if (s.spec && s.spec.owner !== actor.principal) {
      troop.audit.write("intent.refused", {
        ...chain,
        nest: s.nest,
        intent: s.id,
        reason: "spec.owner is not the submitter",
      });
      throw new ProblemError(
        "forbidden",
        "spec.owner must be the submitter (the delegator, for a delegated token)",
      );
    }
    const r = await troop.store.submitIntent(
      s,
      canonicalSubmission(s),
      { sub: chain.by, ...(chain.via ? { via: chain.via } : {}) },
      troop.now(),
    );
    if (r.outcome === "conflict") {
      troop.audit.write("intent.refused", {
        ...chain,
        nest: s.nest,
        intent: s.id,
        reason: "id reused with another body",
      });
      throw new ProblemError("conflict", `intent ${s.id} exists with a different body`);
    }
    if (r.outcome === "same") {
      troop.audit.write("intent.replayed", { ...chain, nest: s.nest, intent: s.id });
      return { status: 200, body: intentView(r.stored, troop.connected(s.nest)) };
    }
    troop.audit.write("intent.submitted", {
      ...chain,
      nest: s.nest,
      intent: s.id,
      seq: r.stored.intent.seq,
      kind: s.kind,
      agent: s.agent,
      ...(s.spec ? { secrets: s.spec.secrets } : {}),
    });
    troop.events.emit(`intent:${s.nest}`);
    troop.push(s.nest);
    return {
      status: 201,
      body: intentView(r.stored, troop.connected(s.nest)),
      headers: { location: `/v1/intents/${encodeURIComponent(s.id)}` },
    };
  });

  router.add("GET", "/v1/intents", true, async (call, actor) => {
    onlyQuery(call, ["nest", "limit", "cursor"]);
    const nestParam = call.query.get("nest");
    if (!nestParam)
      throw new ProblemError("invalid_request", "nest is required (intents are listed per nest)");
    const nest = await visibleNest(troop, actor, nestParam);
    const limit = limitOf(call);
    const cursorText = call.query.get("cursor");
    let before: { seq: number } | undefined;
    if (cursorText !== null) {
      if (!/^[1-9]\d{0,15}$/.test(cursorText)) throw new ProblemError("invalid_request", "invalid cursor");
      before = { seq: Number(cursorText) };
    }
    const items = await troop.store.listIntents(nest.id, limit + 1, before);
    const page = items.slice(0, limit);
    const more = items.length > limit;
    return {
      status: 200,
      body: {
        data: page.map((i) => intentView(i, troop.connected(nest.id))),
        pagination: { cursor: more ? String(page[page.length - 1]!.intent.seq) : null, has_more: more },
      },
    };
  });

  router.add("GET", "/v1/intents/:id", true, async (call, actor) => {
    const id = call.params.id!;
    const s = INTENT_ID.test(id) ? await troop.store.getIntent(id) : undefined;
    if (!s) throw new ProblemError("not_found", "no such intent");
    await visibleNest(troop, actor, s.intent.nest).catch(() => {
      throw new ProblemError("not_found", "no such intent");
    });
    return { status: 200, body: intentView(s, troop.connected(s.intent.nest)) };
  });

  router.add("GET", "/v1/nests", true, async (call, actor) => {
    onlyQuery(call, []);
    const nests = await troop.store.nestsVisibleTo(actor.principal);
    const own = nests.some((n) => n.id === actor.holder)
      ? []
      : await troop.store.nestsVisibleTo(actor.holder);
    const all = [...nests, ...own.filter((n) => n.id === actor.holder)];
    return { status: 200, body: { data: all.map((n) => nestView(troop, n)) } };
  });

  router.add("GET", "/v1/nests/:id/agents", true, async (call, actor) => {
    const n = await visibleNest(troop, actor, call.params.id!);
    return { status: 200, body: { nest: n.id, data: n.agents } };
  });

  // The fallback for a nest without a socket: the same intents and frames over plain requests.
  router.add("GET", "/v1/nest/intents", true, async (call, actor) => {
    onlyQuery(call, []);
    const nest = actor.holder;
    await troop.store.seenNest(nest, actor.commanders, actor.actingFor, troop.now());
    let pending = await troop.store.pendingFor(nest, 100);
    const wait = preferWait(call);
    if (pending.length === 0 && wait > 0) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          troop.events.off(`intent:${nest}`, done);
          call.closed.removeEventListener("abort", done);
          troop.shutdown.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, wait * 1000);
        troop.events.on(`intent:${nest}`, done);
        call.closed.addEventListener("abort", done);
        troop.shutdown.addEventListener("abort", done);
      });
      pending = await troop.store.pendingFor(nest, 100);
    }
    for (const p of pending) {
      if (p.state !== "queued") continue;
      await troop.store.applyEvent(p.intent.id, nest, "delivered", undefined, troop.now());
      troop.audit.write("intent.delivered", {
        nest,
        intent: p.intent.id,
        seq: p.intent.seq,
        channel: "rest",
      });
    }
    return { status: 200, body: { data: pending.map((p) => p.intent) } };
  });

  router.add("POST", "/v1/nest/frames", true, async (call, actor) => {
    const raw = await readBody(call.req);
    const parsed = parseNestFrame(raw.toString("utf8"));
    if (!parsed.ok) throw new ProblemError("invalid_request", parsed.reason);
    const f = parsed.value;
    if (f.type === "reauth")
      throw new ProblemError(
        "invalid_request",
        "reauth is a socket frame: send the fresh token as the bearer",
      );
    await troop.store.seenNest(actor.holder, actor.commanders, actor.actingFor, troop.now());
    const r = await applyNestFrame(troop, actor.holder, actor, f, "rest");
    if (!r.ok) {
      throw new ProblemError(r.code === "not_addressed" ? "forbidden" : "conflict", r.detail);
    }
    return { status: 200, body: { ok: true } };
  });

  // The status page: the browser's DDISA session (with --web-login), else the bearer token.
  router.add("GET", "/status", false, async (call) => {
    const session = troop.sp?.session(call.req.headers);
    if (!session && troop.sp && call.req.headers.authorization === undefined)
      return { status: 303, headers: { location: troop.sp.loginPath, "cache-control": "no-store" } };
    const actor = session ? sessionActor(session) : await troop.authenticate(call);
    const nests = await troop.store.nestsVisibleTo(actor.principal);
    const rows = await Promise.all(
      nests.map(async (n) => ({
        nest: n,
        connected: troop.connected(n.id),
        intents: await troop.store.listIntents(n.id, 20),
      })),
    );
    const signOut =
      session && troop.sp ? { action: troop.sp.logoutPath, csrf: troop.sp.csrf(session) } : undefined;
    return statusPage(actor, rows, troop.now(), signOut);
  });

  const sp = troop.sp;
  if (sp) {
    const web = (call: Call) => sp.handle(call);
    for (const path of ["/auth/login", "/auth/callback", "/auth/sp.css"]) router.add("GET", path, false, web);
    for (const path of ["/auth/login", "/auth/logout"]) router.add("POST", path, false, web);
  }

  return router;
}
