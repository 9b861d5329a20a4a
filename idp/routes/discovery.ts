import { SIGNATURE_FORMATS_FIELD } from "../../protocol/signatures.ts";
import type { Idp, Principal } from "../context.ts";
import type { Router } from "../http.ts";

/** Endpoint paths: advertised in discovery, never assumed by clients. */
export const PATHS = {
  discovery: "/.well-known/openid-configuration",
  jwks: "/.well-known/jwks.json",
  challenge: "/api/auth/challenge",
  authenticate: "/api/auth/authenticate",
  agentChallenge: "/api/agent/challenge",
  agentAuthenticate: "/api/agent/authenticate",
  token: "/token",
  grants: "/api/grants",
  delegations: "/api/delegations",
  agents: "/api/agents",
  me: "/api/me",
  notify: "/api/notify",
} as const;

export const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";

export function discoveryDocument(idp: Idp, signatureFormats: string[]): Record<string, unknown> {
  const u = (p: string) => idp.base + p;
  return {
    issuer: idp.issuer,
    jwks_uri: u(PATHS.jwks),
    token_endpoint: u(PATHS.token),
    userinfo_endpoint: u(PATHS.me),
    grant_types_supported: [TOKEN_EXCHANGE, "client_credentials"],
    token_endpoint_auth_methods_supported: ["none", "private_key_jwt"],
    token_endpoint_auth_signing_alg_values_supported: ["EdDSA"],
    id_token_signing_alg_values_supported: ["EdDSA"],
    subject_types_supported: ["public"],
    ddisa_version: "1.0",
    ddisa_auth_methods_supported: ["ed25519"],
    ddisa_auth_challenge_endpoint: u(PATHS.challenge),
    ddisa_auth_authenticate_endpoint: u(PATHS.authenticate),
    ddisa_agent_challenge_endpoint: u(PATHS.agentChallenge),
    ddisa_agent_authenticate_endpoint: u(PATHS.agentAuthenticate),
    // What a key signs to log in here (docs/signatures.md).
    [SIGNATURE_FORMATS_FIELD]: signatureFormats,
    openape_grants_endpoint: u(PATHS.grants),
    openape_delegations_endpoint: u(PATHS.delegations),
    openape_agents_endpoint: u(PATHS.agents),
    apes_notify_endpoint: u(PATHS.notify),
    openape_grant_types_supported: ["once", "timed", "always"],
    openape_grant_categories_supported: ["command", "delegation"],
  };
}

export function registerDiscoveryRoutes(
  router: Router<Principal>,
  idp: Idp,
  signatureFormats: string[],
): void {
  // The document only changes with the issuer: build it once.
  const doc = discoveryDocument(idp, signatureFormats);
  router.add("GET", PATHS.discovery, false, () => ({
    status: 200,
    body: doc,
    headers: { "cache-control": "public, max-age=300" },
  }));
  router.add("GET", PATHS.jwks, false, async () => ({
    status: 200,
    body: await idp.keys.jwks(idp.now()),
    // Short: clients must see a rotation soon.
    headers: { "cache-control": "public, max-age=60" },
  }));
}
