// The login page: passkey autofill (conditional UI) on the email field, and the button.

(() => {
  const { startAuthentication, browserSupportsWebAuthn, browserSupportsWebAuthnAutofill } =
    window.SimpleWebAuthnBrowser;
  const { post, explain, say } = window.apes;
  const form = document.getElementById("login-form");
  const status = document.getElementById("status");
  const button = form.querySelector("button");
  const returnTo = form.dataset.returnTo;

  async function signIn(autofill) {
    const { options } = await post("/login/options", {});
    const response = await startAuthentication({ optionsJSON: options, useBrowserAutofill: autofill });
    say(status, "Checking your passkey…", "");
    const { redirect } = await post("/login/verify", { response, return_to: returnTo });
    say(status, "Signed in.", "ok");
    window.location.assign(redirect);
  }

  if (!browserSupportsWebAuthn()) {
    say(status, "This browser does not support passkeys.", "error");
    button.disabled = true;
    return;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    say(status, "Waiting for your passkey…", "");
    try {
      await signIn(false);
    } catch (err) {
      say(
        status,
        err.status === 401 ? "Sign-in failed. Try again, or use another passkey." : explain(err),
        "error",
      );
    } finally {
      button.disabled = false;
    }
  });

  // Autofill: the browser offers this site's passkeys in the email field's suggestions. Starting the
  // button's request aborts this one (simplewebauthn's abort service), which is not an error.
  browserSupportsWebAuthnAutofill().then((yes) => {
    if (!yes) return;
    document.body.dataset.autofill = "on";
    signIn(true).catch((err) => {
      if (err && err.name !== "AbortError") say(status, explain(err), "error");
    });
  });
})();
