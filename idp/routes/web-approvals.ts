import { createHash } from "node:crypto";
import { ProblemError } from "../../protocol/problem.ts";
import { type Call, jsonBody, type Reply, type Router } from "../../server/http.ts";
import { htmlReply } from "../../server/web/html.ts";
import { type ApprovalSettings, approvalBinding, passkeyVerifier } from "../approval.ts";
import { type Idp, inboxKey, type Principal } from "../context.ts";
import { canDecide, canView, parseApproveOverrides } from "../grants.ts";
import type { StoredGrant } from "../store/types.ts";
import { delegationsPage, grantPage, historyPage, inboxPage } from "../web/approval-pages.ts";
import type { WebContext } from "../web/context.ts";
import { type GrantSummary, grantSummary } from "../web/grant-view.ts";
import { errorPage } from "../web/pages.ts";
import { startAssertion } from "../web/passkeys.ts";
import { WEB_PATHS } from "../web/paths.ts";
import { CSRF_FIELD, checkStateChange, currentHuman, formToken, type Human } from "../web/session.ts";
import { decodeCursor, encodeCursor, etagMatches, loadGrant, MAX_WAIT, preferWait } from "./common.ts";
import { createDelegation, revokeDelegation } from "./delegations.ts";
import { applyAction } from "./grants.ts";
import { formBody, redirect } from "./web-login.ts";

/**
 * The approval pages (README "Approval pages"): the inbox (live), a grant's page with approve (a
 * fresh passkey assertion bound to the grant, its request and the decision) and deny, the history
 * of my decisions, my delegations. Their scripts make same-origin JSON calls authenticated by the
 * session cookie; every state change passes checkStateChange (same origin, the session's CSRF
 * token, the SameSite=Strict cookie), and approve goes through the API's own applyAction with a
 * `webauthn` proof, so the page and the API decide by the same rules. The page never approves
 * without a proof, whatever --allow-bearer-approve says: a session cookie alone approves nothing.
 */

/** At most this many pending grants in the inbox (newest first). */
const INBOX_MAX = 50;
const HISTORY_PAGE = 20;
const DELEGATIONS_MAX = 100;

const sha = (text: string) => createHash("sha256").update(text).digest("base64url").slice(0, 27);

/** The same principal a session token of this human gets (its own, not delegated). */
async function principalOf(idp: Idp, human: Human): Promise<Principal> {
  const user = await idp.store.getUser(human.email);
  if (!user || user.disabled) throw new ProblemError("unauthorized", "you are not signed in");
  return {
    sub: user.email,
    user,
    actor: { sub: user.email, kind: user.kind, admin: user.admin, delegated: false },
    tokenExp: 0,
  };
}

/** A page's own script reading JSON: refused when the browser says another site started it. */
function sameSiteRead(call: Call): void {
  const site = call.req.headers["sec-fetch-site"];
  if (site !== undefined && site !== "same-origin") {
    throw new ProblemError("forbidden", `refused as a possible cross-site request: a ${site} request`);
  }
}

interface InboxView {
  items: GrantSummary[];
  etag: string;
}

/**
 * Waits (Prefer: wait=N, at most MAX_WAIT s) while the client's view, its If-None-Match or the
 * current ETag, is still current; `subscribe` is called before each read so that a change between
 * the read and the wait still wakes it. The same scheme as the grants API's long poll.
 */
async function longPoll<V extends { etag: string }>(
  idp: Idp,
  call: Call,
  first: V,
  subscribe: (v: V, signal: AbortSignal) => Promise<void>,
  read: () => Promise<V>,
): Promise<V> {
  const wait = preferWait(call);
  let view = first;
  if (wait === undefined) return view;
  const raw = call.req.headers["if-none-match"];
  const seen = (Array.isArray(raw) ? raw[0] : raw) ?? view.etag;
  if (!etagMatches(seen, view.etag)) return view;
  const stop = AbortSignal.any([
    call.closed,
    idp.shutdown,
    AbortSignal.timeout(Math.min(wait, MAX_WAIT) * 1000),
  ]);
  for (;;) {
    const round = new AbortController();
    const changed = subscribe(view, AbortSignal.any([stop, round.signal]));
    view = await read();
    if (stop.aborted || !etagMatches(seen, view.etag)) {
      round.abort();
      return view;
    }
    await changed;
  }
}

