import { CSRF_FIELD } from "../server/web/csrf.ts";
import { type Html, html, htmlReply, untrusted } from "../server/web/html.ts";

/**
 * The SP's pages: server-rendered, no script, one stylesheet of the SP's own origin (the CSP allows
 * no inline style). Every string someone else chose (an email typed, an IdP's error text, an IdP
 * URL from DNS) goes through `untrusted` (protocol/display.ts visible(), then HTML escaping).
 */

export interface PageContext {
  /** The service's name as its operator configured it. */
  service: string;
  /** Path of the stylesheet. */
  css: string;
}

export function spLayout(p: PageContext, title: string, body: Html, head: Html = html``): Html {
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} &middot; ${p.service}</title>
<link rel="stylesheet" href="${p.css}">${head}
</head><body><main class="card">
<p class="brand">${p.service} <span>sign-in with DDISA</span></p>
${body}
</main></body></html>`;
}

export function loginPage(p: PageContext, action: string, o: { email?: string; error?: string } = {}): Html {
  return spLayout(
    p,
    "Sign in",
    html`<h1>Sign in</h1>
<p class="lead">Enter your email address. Your organisation's identity provider, found through its
domain's DNS, signs you in with your passkey.</p>
${o.error ? html`<p class="error" role="alert">${untrusted(o.error, 300)}</p>` : ""}
<form method="post" action="${action}" class="stack">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required maxlength="254"
 value="${o.email ? untrusted(o.email, 254) : ""}" autofocus>
<button class="primary" type="submit">Continue</button>
</form>
<p class="hint">Nothing is stored here until you are back from your identity provider.</p>`,
  );
}

/**
 * The answer to the email form: a page that moves on to the IdP by itself (meta refresh) and with a
 * link. Not a 303: browsers apply the form page's CSP form-action to a form's redirects, and the
 * IdP's origin is not known before the email is.
 */
export function continuePage(p: PageContext, idpOrigin: string, authorizeUrl: string): Html {
  return spLayout(
    p,
    "Continue",
    html`<h1>Continue at your identity provider</h1>
<p class="lead">Your domain names <strong>${untrusted(idpOrigin, 200)}</strong> as its identity provider.</p>
<p><a class="button primary" href="${authorizeUrl}">Continue to ${untrusted(idpOrigin, 200)}</a></p>`,
    html`
<meta http-equiv="refresh" content="0; url=${authorizeUrl}">`,
  );
}

export function errorPage(p: PageContext, title: string, detail: string, retry: string): Html {
  return spLayout(
    p,
    title,
    html`<h1>${title}</h1>
<p class="error" role="alert">${untrusted(detail, 400)}</p>
<p><a class="button" href="${retry}">Sign in again</a></p>`,
  );
}

/** A sign-out button for the app's pages (a POST with the session's CSRF token). */
export function logoutForm(action: string, csrf: string): Html {
  return html`<form method="post" action="${action}" class="inline">
<input type="hidden" name="${CSRF_FIELD}" value="${csrf}">
<button type="submit">Sign out</button>
</form>`;
}

/** The escaping template and the display of untrusted text, for a service's own pages. */
export { html, untrusted };

/** A page as the answer, with the headers every page gets (CSP, no-store, framing refused). */
export const pageReply = htmlReply;
