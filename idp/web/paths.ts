/** The paths of the IdP's browser pages and of the JSON calls their scripts make (import-free). */
export const WEB_PATHS = {
  login: "/login",
  loginOptions: "/login/options",
  loginVerify: "/login/verify",
  invite: "/invite",
  inviteOptions: "/invite/options",
  inviteVerify: "/invite/verify",
  account: "/account",
  removePasskey: "/account/passkeys/remove",
  logout: "/logout",
} as const;

/** Calls that try a credential or an invite: counted in the `login` rate-limit class per address. */
export const WEB_CREDENTIAL_PATHS: readonly string[] = [
  WEB_PATHS.loginOptions,
  WEB_PATHS.loginVerify,
  WEB_PATHS.inviteOptions,
  WEB_PATHS.inviteVerify,
];
