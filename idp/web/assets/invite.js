// The invite page: the secret is in the URL fragment (never sent to any server by the browser);
// it is taken out of the address bar at once and posted to our own origin only.

(() => {
  const { startRegistration, browserSupportsWebAuthn } = window.SimpleWebAuthnBrowser;
  const { post, explain, say } = window.apes;
  const lead = document.getElementById("invite-for");
  const button = document.getElementById("register");
  const status = document.getElementById("status");
  const invite = window.location.hash.slice(1);
  window.history.replaceState(null, "", window.location.pathname);

  if (!browserSupportsWebAuthn()) {
    lead.textContent = "This browser does not support passkeys.";
    return;
  }
  if (!invite) {
    lead.textContent = "This link has no invite in it. Open the whole link you were given.";
    return;
  }

  let options;
  post("/invite/options", { invite })
    .then((answer) => {
      options = answer.options;
      lead.textContent = "";
      lead.append("For ");
      const who = document.createElement("strong");
      who.textContent = answer.email;
      lead.append(who, ". Your device will ask you to confirm with your fingerprint, face or PIN.");
      button.disabled = false;
      document.body.dataset.ready = "yes";
    })
    .catch((err) => {
      lead.textContent =
        err.status === 400 ? `${explain(err)} Ask your administrator for a new one.` : explain(err);
      lead.classList.add("error");
      button.hidden = true;
    });

  button.addEventListener("click", async () => {
    button.disabled = true;
    say(status, "Waiting for your device…", "");
    try {
      const response = await startRegistration({ optionsJSON: options });
      say(status, "Saving your passkey…", "");
      const { redirect } = await post("/invite/verify", { invite, response });
      say(status, "Passkey created.", "ok");
      window.location.assign(redirect);
    } catch (err) {
      say(status, explain(err), "error");
      button.disabled = false;
    }
  });
})();
