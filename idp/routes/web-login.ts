import { ProblemError } from "../../protocol/problem.ts";
import {
  type Call,
  jsonBody,
  mediaType,
  onlyFields,
  type Reply,
  type Router,
  readBody,
} from "../../server/http.ts";
import { htmlReply } from "../../server/web/html.ts";
import { addSubscription, removeSubscription } from "../notify/subscriptions.ts";
import type { WebContext } from "../web/context.ts";
import { inviteId } from "../web/invites.ts";
import { accountPage, errorPage, invitePage, loginPage, webhookSecretPage } from "../web/pages.ts";
import { startAssertion, startRegistration, verifyAssertion, verifyRegistration } from "../web/passkeys.ts";
import { WEB_PATHS } from "../web/paths.ts";
import {
  CSRF_FIELD,
  checkSameOrigin,
  checkStateChange,
  clearedCookies,
  currentHuman,
  endSession,
  formToken,
  safeReturnTo,
  startSession,
} from "../web/session.ts";

/**
 * The human's pages: passkey login (GET /login?return_to=&login_hint=, conditional UI), invite
 * redemption (GET /invite#secret), the account page (passkeys, sign out). Page scripts call the
 * JSON endpoints; the account page's forms post url-encoded with a CSRF token.
 */

/** Login binds nothing (an approval step-up binds its grant: idp/web/passkeys.ts). */
const LOGIN_BINDING = new Uint8Array(0);
const INVALID_INVITE = "this invite link is not valid: it may have expired or been used already";
const MAX_FORM_FIELD = 4096;

export function redirect(location: string, cookies: string[] = [], call?: Call): Reply {
  if (cookies.length && call) call.res.setHeader("set-cookie", cookies);
  return { status: 303, headers: { location, "cache-control": "no-store" } };
}

/** A url-encoded form body: every field once, each bounded. */
export async function formBody(call: Call): Promise<Map<string, string>> {
  if (mediaType(call.req) !== "application/x-www-form-urlencoded") {
    throw new ProblemError("unsupported_media_type", "send application/x-www-form-urlencoded");
  }
  const out = new Map<string, string>();
  for (const [k, v] of new URLSearchParams((await readBody(call.req)).toString("utf8"))) {
    if (out.has(k)) throw new ProblemError("invalid_request", `field ${k} is repeated`);
    if (v.length > MAX_FORM_FIELD) throw new ProblemError("invalid_request", `field ${k} is too long`);
    out.set(k, v);
  }
  return out;
}

/** A form handler's ProblemError as an HTML page (the person sees a page, not JSON). */
async function asPage(run: () => Promise<Reply>): Promise<Reply> {
  try {
    return await run();
  } catch (e) {
    if (!(e instanceof ProblemError) || e.status === 429) throw e;
    return htmlReply(
      e.status,
      errorPage("That did not work", e.message, { href: WEB_PATHS.account, text: "Back to your account" }),
    );
  }
}

function available(web: WebContext): void {
  if (web.unavailable) throw new ProblemError("unavailable", `passkeys are off: ${web.unavailable}`);
}

