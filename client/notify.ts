import type { ClientContext } from "./context.ts";
import { endpointRefusal, idpEndpoints, requireEndpoint } from "./discovery.ts";
import { ClientError } from "./errors.ts";
import { authed, unexpectedAnswer } from "./grants.ts";

/**
 * The IdP's notification API (docs/notifications.md) for the session's user: its subscriptions, a
 * test, its failed deliveries. The endpoint comes from discovery (`apes_notify_endpoint`) and must be
 * on the IdP's origin like every other endpoint.
 */

export interface Subscription {
  id: string;
  channel: string;
  target: string;
  events: string[];
  created_at: number;
  /** Only in the answer that created a webhook subscription. */
  secret?: string;
}

export interface Delivery {
  id: number;
  key: string;
  subscription: string;
  grant_id: string | null;
  event: string;
  status: string;
  attempts: number;
  last_error: string | null;
  created_at: number;
  delivered_at: number | null;
}

export interface NewSubscription {
  channel: "webhook" | "ntfy" | "email" | "webpush";
  target?: string;
  events?: string[];
  keys?: { p256dh: string; auth: string };
}

export async function notifyClient(ctx: ClientContext) {
  const auth = await authed(ctx);
  const endpoints = await idpEndpoints(ctx, auth.session().idp);
  const field = "apes_notify_endpoint";
  const raw = (endpoints.document as unknown as Record<string, unknown>)[field];
  const advertised = requireEndpoint(endpoints, typeof raw === "string" ? raw : undefined, field);
  const why = endpointRefusal(endpoints.idp, advertised, (await ctx.config()).idpEndpointOrigins);
  if (why)
    throw new ClientError("endpoint_refused", `the IdP's ${field} ${why}: refused`, {
      idp: endpoints.idp,
      field,
      why,
    });
  const base = advertised.replace(/\/+$/, "");
  const shape = (ok: boolean) => {
    if (!ok) throw unexpectedAnswer("the IdP answered with an unexpected shape");
  };
  return {
    session: auth.session(),
    async list(): Promise<{ channels: string[]; data: Subscription[] }> {
      const res = await auth.call<{ channels: string[]; data: Subscription[] }>({
        url: `${base}/subscriptions`,
      });
      shape(Array.isArray(res.body?.data) && Array.isArray(res.body?.channels));
      return res.body;
    },
    async add(s: NewSubscription): Promise<Subscription> {
      const res = await auth.call<Subscription>({ url: `${base}/subscriptions`, method: "POST", json: s });
      shape(typeof res.body?.id === "string");
      return res.body;
    },
    async remove(id: string): Promise<void> {
      await auth.call({ url: `${base}/subscriptions/${encodeURIComponent(id)}`, method: "DELETE" });
    },
    async test(id: string): Promise<{ key: string }> {
      const res = await auth.call<{ key: string }>({
        url: `${base}/subscriptions/${encodeURIComponent(id)}/test`,
        method: "POST",
        json: {},
      });
      shape(typeof res.body?.key === "string");
      return res.body;
    },
    async deliveries(status?: string): Promise<Delivery[]> {
      const res = await auth.call<{ data: Delivery[] }>({
        url: `${base}/deliveries${status ? `?status=${status}` : ""}`,
      });
      shape(Array.isArray(res.body?.data));
      return res.body.data;
    },
  };
}
