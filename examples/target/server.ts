import { createServer, type ServerResponse } from "node:http";
import { verifyAuthzJwt } from "../../client/verify-grant.ts";

/**
 * A target system of the grant flow: `POST /deploy` runs a deploy only for a bearer AuthZ-JWT
 * from the trusted IdP that is for this system (aud), grants `deploy`, and can be spent at the
 * IdP (a once-grant deploys once; a replay is refused).
 *
 *   APES_ISSUER=https://id.example.com TARGET_NAME=prod-server PORT=8080 node examples/target/server.ts
 */

const issuer = process.env.APES_ISSUER;
const audience = process.env.TARGET_NAME ?? "prod-server";
if (!issuer) throw new Error("set APES_ISSUER to the IdP whose grants this service accepts");

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" }).end(`${JSON.stringify(body)}\n`);
}

const server = createServer(async (req, res) => {
  if (req.method !== "POST" || req.url !== "/deploy") return send(res, 404, { error: "not_found" });
  const token = /^Bearer ([A-Za-z0-9._-]+)$/.exec(req.headers.authorization ?? "")?.[1];
  if (!token) return send(res, 401, { error: "send Authorization: Bearer <AuthZ-JWT>" });
  const r = await verifyAuthzJwt(token, {
    issuers: [issuer],
    audience,
    permissions: ["deploy"],
    consume: true,
  });
  if (!r.valid) {
    const unreachable = r.reason === "jwks_unavailable" || r.reason === "idp_unreachable";
    return send(res, unreachable ? 503 : 403, { error: r.reason, detail: r.detail });
  }
  // The deploy itself would run here; the record says who asked and who approved.
  const deploy = {
    deployed: true,
    grant: r.claims.grant_id,
    by: r.claims.sub,
    approved_by: r.claims.decided_by,
  };
  process.stdout.write(`${JSON.stringify(deploy)}\n`);
  send(res, 200, deploy);
});

server.listen(Number(process.env.PORT ?? 8080), "127.0.0.1", () => {
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  process.stderr.write(`${JSON.stringify({ msg: "listening", url: `http://127.0.0.1:${port}` })}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
