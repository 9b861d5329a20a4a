import { ProblemError } from "../../protocol/problem.ts";
import { type Call, mediaType, type Reply, type Router, readBody } from "../../server/http.ts";
import { CONTENT_SECURITY_POLICY } from "../../server/web/headers.ts";
import { htmlReply } from "../../server/web/html.ts";
import type { Idp, Principal } from "../context.ts";
import { authorizeParams, checkAuthorizeRequest } from "../oauth/authorize-request.ts";
import { CLI_CLIENT_ID, redirectWith } from "../oauth/clients.ts";
import { formatUserCode, normalizeUserCode } from "../oauth/device-code.ts";
import { decideDeviceCode, issueAuthCode, pendingDeviceCode } from "../oauth/flows.ts";
import {
  CSRF_FIELD,
  consentPage,
  deviceConfirmPage,
  deviceDonePage,
  deviceEntryPage,
  oauthErrorPage,
} from "../web/oauth-pages.ts";
import { PATHS } from "./discovery.ts";

/**
 * The browser steps of the OAuth flows: GET/POST /authorize (authorization code with PKCE) and
 * GET/POST /device (RFC 8628 user code entry). Who is signed in comes from the IdP's browser
 * sessions (the passkey login pages) through `HumanSessions`; without a session the browser is
 * sent to the login page with a return_to back here. Every state change is a POST with the
 * session's CSRF checks.
 */

export interface Human {
  sessionId: string;
  email: string;
}

export interface HumanSessions {
  currentHuman(call: Call): Promise<Human | undefined>;
  /** The CSRF token forms of this session carry. */
  formToken(human: Human): string;
  /** Throws (403) unless the request is a same-site state change of this session with its token. */
  checkStateChange(call: Call, human: Human, token: string | undefined): void;
  /** The login page; `return_to` is a relative path on this origin. */
  loginPath: string;
}

const MAX_FORM_FIELDS = 20;

/** A url-encoded form: every field once, bounded (the body is bounded by readBody). */
async function formFields(call: Call): Promise<[string, string][]> {
  if (mediaType(call.req) !== "application/x-www-form-urlencoded") {
    throw new ProblemError("unsupported_media_type", "send application/x-www-form-urlencoded");
  }
  const fields = [...new URLSearchParams((await readBody(call.req)).toString("utf8"))];
  if (fields.length > MAX_FORM_FIELDS) throw new ProblemError("invalid_request", "too many form fields");
  return fields;
}

function field(fields: [string, string][], name: string): string | undefined {
  const found = fields.filter(([k]) => k === name);
  return found.length === 1 ? found[0]![1] : undefined;
}

const redirect = (location: string): Reply => ({
  status: 303,
  headers: { location, "cache-control": "no-store", "referrer-policy": "no-referrer" },
});

function loginRedirect(sessions: HumanSessions, returnTo: string, hint?: string): Reply {
  const q = new URLSearchParams({ return_to: returnTo });
  if (hint) q.set("login_hint", hint);
  return redirect(`${sessions.loginPath}?${q}`);
}

/**
 * The consent page's CSP: the usual one, but its form may also end at the client's (checked)
 * redirect URI, because browsers apply `form-action` to where the form's answer redirects. A host
 * source cannot name an IPv6 literal, so for http://[::1] the scheme is allowed: the form itself is
 * our markup and posts only to /authorize.
 */
export function consentPolicy(redirectUri: string): string {
  const u = new URL(redirectUri);
  const target = u.hostname.startsWith("[") ? `${u.protocol}` : u.origin;
  return CONTENT_SECURITY_POLICY.replace("form-action 'self'", `form-action 'self' ${target}`);
}

