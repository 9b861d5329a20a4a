// The inbox: keeps the list of pending grants current without a reload. It long-polls the session's
// JSON (GET /inbox/items with `Prefer: wait` and If-None-Match): the IdP answers as soon as a grant
// of one of my agents arrives or is decided, else 304 after the wait. Strings come already made
// visible by the server and are set as text, never as markup.

(() => {
  const list = document.getElementById("inbox");
  const empty = document.getElementById("empty");
  const live = document.getElementById("live");
  const { say } = window.apes;
  let etag = list.dataset.etag;
  const src = list.dataset.src;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function row(s) {
    const li = el("li", "grant-row");
    li.dataset.id = s.id;
    const a = el("a", "grant-link");
    a.href = s.href;
    const top = el("span", "row-top");
    top.append(el("strong", "who", s.requester), " ", el("span", "meta-inline", s.requesterRole));
    a.append(top, el("code", "cmd", s.command));
    if (s.warning) a.append(el("span", "warn", s.warning));
    const meta = el("span", "meta");
    const bits = [`on ${s.target_host}`, `as ${s.run_as}`, s.grant_type, s.created_at];
    bits.forEach((b, i) => {
      if (i) meta.append(" · ");
      meta.append(el("span", "", b));
    });
    a.append(meta);
    if (s.reason) a.append(el("span", "reason", s.reason));
    li.append(a);
    return li;
  }

  function render(items) {
    list.replaceChildren(...items.map(row));
    empty.hidden = items.length > 0;
    document.title = items.length ? `(${items.length}) Inbox · apes` : "Inbox · apes";
  }

  async function poll() {
    for (;;) {
      try {
        const res = await fetch(src, {
          headers: { prefer: "wait=25", "if-none-match": etag },
          credentials: "same-origin",
          cache: "no-store",
        });
        if (res.status === 401) {
          say(live, "You were signed out. Sign in again to see new requests.", "error");
          return;
        }
        if (res.status === 200) {
          const body = await res.json();
          etag = body.etag;
          render(body.items);
          list.dataset.etag = etag;
        } else if (res.status !== 304) {
          throw new Error(`the server answered ${res.status}`);
        }
        if (live.classList.contains("error")) say(live, "", "");
      } catch {
        say(live, "Lost the connection to the server; retrying…", "error");
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
  }

  document.body.dataset.live = "on";
  poll();
})();
