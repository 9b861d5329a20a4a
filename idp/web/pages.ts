import { visible } from "../../protocol/display.ts";
import { type Html, html } from "../../server/web/html.ts";
import type { NotifyChannel, PasskeyRecord, SubscriptionRecord } from "../store/types.ts";
import { WEB_PATHS } from "./paths.ts";
import { CSRF_FIELD } from "./session.ts";

/**
 * The IdP's HTML pages. Markup only through the `html` tag (every value escaped); no inline script
 * or style (the CSP forbids both): behaviour is in idp/web/assets/*.js, data for it in data-*
 * attributes, looks in assets/web.css.
 */

const WEBAUTHN_SCRIPT = "/assets/simplewebauthn-browser.js";

/** The signed-in pages' navigation (the approval pages and the account). */
export const NAV = [
  ["inbox", WEB_PATHS.inbox, "Inbox"],
  ["history", WEB_PATHS.history, "History"],
  ["delegations", WEB_PATHS.delegations, "Delegations"],
  ["account", WEB_PATHS.account, "Account"],
] as const;
export type NavItem = (typeof NAV)[number][0];

function nav(active: NavItem): Html {
  return html`<nav class="nav" aria-label="Pages">
${NAV.map(([key, href, text]) => (key === active ? html`<a href="${href}" aria-current="page">${text}</a>` : html`<a href="${href}">${text}</a>`))}
</nav>
`;
}

/**
 * The frame of every page (also the OAuth pages, idp/web/oauth-pages.ts). `nav` shows the signed-in
 * navigation with that item current; `wide` for pages of tables and commands.
 */
export function layout(
  title: string,
  body: Html,
  scripts: string[] = [],
  options: { nav?: NavItem; wide?: boolean } = {},
): Html {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} &middot; apes</title>
<link rel="icon" href="/assets/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/assets/web.css">
${scripts.map((s) => html`<script src="${s}" defer></script>\n`)}</head>
<body>
<main class="${options.wide ? "card wide" : "card"}">
<p class="brand">apes <span>identity</span></p>
${options.nav ? nav(options.nav) : ""}${body}
</main>
</body>
</html>
`;
}

export function loginPage(o: { returnTo: string; loginHint?: string; unavailable?: string }): Html {
  if (o.unavailable) return unavailablePage(o.unavailable);
  return layout(
    "Sign in",
    html`<h1>Sign in</h1>
<p class="lead">Use a passkey: the one on this device, your phone or a security key.</p>
<form id="login-form" class="stack" data-return-to="${o.returnTo}" novalidate>
<label for="email">Email</label>
<input id="email" name="username" type="email" autocomplete="username webauthn" autocapitalize="none" spellcheck="false" value="${o.loginHint ?? ""}">
<button type="submit" class="primary">Sign in with a passkey</button>
<p id="status" class="status" role="status" aria-live="polite"></p>
</form>
<p class="hint">No passkey yet? Ask your administrator for an invite link.</p>`,
    [WEBAUTHN_SCRIPT, "/assets/page.js", "/assets/login.js"],
  );
}

export function invitePage(unavailable?: string): Html {
  if (unavailable) return unavailablePage(unavailable);
  return layout(
    "Create a passkey",
    html`<h1>Create a passkey</h1>
<p id="invite-for" class="lead">Checking your invite link&hellip;</p>
<div class="stack">
<button id="register" type="button" class="primary" disabled>Create a passkey</button>
<p id="status" class="status" role="status" aria-live="polite"></p>
</div>
<p class="hint">A passkey replaces a password: your device keeps it, unlocked by your fingerprint, face or PIN. The link works once.</p>
<p class="hint">Already have a passkey? <a href="${WEB_PATHS.login}">Sign in</a></p>`,
    [WEBAUTHN_SCRIPT, "/assets/page.js", "/assets/invite.js"],
  );
}

const day = (t: number) => new Date(t * 1000).toISOString().slice(0, 10);

function passkeyItem(p: PasskeyRecord, i: number, csrf: string, only: boolean): Html {
  const kind = p.deviceType === "multiDevice" ? (p.backedUp ? "synced" : "can sync") : "this device only";
  return html`<li class="passkey">
<div class="passkey-info">
<strong>Passkey ${i + 1}</strong> <code>${p.credentialId.slice(0, 8)}</code>
<span class="meta"><span>added ${day(p.createdAt)}</span> &middot; <span>${p.lastUsedAt ? html`last used ${day(p.lastUsedAt)}` : "not used to sign in yet"}</span> &middot; <span>${kind}</span></span>
</div>
${
  only
    ? html`<span class="meta">your only passkey</span>`
    : html`<form method="post" action="${WEB_PATHS.removePasskey}">
<input type="hidden" name="${CSRF_FIELD}" value="${csrf}">
<input type="hidden" name="credential_id" value="${p.credentialId}">
<button type="submit" class="danger">Remove</button>
</form>`
}
</li>`;
}

/** Labels of every channel in the list. */
const CHANNEL_LABELS: Record<NotifyChannel, string> = {
  webhook: "Webhook",
  ntfy: "ntfy topic",
  email: "Email",
  webpush: "Web Push (a browser)",
};

/** The channels a person can add with the form (Web Push is added by push.js: pushControl). */
const PAGE_CHANNELS: Partial<Record<NotifyChannel, { target: string; hint: string }>> = {
  webhook: { target: "https://...", hint: "an HTTPS URL that receives a signed JSON POST" },
  ntfy: { target: "my-topic", hint: "a topic on the IdP's ntfy server" },
  email: { target: "", hint: "to your own address (leave the target empty)" },
};

/**
 * "Notify me in this browser" (push.js): shown by the script only where the browser can do Web Push,
 * and only on an IdP with the webpush channel (its VAPID public key). The page must load page.js
 * and then PUSH_SCRIPT.
 */
export function pushControl(o: { vapidKey?: string; csrf: string }): Html {
  if (!o.vapidKey) return html``;
  return html`<div id="push" class="push" hidden data-key="${o.vapidKey}" data-csrf="${o.csrf}" data-subscribe="${WEB_PATHS.pushSubscribe}" data-unsubscribe="${WEB_PATHS.pushUnsubscribe}" data-worker="${WEB_PATHS.serviceWorker}">