export function registerOAuthWebRoutes(router: Router<Principal>, idp: Idp, sessions: HumanSessions): void {
  const check = async (params: Iterable<[string, string]>) => {
    const list = [...params];
    const clientId = list.find(([k]) => k === "client_id")?.[1];
    const client = clientId && clientId !== CLI_CLIENT_ID ? await idp.store.getClient(clientId) : undefined;
    return checkAuthorizeRequest(list, client);
  };

  router.add("GET", PATHS.authorize, false, async (call) => {
    const checked = await check(call.query);
    if (checked.kind === "page") return htmlReply(400, oauthErrorPage("Cannot sign in", checked.message));
    if (checked.kind === "redirect") return redirect(checked.location);
    const human = await sessions.currentHuman(call);
    const r = checked.request;
    if (!human) {
      return loginRedirect(
        sessions,
        `${PATHS.authorize}?${new URLSearchParams(authorizeParams(r))}`,
        r.loginHint,
      );
    }
    const page = consentPage({
      email: human.email,
      clientId: r.clientId,
      redirectUri: r.redirectUri,
      fields: authorizeParams(r),
      csrf: sessions.formToken(human),
      action: PATHS.authorize,
      ...(r.loginHint !== undefined ? { loginHint: r.loginHint } : {}),
    });
    return htmlReply(200, page, { "content-security-policy": consentPolicy(r.redirectUri) });
  });

  router.add("POST", PATHS.authorize, false, async (call) => {
    const fields = await formFields(call);
    const human = await sessions.currentHuman(call);
    if (!human)
      return htmlReply(403, oauthErrorPage("Signed out", "Your session has ended: start the sign-in again."));
    sessions.checkStateChange(call, human, field(fields, CSRF_FIELD));
    const checked = await check(fields.filter(([k]) => k !== CSRF_FIELD && k !== "decision"));
    if (checked.kind === "page") return htmlReply(400, oauthErrorPage("Cannot sign in", checked.message));
    if (checked.kind === "redirect") return redirect(checked.location);
    const r = checked.request;
    const decision = field(fields, "decision");
    if (decision !== "allow") {
      return redirect(
        redirectWith(r.redirectUri, {
          error: "access_denied",
          error_description: "the user cancelled",
          state: r.state,
        }),
      );
    }
    const code = await issueAuthCode(idp, {
      clientId: r.clientId,
      redirectUri: r.redirectUri,
      codeChallenge: r.codeChallenge,
      nonce: r.nonce,
      sub: human.email,
    });
    idp.log.log("info", "authorization code issued", { rid: call.rid, sub: human.email, client: r.clientId });
    return redirect(redirectWith(r.redirectUri, { code, state: r.state }));
  });

  router.add("GET", PATHS.device, false, async (call) => {
    const typed = call.query.get("user_code") ?? undefined;
    const userCode = normalizeUserCode(typed);
    const human = await sessions.currentHuman(call);
    if (!human) {
      return loginRedirect(
        sessions,
        userCode ? `${PATHS.device}?user_code=${formatUserCode(userCode)}` : PATHS.device,
      );
    }
    const page = deviceEntryPage({
      email: human.email,
      csrf: sessions.formToken(human),
      action: PATHS.device,
      ...(userCode ? { userCode: formatUserCode(userCode) } : {}),
    });
    return htmlReply(200, page);
  });

  router.add("POST", PATHS.device, false, async (call) => {
    const fields = await formFields(call);
    const human = await sessions.currentHuman(call);
    if (!human) return htmlReply(403, oauthErrorPage("Signed out", "Your session has ended: sign in again."));
    sessions.checkStateChange(call, human, field(fields, CSRF_FIELD));
    const csrf = sessions.formToken(human);
    const base = { email: human.email, csrf, action: PATHS.device };
    const typed = field(fields, "user_code");
    const d = await pendingDeviceCode(idp, typed);
    if (!d) {
      // One answer for unknown, expired and decided codes: it tells a guesser nothing.
      return htmlReply(
        400,
        deviceEntryPage({ ...base, error: "This code is unknown, expired or already used." }),
      );
    }
    const decision = field(fields, "decision");
    if (decision === "check") {
      return htmlReply(
        200,
        deviceConfirmPage({ ...base, userCode: formatUserCode(d.userCode), clientId: d.clientId }),
      );
    }
    if (decision !== "approve" && decision !== "deny")
      throw new ProblemError("invalid_request", "unknown decision");
    const approve = decision === "approve";
    if (!(await decideDeviceCode(idp, d.userCode, human.email, approve))) {
      return htmlReply(
        400,
        deviceEntryPage({ ...base, error: "This code is unknown, expired or already used." }),
      );
    }
    return htmlReply(200, deviceDonePage(approve));
  });
}
