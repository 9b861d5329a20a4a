// "Notify me in this browser": subscribes this browser to Web Push (RFC 8030) with the IdP's VAPID
// key and hands the subscription (its endpoint and RFC 8291 keys) to the IdP, which stores it as
// a `webpush` channel of the signed-in person; "Stop" unsubscribes and removes it. The control
// (#push, data-* from the page) stays hidden where the browser cannot do push.

(() => {
  const box = document.getElementById("push");
  if (!box) return;
  const on = document.getElementById("push-on");
  const off = document.getElementById("push-off");
  const line = document.getElementById("push-status");
  const { post, explain, say } = window.apes;
  const { key, csrf, subscribe, unsubscribe, worker } = box.dataset;
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) return;
  box.hidden = false;

  function bytes(b64url) {
    const s = atob(b64url.replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(s, (c) => c.charCodeAt(0));
  }

  function show(subscribed) {
    on.hidden = subscribed;
    off.hidden = !subscribed;
  }

  async function registration() {
    await navigator.serviceWorker.register(worker, { scope: "/" });
    return navigator.serviceWorker.ready;
  }

  /** A button's click: disabled while `run` works; its failure said as "Could not <what>: why". */
  function onClick(button, what, run) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await run();
      } catch (err) {
        say(line, `Could not ${what}: ${explain(err)}`, "error");
      } finally {
        button.disabled = false;
      }
    });
  }

  onClick(on, "turn on notifications", async () => {
    if ((await Notification.requestPermission()) !== "granted") {
      say(
        line,
        "This browser does not allow notifications from this site. Allow them in its settings, then try again.",
        "error",
      );
      return;
    }
    const reg = await registration();
    const sub =
      (await reg.pushManager.getSubscription()) ||
      (await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: bytes(key) }));
    const json = sub.toJSON();
    await post(subscribe, { csrf_token: csrf, endpoint: json.endpoint, keys: json.keys });
    show(true);
    say(line, "This browser is notified of requests that wait for you.", "ok");
  });

  onClick(off, "turn off notifications", async () => {
    const reg = await navigator.serviceWorker.getRegistration("/");
    const sub = await reg?.pushManager.getSubscription();
    if (sub) {
      await post(unsubscribe, { csrf_token: csrf, endpoint: sub.endpoint });
      await sub.unsubscribe();
    }
    show(false);
    say(line, "This browser is no longer notified.", "ok");
  });

  // Already subscribed (an earlier visit): offer Stop.
  navigator.serviceWorker
    .getRegistration("/")
    .then((reg) => reg?.pushManager.getSubscription())
    .then((sub) => show(Boolean(sub)))
    .catch(() => show(false));
})();
