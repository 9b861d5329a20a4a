import { APPROVAL_PROOFS_FIELD } from "../../protocol/approval.ts";
import { SIGNATURE_FORMATS_FIELD } from "../../protocol/signatures.ts";
import type { Idp, Principal } from "../context.ts";
import type { Router } from "../http.ts";
import { DEVICE_CODE_GRANT } from "../oauth/flows.ts";

/** Endpoint paths: advertised in discovery, never assumed by clients. */
export const PATHS = {
  discovery: "/.well-known/openid-configuration",
  jwks: "/.well-known/jwks.json",
  challenge: "/api/auth/challenge",
  authenticate: "/api/auth/authenticate",
  agentChallenge: "/api/agent/challenge",
  agentAuthenticate: "/api/agent/authenticate",
  token: "/token",
  authorize: "/authorize",
  revoke: "/revoke",
  deviceAuthorization: "/device_authorization",
  device: "/device",
  grants: "/api/grants",
  delegations: "/api/delegations",
  agents: "/api/agents",
  me: "/api/me",
  revocations: "/api/revocations",
  notify: "/api/notify",
} as const;

export const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";

export function discoveryDocument(
  idp: Idp,
  signatureFormats: string[],
  approvalProofs: readonly string[] = ["ed25519"],
): Record<string, unknown> {
  const u = (p: string) => idp.base + p;
  return {
    issuer: idp.issuer,
    jwks_uri: u(PATHS.jwks),
    authorization_endpoint: u(PATHS.authorize),
    token_endpoint: u(PATHS.token),
    revocation_endpoint: u(PATHS.revoke),
    device_authorization_endpoint: u(PATHS.deviceAuthorization),
    userinfo_endpoint: u(PATHS.me),
    response_types_supported: ["code"],
    response_modes_supported: ["query"],
    code_challenge_methods_supported: ["S256"],
    grant_types_supported: [
      "authorization_code",
      "refresh_token",
      DEVICE_CODE_GRANT,
      TOKEN_EXCHANGE,
      "client_credentials",
    ],
    revocation_endpoint_auth_methods_supported: ["none"],
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
    // The proofs an approval may carry here (protocol/approval.ts).
    [APPROVAL_PROOFS_FIELD]: approvalProofs,
    openape_grants_endpoint: u(PATHS.grants),
    openape_delegations_endpoint: u(PATHS.delegations),
    openape_agents_endpoint: u(PATHS.agents),
    openape_revocations_endpoint: u(PATHS.revocations),
    apes_notify_endpoint: u(PATHS.notify),
    openape_grant_types_supported: ["once", "timed", "always"],
    openape_grant_categories_supported: ["command", "delegation"],
  };
}

export function registerDiscoveryRoutes(
  router: Router<Principal>,
  idp: Idp,
  signatureFormats: string[],
  approvalProofs?: readonly string[],
): void {
  // The document only changes with the issuer: build it once.
  const doc = discoveryDocument(idp, signatureFormats, approvalProofs);
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
