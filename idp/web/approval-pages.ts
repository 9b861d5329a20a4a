import { visible } from "../../protocol/display.ts";
import type { Grant } from "../../protocol/types.ts";
import { type Html, html } from "../../server/web/html.ts";
import type { UserRecord } from "../store/types.ts";
import {
  argumentParts,
  commandText,
  durationText,
  type GrantSummary,
  grantSummary,
  grantTypeText,
  requesterRole,
  timeText,
} from "./grant-view.ts";
import { layout, PUSH_SCRIPT, pushControl } from "./pages.ts";
import { WEB_PATHS } from "./paths.ts";
import { CSRF_FIELD } from "./session.ts";

/**
 * The approval pages: inbox, grant, history, delegations. Every requester-chosen string reaches the
 * markup only as made visible by grant-view.ts and then escaped by the `html` tag.
 */

const WEBAUTHN_SCRIPT = "/assets/simplewebauthn-browser.js";

const STATUS_TEXT: Record<Grant["status"], string> = {
  pending: "waiting for a decision",
  approved: "approved",
  denied: "denied",
  revoked: "revoked",
  expired: "expired",
  used: "approved and used",
};

export const statusBadge = (status: Grant["status"]) =>
  html`<span class="badge ${status}">${STATUS_TEXT[status]}</span>`;

/** One inbox row; the inbox script builds the same markup from the JSON (assets/inbox.js). */
function inboxRow(s: GrantSummary): Html {
  return html`<li class="grant-row" data-id="${s.id}">
<a class="grant-link" href="${s.href}">
<span class="row-top"><strong class="who">${s.requester}</strong> <span class="meta-inline">${s.requesterRole}</span></span>
<code class="cmd">${s.command}</code>
${s.warning ? html`<span class="warn">${s.warning}</span>` : ""}
<span class="meta"><span>on ${s.target_host}</span> &middot; <span>as ${s.run_as}</span> &middot; <span>${s.grant_type}</span> &middot; <span>${s.created_at}</span></span>
${s.reason ? html`<span class="reason">${s.reason}</span>` : ""}
</a>
</li>`;
}

export function inboxPage(o: {
  email: string;
  items: GrantSummary[];
  etag: string;
  csrf: string;
  /** The IdP's VAPID public key when it offers Web Push: the page offers "Notify me in this browser". */
  vapidKey?: string;
}): Html {
  return layout(
    "Inbox",
    html`<h1>Waiting for you</h1>
<p class="lead">Requests of your agents, and of people who named you an approver. This list updates by itself.</p>
<p id="live" class="status" role="status" aria-live="polite"></p>
<ul id="inbox" class="grants" data-etag="${o.etag}" data-src="${WEB_PATHS.inboxItems}">
${o.items.map(inboxRow)}
</ul>
<p id="empty" class="empty"${o.items.length ? html` hidden` : ""}>Nothing is waiting for you.</p>
${pushControl(o)}`,
    ["/assets/page.js", ...(o.vapidKey ? [PUSH_SCRIPT] : []), "/assets/inbox.js"],
    { nav: "inbox", wide: true },
  );
}

function field(label: string, value: Html | string, id?: string): Html {
  return html`<div class="field"><dt>${label}</dt><dd${id ? html` id="${id}"` : ""}>${value}</dd></div>`;
}

/** Every argument on its own line with its index; escapes marked (their text is exactly visible(arg)). */
function argvList(argv: readonly string[]): Html {
  return html`<ol id="argv" class="argv" start="0">
${argv.map(
  (arg, i) =>
    html`<li><span class="argn">${i === 0 ? "program" : `arg ${i}`}</span><code class="arg">${
      arg === ""
        ? html`<span class="empty-arg">(empty)</span>`
        : argumentParts(arg).map((p) => (p.escaped ? html`<mark class="esc">${p.text}</mark>` : p.text))
    }</code></li>`,
)}
</ol>`;
}

function owners(user: UserRecord | undefined): Html {
  if (!user) return html`<span class="warn">not a user of this identity provider</span>`;
  const approvers = user.approvers.length
    ? html`; approvers: ${user.approvers.map((a) => visible(a)).join(", ")}`
    : "";
  return html`${requesterRole(user)}${approvers}`;
}

