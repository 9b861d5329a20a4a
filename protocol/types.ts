/**
 * Wire types of the grants and delegations protocol (docs/protocol.md, sections 3-4). The JSON Schemas in
 * protocol/schemas/ are the contract; these types mirror them for the code.
 */

export type GrantType = "once" | "timed" | "always";
export type GrantCategory = "command" | "delegation";
export type GrantStatus = "pending" | "approved" | "denied" | "revoked" | "expired" | "used";
export type Act = "human" | "agent";

export const GRANT_TYPES: readonly GrantType[] = ["once", "timed", "always"];
export const GRANT_STATUSES: readonly GrantStatus[] = [
  "pending",
  "approved",
  "denied",
  "revoked",
  "expired",
  "used",
];

/** Default audience and token audience (docs/protocol.md). */
export const ELEVATION_AUDIENCE = "escapes";
export const CLI_TOKEN_AUDIENCE = "apes-cli";
/** The CLI's OAuth client_id (a native public client, RFC 8252): the audience of its tokens. */
export const CLI_CLIENT_ID = CLI_TOKEN_AUDIENCE;

export interface GrantRequest {
  requester: string;
  target_host: string;
  audience: string;
  grant_type: GrantType;
  command?: string[];
  cmd_hash?: string;
  duration?: number;
  reason?: string;
  run_as?: string;
  permissions?: string[];
  delegator?: string;
  delegate?: string;
  scopes?: string[];
}

export interface Grant {
  id: string;
  type: GrantCategory;
  request: GrantRequest;
  status: GrantStatus;
  decided_by?: string;
  created_at: number;
  decided_at?: number;
  expires_at?: number;
  used_at?: number;
  /** How the approval was proven (an apes extension): "ed25519", "webauthn", or "bearer" (no proof). */
  approval_proof?: "ed25519" | "webauthn" | "bearer";
}

export interface GrantList {
  data: Grant[];
  pagination: { cursor: string | null; has_more: boolean };
}

/** AuthZ-JWT claims (authz-jwt-claims.json). A type, not an interface: it is a JWT payload (a record). */
export type AuthzClaims = {
  iss: string;
  sub: string;
  /** The requester's kind (an apes extension; AuthZ-JWTs of older IdPs have none). */
  act: Act;
  aud: string;
  target_host: string;
  iat: number;
  exp: number;
  jti: string;
  grant_id: string;
  grant_type: GrantType;
  approval?: GrantType;
  command?: string[];
  cmd_hash?: string;
  run_as?: string;
  decided_by?: string;
  permissions?: string[];
};

/** The IdP's session token for its own APIs (`aud: "apes-cli"`). */
export interface SessionClaims {
  iss: string;
  sub: string;
  aud: string;
  act: Act;
  iat: number;
  exp: number;
  jti: string;
}

/** A token obtained by RFC 8693 token exchange on a delegation. */
export interface DelegatedClaims {
  iss: string;
  sub: string;
  aud: string;
  act: { sub: string };
  delegation_grant: string;
  scope: string[];
  iat: number;
  exp: number;
  jti: string;
}

export type ConsumeResult =
  | { status: "consumed" | "valid" }
  | { status: GrantStatus; error: "already_consumed" | "revoked" | "denied" | "expired" | "not_approved" };

/** OIDC discovery plus the DDISA/OpenApe extensions (openid-configuration-extensions.json). */
export interface Discovery {
  issuer: string;
  jwks_uri: string;
  token_endpoint?: string;
  authorization_endpoint?: string;
  ddisa_version?: string;
  ddisa_auth_methods_supported?: string[];
  ddisa_auth_challenge_endpoint?: string;
  ddisa_auth_authenticate_endpoint?: string;
  ddisa_agent_challenge_endpoint?: string;
  ddisa_agent_authenticate_endpoint?: string;
  openape_grants_endpoint?: string;
  openape_delegations_endpoint?: string;
  openape_grant_types_supported?: GrantType[];
  openape_grant_categories_supported?: GrantCategory[];
  [extension: string]: unknown;
}
