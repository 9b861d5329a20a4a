import { timingSafeEqual } from "node:crypto";
import { createServer, type ServerResponse } from "node:http";
import { oauthFailure } from "./oauth.ts";

/**
 * The loopback redirect of a browser login (RFC 8252 section 7.3): an HTTP listener on 127.0.0.1 at a
 * port the system picks, for one answer. Only `GET /callback` with this login's `state` counts: a
 * request without it (another local process guessing, a stale tab) is refused and the wait goes
 * on. The answer's page says what happened and loads nothing.
 */

export const CALLBACK_PATH = "/callback";

export interface LoopbackReceiver {
  redirectUri: string;
  /** The authorization code, or a ClientError (oauth_refused) when the IdP answered with an error. */
  code: Promise<string>;
  close(): Promise<void>;
}

const PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
  "cache-control": "no-store",
  "referrer-policy": "no-referrer",
  "x-content-type-options": "nosniff",
};

function page(res: ServerResponse, status: number, text: string): void {
  // Only our own fixed sentences reach the page: nothing the request carried.
  res.writeHead(status, PAGE_HEADERS);
  res.end(`<!doctype html><meta charset="utf-8"><title>apes login</title><p>${text}</p>\n`);
}

function sameState(a: string | null, b: string): boolean {
  if (a === null) return false;
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export async function startLoopbackReceiver(state: string): Promise<LoopbackReceiver> {
  let resolve!: (code: string) => void;
  let reject!: (e: unknown) => void;
  const code = new Promise<string>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  code.catch(() => undefined);
  let done = false;
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    if (req.method !== "GET" || url.pathname !== CALLBACK_PATH) return page(res, 404, "Not found.");
    if (done) return page(res, 410, "This login is already finished. You can close this window.");
    if (!sameState(url.searchParams.get("state"), state)) {
      return page(res, 400, "This answer does not belong to the login apes is waiting for.");
    }
    done = true;
    const error = url.searchParams.get("error");
    const value = url.searchParams.get("code");
    if (error !== null || value === null || !/^[A-Za-z0-9_-]{1,512}$/.test(value)) {
      page(res, 400, "The login did not succeed. See the terminal for details.");
      const description = url.searchParams.get("error_description") ?? undefined;
      reject(
        oauthFailure("the IdP did not log you in", "authorize", {
          error: error ?? "no valid code",
          error_description: description,
        }),
      );
      return;
    }
    page(res, 200, "You are logged in to apes. You can close this window.");
    resolve(value);
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  await new Promise<void>((res, rej) => {
    server.once("error", rej);
    server.listen(0, "127.0.0.1", () => res());
  });
  const { port } = server.address() as { port: number };
  return {
    redirectUri: `http://127.0.0.1:${port}${CALLBACK_PATH}`,
    code,
    close: () =>
      new Promise<void>((res) => {
        server.closeAllConnections();
        server.close(() => res());
      }),
  };
}