function decisionForm(grant: Grant, csrf: string): Html {
  const r = grant.request;
  const choice = (value: string, text: string) =>
    html`<label class="choice"><input type="radio" name="grant_type" value="${value}"${r.grant_type === value ? html` checked` : ""}> ${text}</label>`;
  return html`<form id="decide" class="decide" data-grant="${grant.id}" data-csrf="${csrf}" novalidate>
<fieldset>
<legend>Approve as</legend>
${choice("once", "Once: this one run")}
${choice("timed", "Timed: again and again until the time is up")}
<label class="duration" for="duration">for <input id="duration" name="duration" type="text" inputmode="text" autocomplete="off" spellcheck="false" value="${durationText(r.duration ?? 3600)}"> <span class="meta-inline">(like 30m, 2h, 1d)</span></label>
${choice("always", "Always: this exact command, from now on")}
</fieldset>
<div class="actions">
<button id="approve" type="submit" class="primary">Approve with your passkey</button>
<button id="deny" type="button" class="danger wide-button">Deny</button>
</div>
<p id="status" class="status" role="status" aria-live="polite"></p>
</form>`;
}

function outcome(grant: Grant): Html {
  const by = grant.decided_by === undefined ? "" : visible(grant.decided_by);
  const when = grant.decided_at === undefined ? "" : ` at ${timeText(grant.decided_at)}`;
  const proof = grant.approval_proof ? ` (proof: ${grant.approval_proof})` : "";
  const what = STATUS_TEXT[grant.status];
  return html`<p id="outcome" class="outcome ${grant.status}">${what.charAt(0).toUpperCase() + what.slice(1)}${by ? ` by ${by}` : ""}${when}${grant.status === "approved" || grant.status === "used" ? proof : ""}${grant.expires_at ? `; until ${timeText(grant.expires_at)}` : ""}</p>`;
}

export function grantPage(o: {
  grant: Grant;
  requester: UserRecord | undefined;
  /** Why this person cannot decide it; undefined: they can. */
  cannotDecide?: string;
  csrf: string;
  etag: string;
}): Html {
  const g = o.grant;
  const r = g.request;
  const summary = grantSummary(g, o.requester);
  const argv = r.command ?? [];
  return layout(
    "Grant",
    html`<div class="top"><h1>${g.status === "pending" ? "Approve this command?" : "Command request"}</h1>${statusBadge(g.status)}</div>
<p class="lead"><strong>${summary.requester}</strong> ${g.status === "pending" ? "asks" : "asked"} to run a command on <strong>${summary.target_host}</strong> as <strong>${summary.run_as}</strong>.</p>
<section id="grant" data-grant="${g.id}" data-status="${g.status}" data-etag="${o.etag}" data-src="${WEB_PATHS.grants}/${g.id}/state">
<h2>Command</h2>
${summary.warning ? html`<p class="warn" id="warning">${summary.warning}</p>` : ""}
<pre class="shell" id="shell"><code>${commandText(argv)}</code></pre>
${argvList(argv)}
<dl class="fields">
${field("Requested by", html`${summary.requester} <span class="meta-inline">${owners(o.requester)}</span>`, "requester")}
${field("Target host", summary.target_host, "target")}
${field("Run as", r.run_as === undefined ? "root (the default)" : summary.run_as, "run-as")}
${field("Reason", summary.reason || html`<span class="meta-inline">none given</span>`, "reason")}
${field("Permissions", r.permissions?.length ? r.permissions.map((x) => visible(x)).join(", ") : html`<span class="meta-inline">none</span>`, "permissions")}
${field("Audience", visible(r.audience))}
${field(g.status === "pending" ? "Requested" : "Grant type", grantTypeText(r), "requested-type")}
${field("cmd_hash", html`<code class="hash">${r.cmd_hash ? visible(r.cmd_hash) : "none"}</code>`, "cmd-hash")}
${field("Grant id", html`<code class="hash">${g.id}</code>`)}
${field("Asked at", summary.created_at)}
</dl>
</section>
${g.status === "pending" ? (o.cannotDecide ? html`<p class="lead error" id="outcome">You cannot decide this grant: ${o.cannotDecide}.</p>` : decisionForm(g, o.csrf)) : outcome(g)}
<p class="hint"><a href="${WEB_PATHS.inbox}">Back to the inbox</a></p>`,
    [WEBAUTHN_SCRIPT, "/assets/page.js", "/assets/grant.js"],
    { nav: "inbox", wide: true },
  );
}

