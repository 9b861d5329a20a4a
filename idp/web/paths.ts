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
  addNotification: "/account/notifications/add",
  removeNotification: "/account/notifications/remove",
  /** JSON calls of push.js: this browser's Web Push subscription, added or removed. */
  pushSubscribe: "/account/push/subscribe",
  pushUnsubscribe: "/account/push/unsubscribe",
  /** The service worker (idp/web/assets/sw.js), served at the root so its scope is every page. */
  serviceWorker: "/sw.js",
  logout: "/logout",
  inbox: "/inbox",
  /** JSON for the inbox script: the pending grants, long-polled with `Prefer: wait` and ETag. */
  inboxItems: "/inbox/items",
  /** `/grants/<id>` (the page); `/grants/<id>/state|approve/options|approve|deny` (its script's JSON calls). */
  grants: "/grants",
  history: "/history",
  delegations: "/delegations",
  revokeDelegation: "/delegations/revoke",
} as const;

/** Calls that try a credential or an invite: counted in the `login` rate-limit class per address. */
export const WEB_CREDENTIAL_PATHS: readonly string[] = [
  WEB_PATHS.loginOptions,
  WEB_PATHS.loginVerify,
  WEB_PATHS.inviteOptions,
  WEB_PATHS.inviteVerify,
];
