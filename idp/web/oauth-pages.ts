import { CSRF_FIELD } from "../../server/web/csrf.ts";
import { type Html, html } from "../../server/web/html.ts";
import { CLI_CLIENT_ID } from "../oauth/clients.ts";
import { layout } from "./pages.ts";

/**
 * The pages of the OAuth flows: the consent step of /authorize and the device code page. Markup only
 * through the `html` tag (every value escaped), no script, in the frame of the other pages.
 */

export { CSRF_FIELD };

const hidden = (fields: [string, string][]) =>
  fields.map(([k, v]) => html`<input type="hidden" name="${k}" value="${v}">\n`);

/** Who is asking: the CLI by name, any other client by its id and where it sends you back. */
function clientLine(clientId: string, redirectUri: string): Html {
  if (clientId === CLI_CLIENT_ID) return html`The <strong>apes command line</strong> on this computer`;
  return html`<strong>${clientId}</strong> (back to <code>${new URL(redirectUri).origin}</code>)`;
}

export function consentPage(o: {
  email: string;
  clientId: string;
  redirectUri: string;
  loginHint?: string;
  fields: [string, string][];
  csrf: string;
  action: string;
}): Html {
  const other =
    o.loginHint !== undefined && o.loginHint.toLowerCase() !== o.email
      ? html`<p class="lead error">It asked for <strong>${o.loginHint}</strong>; you are signed in as someone else.</p>`
      : "";
  return layout(
    "Continue",
    html`<h1>Continue as ${o.email}?</h1>
<p class="lead">${clientLine(o.clientId, o.redirectUri)} asks to sign you in.</p>
${other}
<form method="post" action="${o.action}" class="stack">
${hidden(o.fields)}<input type="hidden" name="${CSRF_FIELD}" value="${o.csrf}">
<button type="submit" name="decision" value="allow" class="primary">Continue</button>
<button type="submit" name="decision" value="deny" class="quiet">Cancel</button>
</form>
<p class="hint">Only continue if you started this sign-in yourself.</p>`,
  );
}

export function oauthErrorPage(title: string, message: string): Html {
  return layout(title, html`<h1>${title}</h1>\n<p class="lead error">${message}</p>`);
}

export function deviceEntryPage(o: {
  email: string;
  csrf: string;
  action: string;
  userCode?: string;
  error?: string;
}): Html {
  return layout(
    "Device sign-in",
    html`<h1>Sign in a device</h1>
<p class="lead">Signed in as <strong>${o.email}</strong>. Enter the code the other device shows.</p>
${o.error ? html`<p class="lead error">${o.error}</p>` : ""}
<form method="post" action="${o.action}" class="stack">
<input type="hidden" name="${CSRF_FIELD}" value="${o.csrf}">
<label for="user_code">Code</label>
<input id="user_code" name="user_code" type="text" autocomplete="off" autocapitalize="characters" spellcheck="false" maxlength="12" placeholder="BCDF-GHJK" value="${o.userCode ?? ""}">
<button type="submit" name="decision" value="check" class="primary">Next</button>
</form>`,
  );
}

export function deviceConfirmPage(o: {
  email: string;
  csrf: string;
  action: string;
  userCode: string;
  clientId: string;
}): Html {
  const who =
    o.clientId === CLI_CLIENT_ID
      ? html`the <strong>apes command line</strong>`
      : html`<strong>${o.clientId}</strong>`;
  return layout(
    "Device sign-in",
    html`<h1>Sign in ${who} as ${o.email}?</h1>
<p class="lead">Code <code>${o.userCode}</code>. Approve only if you started this sign-in yourself and the other device shows this code: whoever holds it gets your session.</p>
<form method="post" action="${o.action}" class="stack">
<input type="hidden" name="${CSRF_FIELD}" value="${o.csrf}">
<input type="hidden" name="user_code" value="${o.userCode}">
<button type="submit" name="decision" value="approve" class="primary">Approve</button>
<button type="submit" name="decision" value="deny" class="danger">Deny</button>
</form>`,
  );
}

export function deviceDonePage(approved: boolean): Html {
  return layout(
    "Device sign-in",
    html`<h1>${approved ? "Device signed in" : "Sign-in denied"}</h1>
<p class="lead">${approved ? "You can return to your device." : "The device was not signed in."}</p>`,
  );
}
