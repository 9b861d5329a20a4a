import { ProblemError } from "../../protocol/problem.ts";
import { type Call, jsonBody, onlyFields, type Router } from "../../server/http.ts";
import { addSubscription, removeSubscription } from "../notify/subscriptions.ts";
import type { WebContext } from "../web/context.ts";
import { WEB_PATHS } from "../web/paths.ts";
import { CSRF_FIELD, checkStateChange, currentHuman, type Human } from "../web/session.ts";

/**
 * This browser's Web Push subscription, from push.js on the inbox and the account page: the
 * endpoint and keys the browser's push service gave it become a `webpush` channel of the signed-in
 * person, under the API's rules (idp/notify/subscriptions.ts: https or loopback, local targets only
 * where allowed, key sizes). Both calls are state changes of the session (same origin, its CSRF
 * token) and idempotent: subscribing twice keeps one subscription, and removing one the IdP no
 * longer has (it answered 404/410 and was dropped) is not an error, since the browser's side must
 * still be undone.
 */
export function registerWebPushRoutes<P>(router: Router<P>, web: WebContext): void {
  const idp = web.idp;

  const signedIn = async (call: Call): Promise<{ h: Human; body: Record<string, unknown> }> => {
    const h = web.unavailable ? undefined : await currentHuman(web, call);
    if (!h) throw new ProblemError("unauthorized", "you are not signed in: sign in again");
    idp.rateLimit("api", `sub:${h.email}`);
    const body = await jsonBody(call);
    checkStateChange(web, call, h, typeof body[CSRF_FIELD] === "string" ? body[CSRF_FIELD] : undefined);
    return { h, body };
  };

  const pushOf = async (owner: string, endpoint: unknown) =>
    (await idp.store.subscriptionsOf([owner])).find((s) => s.channel === "webpush" && s.target === endpoint);

  router.add("POST", WEB_PATHS.pushSubscribe, false, async (call) => {
    const { h, body } = await signedIn(call);
    onlyFields(body, [CSRF_FIELD, "endpoint", "keys"]);
    const known = await pushOf(h.email, body.endpoint);
    if (known) return { status: 200, body: { id: known.id, created: false } };
    const { sub } = await addSubscription(
      idp,
      h.email,
      { channel: "webpush", target: body.endpoint, keys: body.keys },
      call.rid,
    );
    return { status: 201, body: { id: sub.id, created: true } };
  });

  router.add("POST", WEB_PATHS.pushUnsubscribe, false, async (call) => {
    const { h, body } = await signedIn(call);
    onlyFields(body, [CSRF_FIELD, "endpoint"]);
    if (typeof body.endpoint !== "string" || body.endpoint.length > 2048)
      throw new ProblemError("invalid_request", "endpoint must be the subscription's URL");
    const known = await pushOf(h.email, body.endpoint);
    if (known) await removeSubscription(idp, h.email, known.id, call.rid);
    return { status: 200, body: { removed: Boolean(known) } };
  });
}
