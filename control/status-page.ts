import type { Reply } from "../server/http.ts";
import { html, htmlReply, untrusted } from "../server/web/html.ts";
import { logoutForm } from "../sp/pages.ts";
import type { Actor } from "./actors.ts";
import type { NestRecord, StoredIntent } from "./store/types.ts";

/**
 * The status page (GET /status): server-rendered, no script, no style (HTML_HEADERS' CSP allows
 * neither inline), no build step. With `--web-login` a browser signs in with DDISA (sp/login.ts) and
 * the page has a sign-out button; scripts keep `curl -H "Authorization: Bearer ..." .../status`. It lists
 * the nests the caller may command, their agents and their recent intents; every value a nest or
 * submitter chose goes through `untrusted` (protocol/display.ts visible(), then HTML escaping).
 */
export function statusPage(
  actor: Actor,
  rows: { nest: NestRecord; connected: boolean; intents: StoredIntent[] }[],
  now: number,
  signOut?: { action: string; csrf: string },
): Reply {
  const when = (t: number) => new Date(t * 1000).toISOString().replace(".000Z", "Z");
  const page = html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>apes troop</title>
</head><body>
<h1>apes troop</h1>
<p>Signed in as ${untrusted(actor.holder)}${actor.actingFor ? html` acting for ${untrusted(actor.actingFor)}` : ""} at ${when(now)}.</p>
${signOut ? logoutForm(signOut.action, signOut.csrf) : ""}
${rows.length === 0 ? html`<p>No nest you may command has connected.</p>` : ""}
${rows.map(
  ({ nest, connected, intents }) => html`<section>
<h2>${untrusted(nest.id)} (${connected ? "connected" : "offline"})</h2>
<p>Last seen ${when(nest.lastSeen)}${nest.version ? html`, version ${untrusted(nest.version, 64)}` : ""}. Commanders: ${untrusted(nest.commanders.join(", "))}.</p>
<h3>Agents</h3>
${
  nest.agents.length === 0
    ? html`<p>None reported.</p>`
    : html`<table><tr><th>name</th><th>state</th><th>pid</th><th>restarts</th><th>since</th></tr>
${nest.agents.map((a) => html`<tr><td>${untrusted(a.name)}</td><td>${a.state}</td><td>${a.pid ?? ""}</td><td>${a.restarts}</td><td>${when(a.since)}</td></tr>`)}
</table>`
}
<h3>Recent intents</h3>
${
  intents.length === 0
    ? html`<p>None.</p>`
    : html`<table><tr><th>seq</th><th>id</th><th>kind</th><th>agent</th><th>state</th><th>by</th><th>updated</th></tr>
${intents.map(
  (i) =>
    html`<tr><td>${i.intent.seq}</td><td>${untrusted(i.intent.id)}</td><td>${i.intent.kind}</td><td>${untrusted(i.intent.agent)}</td><td>${i.state}</td><td>${untrusted(i.intent.submitted_by)}${i.intent.submitted_via ? html` via ${untrusted(i.intent.submitted_via)}` : ""}</td><td>${when(i.updated_at)}</td></tr>`,
)}
</table>`
}
</section>`,
)}
</body></html>`;
  return htmlReply(200, page);
}
