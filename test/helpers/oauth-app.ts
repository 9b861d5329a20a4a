import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GrantEvents, type Idp, type Principal } from "../../idp/context.ts";
import { oauthErrorReply, Router } from "../../idp/http.ts";
import { Keyring } from "../../idp/keys.ts";
import { registerDiscoveryRoutes } from "../../idp/routes/discovery.ts";
import { registerOAuthRoutes } from "../../idp/routes/oauth.ts";
import { type Human, type HumanSessions, registerOAuthWebRoutes } from "../../idp/routes/oauth-web.ts";
import { registerTokenRoutes } from "../../idp/routes/token.ts";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import type { Store } from "../../idp/store/types.ts";
import { ProblemError } from "../../protocol/problem.ts";
import { SIGNATURE_FORMAT_V1 } from "../../protocol/signatures.ts";
import { jsonLogger } from "../../server/log.ts";
import { pipeline } from "../../server/pipeline.ts";

/**
 * The IdP's OAuth routes (discovery, /authorize, /device, /token, /device_authorization, /revoke)
 * in this process, over an injected HumanSessions: the cookie `who=<email>` is the signed-in human,
 * `csrf-s-<email>` its CSRF token. For unit tests of the pages and of the CLI's browser login.
 */

export const fakeSessions: HumanSessions = {
  async currentHuman(call) {
    const m = /(?:^|; )who=([^;]+)/.exec(call.req.headers.cookie ?? "");
    if (!m) return undefined;
    const email = decodeURIComponent(m[1]!);
    return { sessionId: `s-${email}`, email };
  },
  formToken: (h: Human) => `csrf-${h.sessionId}`,
  checkStateChange(_call, h, token) {
    if (token !== `csrf-${h.sessionId}`) throw new ProblemError("forbidden", "bad csrf");
  },
  loginPath: "/login",
};

export interface OAuthApp {
  base: string;
  idp: Idp;
  store: Store;
  close(): Promise<void>;
}

export async function startOAuthApp(humans: string[]): Promise<OAuthApp> {
  const dir = mkdtempSync(join(tmpdir(), "apes-oauth-app-"));
  const store = openSqliteStore(join(dir, "data"));
  for (const email of humans) await store.addUser({ email, kind: "human", createdAt: 1 });
  const log = jsonLogger("error", () => undefined);
  const router = new Router<Principal>();
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const idp: Idp = {
    store,
    keys: await Keyring.open(store, Math.floor(Date.now() / 1000)),
    issuer: base,
    base,
    tokenTtl: 3600,
    log,
    events: new GrantEvents(),
    now: () => Math.floor(Date.now() / 1000),
    shutdown: new AbortController().signal,
    sessionClaims: async () => ({}),
    authenticate: async () => {
      throw new ProblemError("invalid_token", "none here");
    },
    rateLimit: () => undefined,
    revocationHandle: (kind, subject) => `${kind}:${subject}`,
  };
  registerDiscoveryRoutes(router, idp, [SIGNATURE_FORMAT_V1]);
  registerOAuthWebRoutes(router, idp, fakeSessions);
  registerTokenRoutes(router, idp);
  registerOAuthRoutes(router, idp);
  server.on(
    "request",
    pipeline({
      router,
      log,
      base,
      shutdown: idp.shutdown,
      authenticate: idp.authenticate,
      errorReply: oauthErrorReply,
    }),
  );
  return {
    base,
    idp,
    store,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The hidden fields of a page's form. */
export function formOf(page: string): URLSearchParams {
  const f = new URLSearchParams();
  for (const m of page.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)) {
    f.append(
      m[1]!,
      m[2]!
        .replaceAll("&quot;", '"')
        .replaceAll("&#39;", "'")
        .replaceAll("&#96;", "`")
        .replaceAll("&lt;", "<")
        .replaceAll("&gt;", ">")
        .replaceAll("&amp;", "&"),
    );
  }
  return f;
}
