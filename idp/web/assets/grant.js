// A grant's page: approve with a fresh passkey assertion whose challenge the IdP bound to this
// grant, its request and this decision (grant type, duration); deny without one. Both send the
// session's CSRF token. The page reloads (the server shows the outcome) once the grant changes,
// here or elsewhere (a long poll of GET /grants/<id>/state).

(() => {
  const { post, explain, say } = window.apes;
  const section = document.getElementById("grant");
  const form = document.getElementById("decide");
  const id = section.dataset.grant;
  let etag = section.dataset.etag;
  let deciding = false;

  async function watch() {
    for (;;) {
      try {
        const res = await fetch(section.dataset.src, {
          headers: { prefer: "wait=25", "if-none-match": etag },
          credentials: "same-origin",
          cache: "no-store",
        });
        if (res.status === 200) {
          const body = await res.json();
          if (body.etag !== etag && !deciding) {
            window.location.reload();
            return;
          }
          etag = body.etag;
        } else if (res.status !== 304) return;
      } catch {
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
  }
  watch();

  if (!form) return;
  const status = document.getElementById("status");
  const approve = document.getElementById("approve");
  const deny = document.getElementById("deny");
  const duration = document.getElementById("duration");
  const csrf = form.dataset.csrf;
  const base = `/grants/${encodeURIComponent(id)}`;

  function choice() {
    const type = form.querySelector("input[name=grant_type]:checked")?.value;
    const c = {};
    if (type) c.grant_type = type;
    if (type === "timed") c.duration = duration.value.trim();
    return c;
  }
  function sync() {
    const timed = form.querySelector("input[name=grant_type]:checked")?.value === "timed";
    duration.disabled = !timed;
  }
  for (const r of form.querySelectorAll("input[name=grant_type]")) r.addEventListener("change", sync);
  sync();

  function busy(on) {
    deciding = on;
    approve.disabled = on;
    deny.disabled = on;
  }

  function done(result) {
    say(status, result.status === "approved" ? "Approved." : "Denied.", "ok");
    window.location.reload();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    busy(true);
    try {
      const c = choice();
      say(status, "Confirm with your passkey…", "");
      const { options } = await post(`${base}/approve/options`, { csrf_token: csrf, ...c });
      const response = await window.SimpleWebAuthnBrowser.startAuthentication({ optionsJSON: options });
      say(status, "Checking your passkey…", "");
      done(await post(`${base}/approve`, { csrf_token: csrf, ...c, response }));
    } catch (err) {
      say(status, `Not approved: ${explain(err)}`, "error");
      busy(false);
    }
  });

  deny.addEventListener("click", async () => {
    busy(true);
    try {
      done(await post(`${base}/deny`, { csrf_token: csrf }));
    } catch (err) {
      say(status, `Not denied: ${explain(err)}`, "error");
      busy(false);
    }
  });
  document.body.dataset.ready = "yes";
})();
