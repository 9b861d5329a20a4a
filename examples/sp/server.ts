import { createServer } from "node:http";
import { type SpLogin as Sp, SpLogin, sendReply } from "../../sp/login.ts";
import { html, logoutForm, pageReply, spLayout, untrusted } from "../../sp/pages.ts";

/**
 * A minimal web service that signs people in with DDISA (sp/login.ts): "/" greets the signed-in
 * person ("hello alice@example.com, act human") or sends the browser to the sign-in page; the SP
 * module answers everything under /auth/. Register it at the IdP of your domain first:
 *
 *   apes idp clients add hello --redirect-uri http://127.0.0.1:8090/auth/callback
 *   SP_CLIENT_ID=hello PORT=8090 npx node examples/sp/server.ts     (the pinned Node 24 of npm ci)
 *
 * Environment: SP_CLIENT_ID (required), PORT (default 8090; 0 = any), SP_ORIGIN (default
 * http://127.0.0.1:PORT), SP_ADMINS / SP_USERS (comma-separated, for the allowlist modes),
 * SP_DNS_SERVERS (comma-separated `ip[:port]`), SP_DOH_URL, SP_ALLOW_LOOPBACK_HTTP=1 (IdPs on
 * http://localhost, for tests), SP_COOKIE (cookie name after __Host-).
 */

const clientId = process.env.SP_CLIENT_ID;
if (!clientId) throw new Error("set SP_CLIENT_ID to this service's client id at the IdP");
const list = (v: string | undefined) =>
  v
    ? v
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean)
    : undefined;
const log = (level: string, msg: string, fields: Record<string, unknown> = {}) =>
  process.stderr.write(`${JSON.stringify({ level, msg, ...fields })}\n`);

let sp: Sp | undefined;
const server = createServer(async (req, res) => {
  const url = new URL(req.url ?? "/", "http://x");
  if (!sp) return void res.writeHead(503).end();
  if (sp.handles(url.pathname)) {
    const call = {
      method: req.method ?? "GET",
      path: url.pathname,
      query: url.searchParams,
      req,
      ip: req.socket.remoteAddress ?? "",
    };
    return sendReply(res, await sp.handle(call));
  }
  if (url.pathname !== "/" || (req.method !== "GET" && req.method !== "HEAD")) {
    return void res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  }
  const who = sp.session(req.headers);
  if (!who) return void res.writeHead(303, { location: sp.loginPath }).end();
  const page = spLayout(
    { service: "hello", css: sp.cssPath },
    "Hello",
    html`<h1 id="hello">hello ${untrusted(who.email)}, act ${who.act}</h1>
<dl><dt>role</dt><dd>${who.role}</dd><dt>signed in by</dt><dd>${untrusted(who.issuer)}</dd></dl>
${logoutForm(sp.logoutPath, sp.csrf(who))}`,
  );
  sendReply(res, pageReply(200, page));
});

server.listen(Number(process.env.PORT ?? 8090), "127.0.0.1", () => {
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  const origin = process.env.SP_ORIGIN ?? `http://127.0.0.1:${port}`;
  sp = new SpLogin({
    clientId,
    origin,
    service: "hello",
    ...(list(process.env.SP_ADMINS) ? { admins: list(process.env.SP_ADMINS)! } : {}),
    ...(list(process.env.SP_USERS) ? { users: list(process.env.SP_USERS)! } : {}),
    ...(list(process.env.SP_DNS_SERVERS) ? { dnsServers: list(process.env.SP_DNS_SERVERS)! } : {}),
    ...(process.env.SP_DOH_URL ? { dohUrl: process.env.SP_DOH_URL } : {}),
    allowLoopbackHttp: process.env.SP_ALLOW_LOOPBACK_HTTP === "1",
    ...(process.env.SP_COOKIE ? { cookieName: process.env.SP_COOKIE } : {}),
    log,
  });
  log("info", "listening", { url: origin, redirect_uri: sp.redirectUri });
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
