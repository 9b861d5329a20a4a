import { createHash } from "node:crypto";
import { signingInput } from "./signatures.ts";
import type { GrantRequest, GrantType } from "./types.ts";

/**
 * What an approval proves (docs/signatures.md, "Approvals"). A bearer token only says who is
 * calling; an approval must also prove that a credential of the approver was used, freshly, for
 * exactly this decision on exactly this grant. Both proofs (an Ed25519 signature from the CLI, a
 * passkey assertion from the browser) commit to one digest:
 *
 *   SHA-256( "apes-approval-v1" LF JCS({issuer, grant_id, type, request, decision, approval}) )
 *
 * JCS is the JSON Canonicalization Scheme (RFC 8785): sorted keys, no whitespace, ECMAScript number
 * and string forms, so the IdP (from the stored grant) and any client (from the grant it showed the
 * human) compute the same bytes, and no two different grants or decisions share them.
 */

export const APPROVAL_DIGEST_FORMAT = "apes-approval-v1";

/** The proof types an approval may carry (the `proof.type` of an approve body). */
export const APPROVAL_PROOF_TYPES = ["ed25519", "webauthn"] as const;
export type ApprovalProofType = (typeof APPROVAL_PROOF_TYPES)[number];
/** The discovery field listing the proof types an IdP verifies (absent: an IdP that verifies none). */
export const APPROVAL_PROOFS_FIELD = "apes_approval_proofs_supported";
/** What the grant records as the proof that approved it ("bearer": the IdP's opt-in old-client mode). */
export type ApprovalProofRecord = ApprovalProofType | "bearer";

export interface ApprovalInput {
  /** The IdP's issuer without a trailing slash, as the client connected to it. */
  issuer: string;
  grantId: string;
  /** The grant's category: "command" or "delegation". */
  type: string;
  /** The grant's request exactly as the IdP stores and returns it (every field, unknown ones too). */
  request: Record<string, unknown>;
  decision: "approve";
  /** The approver's choice: the grant type, and for `timed` the duration in seconds. */
  grantType: GrantType;
  duration?: number | undefined;
}

/**
 * The approval an approve body asks for: the approver's grant type and duration over what was
 * requested (a duration only for `timed`). `duration` is undefined for a `timed` approval that names
 * none where none was requested: the IdP refuses that body.
 */
export function effectiveApproval(
  request: Pick<GrantRequest, "grant_type" | "duration">,
  choice: { grant_type?: GrantType | undefined; duration?: number | undefined },
): { grantType: GrantType; duration: number | undefined } {
  const grantType = choice.grant_type ?? request.grant_type;
  if (grantType !== "timed") return { grantType, duration: undefined };
  return { grantType, duration: choice.duration ?? request.duration };
}

export class CanonicalJsonError extends Error {
  override name = "CanonicalJsonError";
}

/**
 * RFC 8785 canonical JSON of a JSON value. Object members whose value is undefined are left out (as
 * JSON itself does, so a value and its wire form agree); anything JSON cannot carry is refused.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new CanonicalJsonError("a number that JSON cannot carry");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map((v) => (v === undefined ? "null" : canonicalJson(v))).join(",")}]`;
  }
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    // Sorted by UTF-16 code units, as RFC 8785 says (and as Array.prototype.sort compares strings).
    const keys = Object.keys(value)
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(",")}}`;
  }
  throw new CanonicalJsonError(`a ${typeof value} is not JSON`);
}

/** The object the digest covers (its JCS form follows the format line). */
export function approvalDocument(input: ApprovalInput): Record<string, unknown> {
  const approval: Record<string, unknown> = { grant_type: input.grantType };
  if (input.grantType === "timed") approval.duration = input.duration;
  return {
    issuer: input.issuer,
    grant_id: input.grantId,
    type: input.type,
    request: input.request,
    decision: input.decision,
    approval,
  };
}

/** The bytes that are hashed: the format name, a line feed, the canonical document. */
export function approvalDigestInput(input: ApprovalInput): Buffer {
  return Buffer.from(`${APPROVAL_DIGEST_FORMAT}\n${canonicalJson(approvalDocument(input))}`, "utf8");
}

/** The 32-byte approval digest: what a passkey assertion's challenge commits to (its binding). */
export function approvalDigest(input: ApprovalInput): Buffer {
  return createHash("sha256").update(approvalDigestInput(input)).digest();
}

/** The digest as 64 lowercase hex digits: what an Ed25519 proof signs (inside apes-signature-v1). */
export function approvalDigestHex(input: ApprovalInput): string {
  return approvalDigest(input).toString("hex");
}

/**
 * The bytes an Ed25519 proof signs: the apes-signature-v1 message with purpose `approve`, the issuer,
 * the approver's identity (its stored, normalised form) and the digest in hex. A login signature
 * (purpose `login`) can therefore never approve, nor an approval log in.
 */
export function approvalSigningInput(issuer: string, approver: string, digestHex: string): Buffer {
  return signingInput("approve", issuer, approver, digestHex);
}