export function historyPage(o: { items: GrantSummary[]; next?: string; first: boolean }): Html {
  return layout(
    "History",
    html`<h1>Your decisions</h1>
<p class="lead">Grants you approved or denied, newest first.</p>
<ul id="history" class="grants">
${o.items.map(
  (s) => html`<li class="grant-row" data-id="${s.id}">
<a class="grant-link" href="${s.href}">
<span class="row-top">${statusBadge(s.status)} <strong class="who">${s.requester}</strong></span>
<code class="cmd">${s.command}</code>
<span class="meta"><span>on ${s.target_host}</span> &middot; <span>as ${s.run_as}</span> &middot; <span>${s.grant_type}</span> &middot; <span>decided ${s.decided_at ?? ""}</span></span>
</a>
</li>`,
)}
</ul>
${o.items.length === 0 ? html`<p class="empty">${o.first ? "You have not decided any grant yet." : "No older decisions."}</p>` : ""}
<p class="pager">${o.first ? "" : html`<a href="${WEB_PATHS.history}">Newest</a>`}${o.next ? html`<a id="older" href="${WEB_PATHS.history}?cursor=${o.next}">Older</a>` : ""}</p>`,
    [],
    { nav: "history", wide: true },
  );
}

function delegationRow(g: Grant, me: string, csrf: string): Html {
  const r = g.request;
  const live = g.status === "approved" || g.status === "used";
  const mine = r.delegator === me;
  return html`<li class="grant-row delegation" data-id="${g.id}">
<div class="row-main">
<span class="row-top">${statusBadge(g.status)} ${mine ? html`to <strong class="who">${visible(r.delegate ?? "")}</strong>` : html`from <strong class="who">${visible(r.delegator ?? "")}</strong>`}</span>
<span class="meta"><span>at ${visible(r.audience)}</span> &middot; <span>${grantTypeText(r)}</span> &middot; <span>scopes: ${r.scopes?.length ? r.scopes.map((s) => visible(s)).join(", ") : "all"}</span> &middot; <span>since ${timeText(g.created_at)}</span>${g.expires_at ? html` &middot; <span>until ${timeText(g.expires_at)}</span>` : ""}</span>
</div>
${
  live && mine
    ? html`<form method="post" action="${WEB_PATHS.revokeDelegation}">
<input type="hidden" name="${CSRF_FIELD}" value="${csrf}">
<input type="hidden" name="id" value="${g.id}">
<button type="submit" class="danger">Revoke</button>
</form>`
    : ""
}
</li>`;
}

export function delegationsPage(o: { email: string; items: Grant[]; csrf: string; error?: string }): Html {
  return layout(
    "Delegations",
    html`<h1>Delegations</h1>
<p class="lead">Let an agent or a service act for you at one audience, until you revoke it.</p>
${o.error ? html`<p class="lead error" id="error" role="alert">${o.error}</p>` : ""}
<ul id="delegations" class="grants">
${o.items.map((g) => delegationRow(g, o.email, o.csrf))}
</ul>
${o.items.length === 0 ? html`<p class="empty">No delegations yet.</p>` : ""}
<h2>New delegation</h2>
<form id="new-delegation" method="post" action="${WEB_PATHS.delegations}" class="stack">
<input type="hidden" name="${CSRF_FIELD}" value="${o.csrf}">
<label for="delegate">Who may act for you</label>
<input id="delegate" name="delegate" type="email" required autocapitalize="none" spellcheck="false" placeholder="nest+agent@example.com">
<label for="audience">At which service (audience, or * for any)</label>
<input id="audience" name="audience" type="text" required autocapitalize="none" spellcheck="false" placeholder="troop.example.com">
<label for="scopes">Scopes (separated by spaces; empty: all)</label>
<input id="scopes" name="scopes" type="text" autocapitalize="none" spellcheck="false">
<label for="expires">How long (empty: until revoked; like 30m, 8h, 7d)</label>
<input id="expires" name="duration" type="text" autocapitalize="none" spellcheck="false">
<button type="submit" class="primary">Create delegation</button>
</form>`,
    [],
    { nav: "delegations", wide: true },
  );
}
