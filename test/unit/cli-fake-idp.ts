import { createPublicKey, type KeyObject, randomUUID, verify } from "node:crypto";
import { checkApprovalProof } from "../../idp/approval.ts";
import { type Actor, canDecide, canRevoke } from "../../idp/grants.ts";
import type { UserRecord } from "../../idp/store/types.ts";
import { APPROVAL_PROOFS_FIELD, effectiveApproval } from "../../protocol/approval.ts";
import { formatSshPublicKey } from "../../protocol/keys.ts";
import { ProblemError } from "../../protocol/problem.ts";
import { SIGNATURE_FORMAT_V1, SIGNATURE_FORMATS_FIELD, signingInput } from "../../protocol/signatures.ts";
import type { Grant } from "../../protocol/types.ts";
import { jsonLogger } from "../../server/log.ts";

/**
 * An in-memory stand-in for an IdP's HTTP API, injected as ctx.http in unit tests only (integration
 * tests use the real `apes idp serve`). It checks the Ed25519 challenge signature for real and
 * issues unsigned JWT-shaped tokens whose payload the CLI reads. Who may decide or revoke a grant
 * is the real IdP's rule (canDecide, canRevoke of idp/grants.ts), on the users' owner and approvers.
 */

export interface FakeIdpOptions {
  base?: string;
  /** "auth" advertises ddisa_auth_* and takes {id}; "agent" only ddisa_agent_* and takes {agent_id}. */
  family?: "auth" | "agent";
  tokenTtlS?: number;
  now?: () => number;
  /** Honour `Prefer: wait` (answers pending grants after `pushDelay` via `onWait`). */
  push?: boolean;
  /** Token exchange answers unsupported_grant_type (older IdPs). */
  noTokenExchange?: boolean;
  /** An older IdP: advertises no signature format and verifies the raw challenge. */
  rawSignatures?: boolean;
  /** Advertises and requires approval proofs, checked by the real IdP's rule (idp/approval.ts). */
  approvalProofs?: boolean;
}

export interface FakeUser {
  key: KeyObject;
  act: "human" | "agent";
  owner?: string;
  approvers?: string[];
  admin?: boolean;
}

export interface FakeIdp {
  base: string;
  http: typeof fetch;
  /** An agent's `owner` and anyone's `approvers` decide its grants, by the IdP's own rule (idp/grants.ts). */
  users: Map<string, FakeUser>;
  grants: Map<string, Grant>;
  requests: { method: string; path: string; headers: Record<string, string>; body: unknown }[];
  authentications: number;
  /** Called while a `Prefer: wait` request is held; return to release it. */
  onWait?: (grant: Grant) => Promise<void>;
  /** Called after a grant was read (GET /{id}): lets a test change the grant behind the reader's back. */
  onRead?: (grant: Grant) => void;
  down: boolean;
}

