// Shared by the IdP's page scripts: JSON calls to our own origin and readable errors.
// (No inline script is allowed by the CSP: every page script is a file like this one.)

window.apes = {
  /** POSTs JSON to a path of this origin; resolves the answer's JSON, rejects with its `detail`. */
  async post(path, body) {
    const res = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
    const json = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error(json.detail || `the server answered ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return json;
  },

  /** What to tell the person about a failed WebAuthn ceremony or call. */
  explain(err) {
    if (err && err.name === "NotAllowedError")
      return "The passkey request was cancelled or timed out. Try again.";
    if (err && err.name === "InvalidStateError")
      return "This device already holds a passkey for this account.";
    if (err && err.status === 429) return "Too many attempts. Wait a minute, then try again.";
    const text = err?.message ? String(err.message) : "something went wrong";
    return text.charAt(0).toUpperCase() + text.slice(1) + ".";
  },

  /** Shows a status line (kind: "", "error" or "ok"). */
  say(el, text, kind) {
    el.textContent = text;
    el.className = kind ? `status ${kind}` : "status";
  },
};