export function registerWebApprovalRoutes<P>(router: Router<P>, web: WebContext): void {
  const idp = web.idp;
  const verifyPasskey = passkeyVerifier(web);
  // Never bearer: an approval from a page always carries its passkey assertion.
  const approvals: ApprovalSettings = { allowBearer: false, ...(verifyPasskey ? { verifyPasskey } : {}) };
  const G = WEB_PATHS.grants;

  const human = async (call: Call) => (web.unavailable ? undefined : await currentHuman(web, call));
  const loginFirst = (call: Call) =>
    redirect(`${WEB_PATHS.login}?return_to=${encodeURIComponent(call.path)}`);

  /** The signed-in principal of a JSON call (401 otherwise), rate limited like the API. */
  const jsonPrincipal = async (call: Call): Promise<{ h: Human; p: Principal }> => {
    const h = await human(call);
    if (!h) throw new ProblemError("unauthorized", "you are not signed in: sign in again");
    idp.rateLimit("api", `sub:${h.email}`);
    return { h, p: await principalOf(idp, h) };
  };

  /** A page's ProblemError as a readable page (429s stay problems, with Retry-After). */
  const asPage = async (run: () => Promise<Reply>): Promise<Reply> => {
    try {
      return await run();
    } catch (e) {
      if (!(e instanceof ProblemError) || e.status === 429) throw e;
      return htmlReply(
        e.status,
        errorPage("That did not work", e.message, { href: WEB_PATHS.inbox, text: "Back to the inbox" }),
      );
    }
  };

  /** A command grant this principal may see; any other is "no such grant" (as in the API). */
  const visibleCommand = async (p: Principal, id: string): Promise<StoredGrant> => {
    const stored = await loadGrant(idp, id);
    const requester = await idp.store.getUser(stored.grant.request.requester);
    if (stored.grant.type !== "command" || !canView(p.actor, stored.grant, requester)) {
      throw new ProblemError("not_found", "no such grant");
    }
    return stored;
  };

  const inboxView = async (p: Principal): Promise<InboxView> => {
    const requesters = [p.sub, ...(await idp.store.subordinatesOf(p.sub))];
    const result = await idp.store.queryGrants({
      requesters,
      status: "pending",
      type: "command",
      limit: INBOX_MAX,
    });
    const items: GrantSummary[] = [];
    const versions: string[] = [];
    for (const s of result.items) {
      const requester = await idp.store.getUser(s.grant.request.requester);
      // Only what this person may decide (a human's own grant, an agent's owner or approver).
      if (!canDecide(p.actor, requester).ok) continue;
      items.push(grantSummary(s.grant, requester));
      versions.push(`${s.grant.id}:${s.version}`);
    }
    return { items, etag: `"${sha(versions.join(","))}"` };
  };

  router.add("GET", WEB_PATHS.inbox, false, async (call) => {
    const h = await human(call);
    if (!h) return loginFirst(call);
    const view = await inboxView(await principalOf(idp, h));
    const vapidKey = idp.notify?.vapidPublicKey;
    return htmlReply(
      200,
      inboxPage({
        email: h.email,
        items: view.items,
        etag: view.etag,
        csrf: formToken(web, h),
        ...(vapidKey ? { vapidKey } : {}),
      }),
    );
  });

  // The inbox script's long poll: answered at once when the list differs from its ETag, else when
  // a grant this person sees is created or decided (GrantEvents.inboxChanged, the push of the
  // grants list's long poll), else after the wait (304).
  router.add("GET", WEB_PATHS.inboxItems, false, async (call) => {
    sameSiteRead(call);
    const { p } = await jsonPrincipal(call);
    const view = await longPoll(
      idp,
      call,
      await inboxView(p),
      (_, signal) => idp.events.wait(inboxKey(p.sub), signal),
      () => inboxView(p),
    );
    // The wait may have outlasted the session (logout, a disabled account): check again.
    if (!(await human(call))) throw new ProblemError("unauthorized", "you are not signed in: sign in again");
    const headers = { etag: view.etag };
    if (etagMatches(call.req.headers["if-none-match"], view.etag)) return { status: 304, headers };
    return { status: 200, body: { items: view.items, etag: view.etag }, headers };
  });

  router.add("GET", `${G}/:id`, false, (call) =>
    asPage(async () => {
      const h = await human(call);
      if (!h) return loginFirst(call);
      const p = await principalOf(idp, h);
      const stored = await visibleCommand(p, call.params.id!);
      const requester = await idp.store.getUser(stored.grant.request.requester);
      const decision = canDecide(p.actor, requester);
      return htmlReply(
        200,
        grantPage({
          grant: stored.grant,
          requester,
          ...(decision.ok ? {} : { cannotDecide: decision.reason }),
          csrf: formToken(web, h),
          etag: `"${stored.version}"`,
        }),
      );
    }),
  );

  // The grant page's long poll: it reloads when the grant is decided elsewhere.
  router.add("GET", `${G}/:id/state`, false, async (call) => {
    sameSiteRead(call);
    const { p } = await jsonPrincipal(call);
    const id = call.params.id!;
    const read = async () => {
      const s = await visibleCommand(p, id);
      return { status: s.grant.status, etag: `"${s.version}"` };
    };
    const view = await longPoll(idp, call, await read(), (_, signal) => idp.events.wait(id, signal), read);
    if (!(await human(call))) throw new ProblemError("unauthorized", "you are not signed in: sign in again");
    if (etagMatches(call.req.headers["if-none-match"], view.etag))
      return { status: 304, headers: { etag: view.etag } };
    return { status: 200, body: view, headers: { etag: view.etag } };
  });

  /** The approver's choice from a JSON body (grant_type, duration), without the other fields. */
  const choiceOf = (body: Record<string, unknown>) => {
    const c: Record<string, unknown> = {};
    if (body.grant_type !== undefined) c.grant_type = body.grant_type;
    if (body.duration !== undefined && body.duration !== "") c.duration = body.duration;
    return c;
  };
  const onlyKeys = (body: Record<string, unknown>, allowed: string[]) => {
    for (const k of Object.keys(body)) {
      if (!allowed.includes(k)) throw new ProblemError("invalid_request", `unknown field "${k}"`);
    }
  };
  const csrfOf = (body: Record<string, unknown>) =>
    typeof body[CSRF_FIELD] === "string" ? (body[CSRF_FIELD] as string) : undefined;

  // Step 1 of approve: passkey options whose challenge commits to this grant as stored, its
  // request and this decision (approve, with this grant type and duration): idp/approval.ts.
  router.add("POST", `${G}/:id/approve/options`, false, async (call) => {
    if (!verifyPasskey) throw new ProblemError("unavailable", `passkeys are off: ${web.unavailable}`);
    const { h, p } = await jsonPrincipal(call);
    const body = await jsonBody(call);
    checkStateChange(web, call, h, csrfOf(body));
    onlyKeys(body, [CSRF_FIELD, "grant_type", "duration"]);
    const stored = await visibleCommand(p, call.params.id!);
    const grant = stored.grant;
    const decision = canDecide(p.actor, await idp.store.getUser(grant.request.requester));
    if (!decision.ok) throw new ProblemError("forbidden", decision.reason);
    if (grant.status !== "pending") {
      throw new ProblemError("invalid_state", `the grant is ${grant.status}, not pending`, {
        grant_status: grant.status,
      });
    }
    const choice = parseApproveOverrides(choiceOf(body), grant.request);
    const binding = approvalBinding(idp.base, grant, choice);
    return { status: 200, body: { options: await startAssertion(web, { email: p.sub, binding }) } };
  });

  // Step 2: the assertion, checked by the API's approve path as a `webauthn` proof.
  router.add("POST", `${G}/:id/approve`, false, async (call) => {
    const { h, p } = await jsonPrincipal(call);
    const body = await jsonBody(call);
    checkStateChange(web, call, h, csrfOf(body));
    onlyKeys(body, [CSRF_FIELD, "grant_type", "duration", "response"]);
    await visibleCommand(p, call.params.id!);
    const action: Record<string, unknown> = choiceOf(body);
    if (body.response !== undefined) action.proof = { type: "webauthn", response: body.response };
    const grant = await applyAction(idp, approvals, p, call.params.id!, "approve", action);
    return { status: 200, body: { status: grant.status, grant: grantSummary(grant, undefined) } };
  });

  router.add("POST", `${G}/:id/deny`, false, async (call) => {
    const { h, p } = await jsonPrincipal(call);
    const body = await jsonBody(call);
    checkStateChange(web, call, h, csrfOf(body));
    onlyKeys(body, [CSRF_FIELD]);
    await visibleCommand(p, call.params.id!);
    const grant = await applyAction(idp, approvals, p, call.params.id!, "deny", {});
    return { status: 200, body: { status: grant.status, grant: grantSummary(grant, undefined) } };
  });

  router.add("GET", WEB_PATHS.history, false, (call) =>
    asPage(async () => {
      const h = await human(call);
      if (!h) return loginFirst(call);
      const cursor = call.query.get("cursor");
      const result = await idp.store.queryGrants({
        decidedBy: h.email,
        type: "command",
        limit: HISTORY_PAGE,
        ...(cursor ? { before: decodeCursor(cursor) } : {}),
      });
      const items: GrantSummary[] = [];
      for (const s of result.items) {
        items.push(grantSummary(s.grant, await idp.store.getUser(s.grant.request.requester)));
      }
      const last = result.items[result.items.length - 1];
      const next =
        result.hasMore && last
          ? encodeCursor({ createdAt: last.grant.created_at, seq: last.seq })
          : undefined;
      return htmlReply(200, historyPage({ items, first: !cursor, ...(next ? { next } : {}) }));
    }),
  );

  const delegationsReply = async (h: Human, status: number, error?: string) => {
    const result = await idp.store.queryGrants({ party: h.email, limit: DELEGATIONS_MAX });
    return htmlReply(
      status,
      delegationsPage({
        email: h.email,
        items: result.items.map((s) => s.grant),
        csrf: formToken(web, h),
        ...(error ? { error } : {}),
      }),
    );
  };

  router.add("GET", WEB_PATHS.delegations, false, async (call) => {
    const h = await human(call);
    if (!h) return loginFirst(call);
    return delegationsReply(h, 200);
  });

  // Created through the API's own rules (idp/routes/delegations.ts createDelegation).
  router.add("POST", WEB_PATHS.delegations, false, (call) =>
    asPage(async () => {
      const h = await human(call);
      if (!h) throw new ProblemError("unauthorized", "you are not signed in");
      const form = await formBody(call);
      checkStateChange(web, call, h, form.get(CSRF_FIELD));
      const p = await principalOf(idp, h);
      const scopes = (form.get("scopes") ?? "").split(/\s+/).filter(Boolean);
      const duration = (form.get("duration") ?? "").trim();
      const body: Record<string, unknown> = {
        delegate: (form.get("delegate") ?? "").trim(),
        audience: (form.get("audience") ?? "").trim(),
        grant_type: duration ? "timed" : "always",
        ...(scopes.length ? { scopes } : {}),
        ...(duration ? { duration } : {}),
      };
      try {
        await createDelegation(idp, p, body, call.rid);
      } catch (e) {
        if (!(e instanceof ProblemError) || e.status === 429) throw e;
        return delegationsReply(h, e.status, `The delegation was not created: ${e.message}.`);
      }
      return redirect(WEB_PATHS.delegations);
    }),
  );

  router.add("POST", WEB_PATHS.revokeDelegation, false, (call) =>
    asPage(async () => {
      const h = await human(call);
      if (!h) throw new ProblemError("unauthorized", "you are not signed in");
      const form = await formBody(call);
      checkStateChange(web, call, h, form.get(CSRF_FIELD));
      await revokeDelegation(idp, await principalOf(idp, h), form.get("id") ?? "");
      idp.log.log("info", "delegation revoked", { rid: call.rid, by: h.email, grant: form.get("id") ?? "" });
      return redirect(WEB_PATHS.delegations);
    }),
  );
}