export function fakeJwt(payload: Record<string, unknown>): string {
  const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${enc({ alg: "EdDSA", kid: "k1" })}.${enc(payload)}.c2ln`;
}

function payloadOf(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString());
}

export function fakeIdp(options: FakeIdpOptions = {}): FakeIdp {
  const base = options.base ?? "https://id.example.test";
  const family = options.family ?? "auth";
  const now = options.now ?? (() => Math.floor(Date.now() / 1000));
  const challenges = new Map<string, string>();
  let etagCounter = 0;
  const etags = new Map<string, string>();
  const idp: FakeIdp = {
    base,
    users: new Map(),
    grants: new Map(),
    requests: [],
    authentications: 0,
    down: false,
    http: undefined as unknown as typeof fetch,
  };
  const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
    new Response(body === undefined ? null : JSON.stringify(body), {
      status,
      headers: {
        "content-type": status >= 400 ? "application/problem+json" : "application/json",
        ...headers,
      },
    });
  const problem = (status: number, detail: string) =>
    json(status, { type: `https://openape.org/errors/x${status}`, title: "error", status, detail });
  const userRecord = (email: string): UserRecord | undefined => {
    const u = idp.users.get(email);
    if (!u) return undefined;
    const { act, owner, approvers = [], admin = false } = u;
    return { email, kind: act, owner, approvers, admin, disabled: false, createdAt: 0 };
  };
  // A delegated (token-exchange) token names the acting party in an `act` object.
  const actorOf = (me: { sub: string; act: unknown }): Actor => ({
    sub: me.sub,
    kind: idp.users.get(me.sub)?.act ?? "agent",
    admin: idp.users.get(me.sub)?.admin ?? false,
    delegated: typeof me.act === "object" && me.act !== null,
  });
  const bump = (g: Grant) => etags.set(g.id, `"${++etagCounter}"`);
  const auth = (headers: Record<string, string>) => {
    const h = headers.authorization ?? "";
    if (!h.startsWith("Bearer ")) return undefined;
    const p = payloadOf(h.slice(7));
    if (typeof p.exp !== "number" || p.exp <= now()) return undefined;
    return p as { sub: string; act: unknown };
  };

  idp.http = (async (input: string | URL | Request, init: RequestInit = {}) => {
    if (idp.down)
      throw new TypeError("fetch failed", {
        cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }),
      });
    const url = new URL(String(input));
    const method = init.method ?? "GET";
    const headers = Object.fromEntries(
      Object.entries((init.headers ?? {}) as Record<string, string>).map(([k, v]) => [k.toLowerCase(), v]),
    );
    let body: unknown;
    if (typeof init.body === "string") {
      body = headers["content-type"]?.includes("json")
        ? JSON.parse(init.body)
        : Object.fromEntries(new URLSearchParams(init.body));
    }
    const path = url.pathname;
    idp.requests.push({ method, path, headers, body });
    if (path === "/.well-known/openid-configuration") {
      const doc: Record<string, unknown> = {
        issuer: base,
        jwks_uri: `${base}/.well-known/jwks.json`,
        token_endpoint: `${base}/token`,
        ddisa_version: "1.0",
        ddisa_auth_methods_supported: ["ed25519"],
        openape_grants_endpoint: `${base}/api/grants`,
        openape_delegations_endpoint: `${base}/api/delegations`,
      };
      if (!options.rawSignatures) doc[SIGNATURE_FORMATS_FIELD] = [SIGNATURE_FORMAT_V1];
      if (options.approvalProofs) doc[APPROVAL_PROOFS_FIELD] = ["ed25519"];
      if (family === "auth") {
        doc.ddisa_auth_challenge_endpoint = `${base}/api/auth/challenge`;
        doc.ddisa_auth_authenticate_endpoint = `${base}/api/auth/authenticate`;
      } else {
        doc.ddisa_agent_challenge_endpoint = `${base}/api/agent/challenge`;
        doc.ddisa_agent_authenticate_endpoint = `${base}/api/agent/authenticate`;
      }
      return json(200, doc);
    }
    const b = (body ?? {}) as Record<string, string>;
    if (path.endsWith("/challenge") && method === "POST") {
      const id = family === "auth" ? b.id : b.agent_id;
      if (!id) return problem(400, "id is required");
      if (!idp.users.has(id)) return problem(404, "unknown user");
      const c = `challenge-${randomUUID()}`;
      challenges.set(c, id);
      return json(200, { challenge: c });
    }
    if (path.endsWith("/authenticate") && method === "POST") {
      const id = family === "auth" ? b.id : b.agent_id;
      const user = id ? idp.users.get(id) : undefined;
      if (!id || !user || challenges.get(b.challenge ?? "") !== id) return problem(401, "invalid challenge");
      challenges.delete(b.challenge!);
      const signed = options.rawSignatures
        ? Buffer.from(b.challenge!)
        : signingInput("login", base, id, b.challenge!);
      if (!verify(null, signed, user.key, Buffer.from(b.signature ?? "", "base64"))) {
        return problem(401, "bad signature");
      }
      idp.authentications++;
      const iat = now();
      const ttl = options.tokenTtlS ?? 3600;
      const token = fakeJwt({
        iss: base,
        sub: id,
        aud: "apes-cli",
        act: user.act,
        iat,
        exp: iat + ttl,
        jti: randomUUID(),
      });
      return json(200, { token, id, email: id, act: user.act, expires_in: ttl });
    }
    if (path === "/token" && method === "POST") {
      if (b.grant_type === "urn:ietf:params:oauth:grant-type:token-exchange") {
        if (options.noTokenExchange)
          return json(400, { error: "unsupported_grant_type", error_description: "no" });
        const actor = payloadOf(b.actor_token ?? "");
        const g = idp.grants.get(b.delegation_grant_id ?? "");
        if (!g || g.request.delegate !== actor.sub)
          return json(400, { error: "invalid_grant", error_description: "no delegation" });
        const t = fakeJwt({
          sub: g.request.delegator,
          aud: b.audience,
          act: { sub: actor.sub },
          delegation_grant: g.id,
        });
        return json(200, {
          access_token: t,
          issued_token_type: "urn:ietf:params:oauth:token-type:jwt",
          token_type: "Bearer",
          expires_in: 300,
        });
      }
      if (b.grant_type === "client_credentials") {
        const assertion = payloadOf(b.client_assertion ?? "");
        const g = idp.grants.get(b.delegation_grant ?? "");
        if (!g || g.request.delegate !== assertion.sub)
          return json(400, { error: "invalid_grant", error_description: "no delegation" });
        const t = fakeJwt({
          sub: g.request.delegator,
          aud: b.audience,
          act: { sub: assertion.sub },
          via: "client_credentials",
        });
        return json(200, { access_token: t, token_type: "Bearer", expires_in: 300 });
      }
      return json(400, { error: "unsupported_grant_type", error_description: "unknown grant type" });
    }
    const me = auth(headers);
    if (
      path.startsWith("/api/grants") ||
      path.startsWith("/api/delegations") ||
      path.startsWith("/api/agents")
    ) {
      if (!me) return problem(401, "token expired or missing");
    }
    if (path === "/api/grants" && method === "POST") {
      const g: Grant = {
        id: randomUUID(),
        type: "command",
        request: { ...(b as unknown as Grant["request"]), requester: me!.sub },
        status: "pending",
        created_at: now(),
      };
      idp.grants.set(g.id, g);
      bump(g);
      return json(201, g);
    }
    if (path === "/api/grants" && method === "GET") {
      const status = url.searchParams.get("status");
      const data = [...idp.grants.values()].filter(
        (g) => g.type === "command" && (!status || g.status === status),
      );
      return json(200, { data, pagination: { cursor: null, has_more: false } });
    }
    const m = /^\/api\/grants\/([^/]+)(?:\/(\w+))?$/.exec(path);
    if (m) {
      const g = idp.grants.get(decodeURIComponent(m[1]!));
      if (!g) return problem(404, "no such grant");
      const verb = m[2];
      if (!verb && method === "GET") {
        const wait = /wait=(\d+)/.exec(headers.prefer ?? "");
        if (options.push && wait && headers["if-none-match"] === etags.get(g.id) && idp.onWait) {
          await idp.onWait(g);
          if (headers["if-none-match"] === etags.get(g.id))
            return new Response(null, {
              status: 304,
              headers: { etag: etags.get(g.id)!, "preference-applied": `wait=${wait[1]}` },
            });
          return json(200, g, { etag: etags.get(g.id)!, "preference-applied": `wait=${wait[1]}` });
        }
        if (headers["if-none-match"] === etags.get(g.id))
          return new Response(null, { status: 304, headers: { etag: etags.get(g.id)! } });
        const shown = json(200, g, { etag: etags.get(g.id)! });
        idp.onRead?.(g);
        return shown;
      }
      if (verb === "approve" || verb === "deny") {
        const may = canDecide(actorOf(me!), userRecord(g.request.requester));
        if (!may.ok) return problem(403, may.reason);
        if (g.status !== "pending") return problem(409, `grant is ${g.status}`);
        if (verb === "approve" && options.approvalProofs) {
          const { proof, ...choice } = b as Record<string, unknown>;
          const user = {
            ...userRecord(me!.sub)!,
            publicKey: formatSshPublicKey(createPublicKey(idp.users.get(me!.sub)!.key)),
          };
          const p = { sub: me!.sub, user, actor: actorOf(me!), tokenExp: 0 };
          const quiet = { base, log: jsonLogger("error", () => undefined) };
          try {
            const a = effectiveApproval(g.request, choice as Parameters<typeof effectiveApproval>[1]);
            g.approval_proof = await checkApprovalProof(quiet, { allowBearer: false }, p, g, a, proof);
          } catch (e) {
            if (e instanceof ProblemError) return problem(e.status, e.message);
            throw e;
          }
        }
        g.status = verb === "approve" ? "approved" : "denied";
        g.decided_by = me!.sub;
        g.decided_at = now();
        bump(g);
        return json(200, g);
      }
      if (verb === "revoke") {
        const may = canRevoke(actorOf(me!), g, userRecord(g.request.requester));
        if (!may.ok) return problem(403, may.reason);
        g.status = "revoked";
        bump(g);
        return json(200, g);
      }
      if (verb === "token") {
        if (g.status !== "approved") return problem(409, "not approved");
        return json(200, { authz_jwt: fakeJwt({ grant_id: g.id, sub: g.request.requester }), grant: g });
      }
    }
    if (path === "/api/delegations" && method === "POST") {
      const g: Grant = {
        id: randomUUID(),
        type: "delegation",
        request: {
          ...(b as unknown as Grant["request"]),
          delegator: me!.sub,
          requester: me!.sub,
          target_host: "*",
        },
        status: "approved",
        decided_by: me!.sub,
        created_at: now(),
      };
      idp.grants.set(g.id, g);
      return json(201, g);
    }
    if (path === "/api/delegations" && method === "GET") {
      const data = [...idp.grants.values()].filter((g) => g.type === "delegation");
      return json(200, { data, pagination: { cursor: null, has_more: false } });
    }
    const d = /^\/api\/delegations\/([^/]+)$/.exec(path);
    if (d && method === "DELETE") {
      const g = idp.grants.get(d[1]!);
      if (!g) return problem(404, "no such delegation");
      g.status = "revoked";
      return json(200, g);
    }
    if (path === "/api/agents" && method === "POST") {
      return json(201, { email: `${b.name}@agents.example.test`, name: b.name, owner: me!.sub });
    }
    if (path === "/api/agents" && method === "GET") {
      return json(200, { data: [{ email: "bot@agents.example.test", name: "bot", owner: me!.sub }] });
    }
    if (path === "/boom") return problem(503, "maintenance");
    return problem(404, `no route ${method} ${path}`);
  }) as typeof fetch;
  return idp;
}
