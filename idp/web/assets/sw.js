// The IdP's service worker: shows a Web Push notification of a grant and opens its page on click.
// It is registered by push.js from the inbox or the account page, at the origin's root so that its
// scope covers every page. The payload is what idp/notify/channels.ts sends (already decrypted by
// the browser): {title, body, url, grant_id, id}. Nothing in it is trusted: strings are cut short,
// and a click opens only a page of this origin (a link elsewhere falls back to the grant's page).

const TITLE_MAX = 200;
const BODY_MAX = 1000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function text(v, max) {
  return typeof v === "string" ? v.slice(0, max) : "";
}

/** The page to open: the payload's link when it is on this origin, else the grant's page, else the inbox. */
function pageFor(msg) {
  const grant = typeof msg.grant_id === "string" && UUID.test(msg.grant_id) ? msg.grant_id : "";
  if (typeof msg.url === "string") {
    try {
      const u = new URL(msg.url, self.location.origin);
      const page = u.pathname + u.search;
      // The path is resolved again on a click: "//other.example/x" is a path of this origin's URL
      // but another origin's page.
      if (u.origin === self.location.origin && new URL(page, self.location.origin).origin === u.origin)
        return page;
    } catch {}
  }
  return grant ? `/grants/${grant}` : "/inbox";
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let msg = {};
  try {
    msg = event.data ? event.data.json() : {};
  } catch {}
  if (!msg || typeof msg !== "object") msg = {};
  const title = text(msg.title, TITLE_MAX) || "apes: something changed";
  const options = {
    body: text(msg.body, BODY_MAX),
    icon: "/assets/favicon.svg",
    // One banner per grant: its "decided" replaces its "pending".
    tag: text(msg.grant_id, 36) || text(msg.id, 100) || undefined,
    data: { page: pageFor(msg) },
  };
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const page = event.notification.data?.page || "/inbox";
  const url = new URL(page, self.location.origin).href;
  event.waitUntil(
    (async () => {
      const open = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      const same = open.find((c) => c.url === url);
      if (same) return same.focus();
      return self.clients.openWindow(url);
    })(),
  );
});