export function registerWebLoginRoutes<P>(router: Router<P>, web: WebContext): void {
  const idp = web.idp;

  /** A new sign-in replaces the browser's session: the old record ends (no session outlives its cookie). */
  const endPrevious = async (call: Call) => {
    const previous = await currentHuman(web, call);
    if (previous) await idp.store.endWebSession(previous.sessionId);
  };

  router.add("GET", WEB_PATHS.login, false, async (call) => {
    const returnTo = safeReturnTo(call.query.get("return_to") ?? undefined);
    if (!web.unavailable && (await currentHuman(web, call))) return redirect(returnTo);
    const hint = call.query.get("login_hint") ?? undefined;
    return htmlReply(
      200,
      loginPage({
        returnTo,
        ...(hint && hint.length <= 254 ? { loginHint: hint } : {}),
        ...(web.unavailable ? { unavailable: web.unavailable } : {}),
      }),
    );
  });

  router.add("POST", WEB_PATHS.loginOptions, false, async (call) => {
    available(web);
    checkSameOrigin(web, call);
    onlyFields(await jsonBody(call), []);
    return { status: 200, body: { options: await startAssertion(web, { binding: LOGIN_BINDING }) } };
  });

  router.add("POST", WEB_PATHS.loginVerify, false, async (call) => {
    available(web);
    checkSameOrigin(web, call);
    const body = await jsonBody(call);
    onlyFields(body, ["response", "return_to"]);
    const { email, credentialId } = await verifyAssertion(web, body.response, { binding: LOGIN_BINDING });
    await endPrevious(call);
    const cookies = await startSession(web, email);
    call.res.setHeader("set-cookie", cookies);
    idp.log.log("info", "login", {
      rid: call.rid,
      sub: email,
      method: "webauthn",
      credential: credentialId.slice(0, 16),
    });
    const returnTo = safeReturnTo(typeof body.return_to === "string" ? body.return_to : undefined);
    return { status: 200, body: { redirect: returnTo } };
  });

  router.add("GET", WEB_PATHS.invite, false, () => htmlReply(200, invitePage(web.unavailable)));

  /** The live invite of a body's `invite` secret and its user (an enabled human), or the generic 400. */
  const liveInvite = async (body: Record<string, unknown>) => {
    const id = typeof body.invite === "string" ? inviteId(body.invite) : undefined;
    const invite = id === undefined ? undefined : await idp.store.getInvite(id, idp.now());
    const user = invite && (await idp.store.getUser(invite.email));
    if (!invite || !user || user.disabled || user.kind !== "human") {
      throw new ProblemError("invalid_request", INVALID_INVITE);
    }
    return invite;
  };

  router.add("POST", WEB_PATHS.inviteOptions, false, async (call) => {
    available(web);
    checkSameOrigin(web, call);
    const body = await jsonBody(call);
    onlyFields(body, ["invite"]);
    const invite = await liveInvite(body);
    const options = await startRegistration(web, { email: invite.email, inviteId: invite.id });
    return { status: 200, body: { email: invite.email, options } };
  });

  router.add("POST", WEB_PATHS.inviteVerify, false, async (call) => {
    available(web);
    checkSameOrigin(web, call);
    const body = await jsonBody(call);
    onlyFields(body, ["invite", "response"]);
    const invite = await liveInvite(body);
    const reg = await verifyRegistration(web, body.response, { email: invite.email, inviteId: invite.id });
    if (await idp.store.getPasskey(reg.passkey.credentialId)) {
      throw new ProblemError("conflict", "this passkey is registered already");
    }
    // The invite is spent by one conditional update: of concurrent redemptions one wins.
    if (!(await idp.store.redeemInvite(invite.id, idp.now()))) {
      throw new ProblemError("invalid_request", INVALID_INVITE);
    }
    if (!(await idp.store.spendChallenge(reg.nonce, `webauthn:${invite.email}`, reg.expiresAt))) {
      throw new ProblemError("invalid_request", "the passkey could not be registered");
    }
    if (!(await idp.store.addPasskey(reg.passkey))) {
      throw new ProblemError("conflict", "this passkey is registered already");
    }
    idp.log.log("info", "passkey registered", {
      rid: call.rid,
      sub: invite.email,
      credential: reg.passkey.credentialId.slice(0, 16),
      device_type: reg.passkey.deviceType,
      backed_up: reg.passkey.backedUp,
    });
    await endPrevious(call);
    call.res.setHeader("set-cookie", await startSession(web, invite.email));
    return { status: 200, body: { redirect: WEB_PATHS.account } };
  });

  router.add("GET", WEB_PATHS.account, false, async (call) => {
    const human = web.unavailable ? undefined : await currentHuman(web, call);
    if (!human) return redirect(`${WEB_PATHS.login}?return_to=${encodeURIComponent(WEB_PATHS.account)}`);
    const passkeys = await idp.store.listPasskeys(human.email);
    const subscriptions = await idp.store.subscriptionsOf([human.email]);
    return htmlReply(
      200,
      accountPage({
        email: human.email,
        passkeys,
        csrf: formToken(web, human),
        subscriptions,
        channels: [...(idp.notify?.enabled ?? [])],
        ...(idp.notify?.vapidPublicKey ? { vapidKey: idp.notify.vapidPublicKey } : {}),
      }),
    );
  });

  // Notification subscriptions from the account page: the API's rules (idp/notify/subscriptions.ts),
  // the form's fields mapped to its body; the signed-in session stands for the user's own token.
  router.add("POST", WEB_PATHS.addNotification, false, (call) =>
    asPage(async () => {
      const human = await currentHuman(web, call);
      if (!human) throw new ProblemError("unauthorized", "you are not signed in");
      const form = await formBody(call);
      checkStateChange(web, call, human, form.get(CSRF_FIELD));
      for (const k of form.keys()) {
        if (![CSRF_FIELD, "channel", "target", "event_pending", "event_decided"].includes(k))
          throw new ProblemError("invalid_request", `unknown field ${k}`);
      }
      const target = form.get("target")?.trim();
      const { sub, secret } = await addSubscription(
        idp,
        human.email,
        {
          channel: form.get("channel"),
          ...(target ? { target } : {}),
          events: (["pending", "decided"] as const).filter((e) => form.has(`event_${e}`)),
        },
        call.rid,
      );
      if (secret) return htmlReply(201, webhookSecretPage({ target: sub.target, secret }));
      return redirect(`${WEB_PATHS.account}#notifications`);
    }),
  );

  router.add("POST", WEB_PATHS.removeNotification, false, (call) =>
    asPage(async () => {
      const human = await currentHuman(web, call);
      if (!human) throw new ProblemError("unauthorized", "you are not signed in");
      const form = await formBody(call);
      checkStateChange(web, call, human, form.get(CSRF_FIELD));
      await removeSubscription(idp, human.email, form.get("id") ?? "", call.rid);
      return redirect(`${WEB_PATHS.account}#notifications`);
    }),
  );

  router.add("POST", WEB_PATHS.removePasskey, false, (call) =>
    asPage(async () => {
      const human = await currentHuman(web, call);
      if (!human) throw new ProblemError("unauthorized", "you are not signed in");
      const form = await formBody(call);
      checkStateChange(web, call, human, form.get(CSRF_FIELD));
      const id = form.get("credential_id") ?? "";
      const mine = await idp.store.listPasskeys(human.email);
      if (!mine.some((p) => p.credentialId === id)) throw new ProblemError("not_found", "no such passkey");
      if (mine.length === 1) {
        throw new ProblemError("conflict", "you cannot remove your only passkey: add another one first");
      }
      if (!(await idp.store.removePasskey(human.email, id)))
        throw new ProblemError("not_found", "no such passkey");
      idp.log.log("info", "passkey removed", {
        rid: call.rid,
        sub: human.email,
        credential: id.slice(0, 16),
      });
      return redirect(WEB_PATHS.account);
    }),
  );

  router.add("POST", WEB_PATHS.logout, false, (call) =>
    asPage(async () => {
      const human = await currentHuman(web, call);
      if (!human) return redirect(WEB_PATHS.login, clearedCookies(), call);
      const form = await formBody(call);
      checkStateChange(web, call, human, form.get(CSRF_FIELD));
      idp.log.log("info", "logout", { rid: call.rid, sub: human.email });
      return redirect(WEB_PATHS.login, await endSession(web, human.sessionId), call);
    }),
  );
}