<button id="push-on" type="button" class="quiet">Notify me in this browser</button>
<button id="push-off" type="button" class="quiet" hidden>Stop notifying this browser</button>
<p id="push-status" class="status" role="status" aria-live="polite"></p>
</div>`;
}

export const PUSH_SCRIPT = "/assets/push.js";

const EVENT_LABELS = { pending: "a request awaits you", decided: "your request was decided" } as const;

function subscriptionItem(s: SubscriptionRecord, csrf: string): Html {
  return html`<li class="passkey subscription">
<div class="passkey-info">
<strong>${CHANNEL_LABELS[s.channel] ?? s.channel}</strong> <code class="target">${visible(s.target)}</code>
<span class="meta"><span>${s.events.map((e) => (e in EVENT_LABELS ? EVENT_LABELS[e as keyof typeof EVENT_LABELS] : e)).join(", ")}</span> &middot; <span>added ${day(s.createdAt)}</span></span>
</div>
<form method="post" action="${WEB_PATHS.removeNotification}">
<input type="hidden" name="${CSRF_FIELD}" value="${csrf}">
<input type="hidden" name="id" value="${s.id}">
<button type="submit" class="danger">Remove</button>
</form>
</li>`;
}

function notificationsSection(o: {
  subscriptions: SubscriptionRecord[];
  channels: readonly NotifyChannel[];
  csrf: string;
  vapidKey?: string;
}): Html {
  const offered = o.channels.filter((c) => c in PAGE_CHANNELS);
  return html`<h2 id="notifications">Notifications</h2>
${
  o.subscriptions.length
    ? html`<ul class="passkeys subscriptions">
${o.subscriptions.map((s) => subscriptionItem(s, o.csrf))}
</ul>`
    : html`<p class="hint">You get no notifications yet.</p>`
}
${pushControl(o)}
${
  offered.length
    ? html`<form method="post" action="${WEB_PATHS.addNotification}" class="stack add-notification">
<input type="hidden" name="${CSRF_FIELD}" value="${o.csrf}">
<label for="channel">Add a channel</label>
<select id="channel" name="channel">
${offered.map((c) => html`<option value="${c}">${CHANNEL_LABELS[c]}</option>\n`)}</select>
<p class="hint">${offered.map((c) => html`<span class="channel-hint"><strong>${CHANNEL_LABELS[c]}</strong>: ${PAGE_CHANNELS[c]!.hint}.</span> `)}</p>
<label for="target">Target</label>
<input id="target" name="target" type="text" autocomplete="off" autocapitalize="none" spellcheck="false" placeholder="https://hooks.example/apes or a topic">
<fieldset class="events">
<legend>Tell me when</legend>
<label><input type="checkbox" name="event_pending" value="1" checked> ${EVENT_LABELS.pending}</label>
<label><input type="checkbox" name="event_decided" value="1" checked> ${EVENT_LABELS.decided}</label>
</fieldset>
<button type="submit" class="primary">Add</button>
</form>`
    : html`<p class="hint">This identity provider sends no notifications by webhook, ntfy or email.</p>`
}`;
}

/** After adding a webhook: its signing secret, shown this once (the page is not cached). */
export function webhookSecretPage(o: { target: string; secret: string }): Html {
  return layout(
    "Webhook added",
    html`<h1>Webhook added</h1>
<p class="lead">Deliveries to <code>${visible(o.target)}</code> are signed with this secret. Copy it now: it is not shown again.</p>
<p><code id="webhook-secret" class="secret">${o.secret}</code></p>
<p><a class="button" href="${WEB_PATHS.account}#notifications">Back to your account</a></p>`,
    [],
    { nav: "account" },
  );
}

export function accountPage(o: {
  email: string;
  passkeys: PasskeyRecord[];
  csrf: string;
  subscriptions: SubscriptionRecord[];
  channels: readonly NotifyChannel[];
  /** The IdP's VAPID public key when it offers Web Push. */
  vapidKey?: string;
}): Html {
  const only = o.passkeys.length === 1;
  return layout(
    "Your account",
    html`<div class="top">
<h1>Your account</h1>
<form method="post" action="${WEB_PATHS.logout}">
<input type="hidden" name="${CSRF_FIELD}" value="${o.csrf}">
<button type="submit" class="quiet">Sign out</button>
</form>
</div>
<p class="lead">Signed in as <strong>${o.email}</strong></p>
<h2>Passkeys</h2>
<ul class="passkeys">
${o.passkeys.map((p, i) => passkeyItem(p, i, o.csrf, only))}
</ul>
<p class="hint">To add a passkey on another device, or to recover access, ask your administrator for an invite link.</p>
${notificationsSection(o)}`,
    o.vapidKey ? ["/assets/page.js", PUSH_SCRIPT] : [],
    { nav: "account" },
  );
}

export function errorPage(title: string, message: string, back?: { href: string; text: string }): Html {
  return layout(
    title,
    html`<h1>${title}</h1>
<p class="lead">${message}</p>
${back ? html`<p><a class="button" href="${back.href}">${back.text}</a></p>` : ""}`,
  );
}

function unavailablePage(why: string): Html {
  return errorPage("Passkeys unavailable", `Passkey sign-in is off on this identity provider: ${why}.`);
}
