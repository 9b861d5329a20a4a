import {
  APPROVAL_PROOF_TYPES,
  type ApprovalProofRecord,
  approvalDigest,
  approvalSigningInput,
} from "../protocol/approval.ts";
import { ProblemError } from "../protocol/problem.ts";
import { SignatureInputError } from "../protocol/signatures.ts";
import type { Grant, GrantType } from "../protocol/types.ts";
import { ed25519Verify } from "../server/offload.ts";
import type { Idp, Principal } from "./context.ts";
import { registeredKey } from "./registered-keys.ts";
import type { WebContext } from "./web/context.ts";
import { verifyAssertion } from "./web/passkeys.ts";

/**
 * The proof an approval must carry (protocol/approval.ts, docs/signatures.md "Approvals"): a fresh
 * proof of the approver's credential over the digest of this grant, as stored here, and of this
 * decision. The digest is computed here from the stored grant and the approver's parsed choice,
 * never taken from the request, so a proof made for anything else does not verify.
 */

export interface ApprovalSettings {
  /** Accept an approve without a proof (older clients): `apes idp serve --allow-bearer-approve`. */
  allowBearer: boolean;
  /**
   * Verifies a passkey assertion (the browser's AuthenticationResponseJSON) of `p` whose challenge
   * commits to `binding` (the 32-byte approval digest). Absent: passkeys are off at this IdP.
   */
  verifyPasskey?: (p: Principal, response: Record<string, unknown>, binding: Buffer) => Promise<boolean>;
}

export interface ApprovalChoice {
  grantType: GrantType;
  duration: number | undefined;
}

/**
 * The approval digest of `grant` as stored here, approved as `choice`: what an Ed25519 proof signs
 * and what a passkey assertion's challenge must commit to (the binding the approval page asks the
 * passkey challenge for, and the same value checkApprovalProof verifies the assertion against).
 */
export function approvalBinding(base: string, grant: Grant, choice: ApprovalChoice): Buffer {
  return approvalDigest({
    issuer: base,
    grantId: grant.id,
    type: grant.type,
    request: grant.request as unknown as Record<string, unknown>,
    decision: "approve",
    grantType: choice.grantType,
    duration: choice.duration,
  });
}

/**
 * The check of `webauthn` proofs: an assertion by one of the approver's own passkeys whose
 * challenge was made for `binding` (idp/web/passkeys.ts: user verification, origin, RP ID, counter,
 * single use). Undefined when the IdP's passkey pages are off (an IP-address or plain-http issuer).
 */
export function passkeyVerifier(web: WebContext): ApprovalSettings["verifyPasskey"] {
  if (web.unavailable) return undefined;
  return async (p, response, binding) => {
    try {
      return (await verifyAssertion(web, response, { binding, email: p.sub })).email === p.sub;
    } catch (e) {
      // Logged there with the reason; here it is simply not a proof.
      if (e instanceof ProblemError) return false;
      throw e;
    }
  };
}

/** The proof types this IdP verifies, as advertised in discovery. */
export function approvalProofTypes(settings: ApprovalSettings): string[] {
  return settings.verifyPasskey ? ["ed25519", "webauthn"] : ["ed25519"];
}

export const PROOF_REQUIRED_DETAIL =
  "approval needs a proof (an Ed25519 signature or a passkey assertion over the grant): update apes, or the IdP operator may allow bearer approvals (--allow-bearer-approve)";

const SIGNATURE = /^[A-Za-z0-9+/_-]{86}(==)?$/;

function invalidProof(detail: string): ProblemError {
  return new ProblemError("invalid_proof", detail);
}

function proofFields(proof: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(proof)) {
    if (!allowed.includes(k)) throw new ProblemError("invalid_request", `proof: unknown field "${k}"`);
  }
}

/**
 * Checks the proof of `p` approving `grant` as `choice`; returns what the grant records. Callers have
 * already checked that `p` may decide the grant (canDecide) and that it is pending.
 */
export async function checkApprovalProof(
  idp: Pick<Idp, "base" | "log">,
  settings: ApprovalSettings,
  p: Principal,
  grant: Grant,
  choice: ApprovalChoice,
  proof: unknown,
): Promise<ApprovalProofRecord> {
  // canDecide refuses these first; kept here too so no path past it can approve with one.
  if (p.actor.delegated || p.actor.kind !== "human") {
    throw new ProblemError("forbidden", "only a human with its own token can approve");
  }
  if (proof === undefined) {
    if (settings.allowBearer) {
      idp.log.log("warn", "grant approved without a proof (--allow-bearer-approve)", {
        grant: grant.id,
        by: p.sub,
      });
      return "bearer";
    }
    throw new ProblemError("proof_required", PROOF_REQUIRED_DETAIL, {
      proof_types: [...APPROVAL_PROOF_TYPES],
    });
  }
  if (!proof || typeof proof !== "object" || Array.isArray(proof)) {
    throw new ProblemError("invalid_request", "proof must be an object {type, ...}");
  }
  const pr = proof as Record<string, unknown>;
  const digest = approvalBinding(idp.base, grant, choice);
  switch (pr.type) {
    case "ed25519":
      return ed25519Proof(idp, p, pr, digest);
    case "webauthn":
      return webauthnProof(settings, p, pr, digest);
    default:
      throw new ProblemError(
        "invalid_request",
        `proof.type must be one of ${APPROVAL_PROOF_TYPES.join(", ")}`,
      );
  }
}

async function ed25519Proof(
  idp: Pick<Idp, "base">,
  p: Principal,
  proof: Record<string, unknown>,
  digest: Buffer,
): Promise<"ed25519"> {
  proofFields(proof, ["type", "key_fingerprint", "signature"]);
  if (typeof proof.signature !== "string" || !SIGNATURE.test(proof.signature)) {
    throw new ProblemError(
      "invalid_request",
      "proof.signature must be a base64 Ed25519 signature (64 bytes)",
    );
  }
  const named = proof.key_fingerprint;
  if (named !== undefined && (typeof named !== "string" || named.length === 0 || named.length > 128)) {
    throw new ProblemError("invalid_request", "proof.key_fingerprint must be a key fingerprint (SHA256:...)");
  }
  if (!p.user.publicKey) {
    throw invalidProof(
      "you have no Ed25519 key registered at this IdP: approve in the browser with your passkey",
    );
  }
  const { key, fingerprint } = registeredKey(p.user.publicKey);
  if (named !== undefined && named !== fingerprint) {
    throw invalidProof("proof.key_fingerprint names another key than the one registered for you");
  }
  let signed: Buffer;
  try {
    signed = approvalSigningInput(idp.base, p.sub, digest.toString("hex"));
  } catch (e) {
    if (e instanceof SignatureInputError) throw invalidProof(e.message);
    throw e;
  }
  if (!(await ed25519Verify(signed, key, Buffer.from(proof.signature, "base64")))) {
    throw invalidProof(
      "the signature is not your registered key's over this grant, this decision and this approval (grant type, duration)",
    );
  }
  return "ed25519";
}

async function webauthnProof(
  settings: ApprovalSettings,
  p: Principal,
  proof: Record<string, unknown>,
  digest: Buffer,
): Promise<"webauthn"> {
  proofFields(proof, ["type", "response"]);
  const response = proof.response;
  if (!response || typeof response !== "object" || Array.isArray(response)) {
    throw new ProblemError(
      "invalid_request",
      "proof.response must be a passkey assertion (AuthenticationResponseJSON)",
    );
  }
  if (!settings.verifyPasskey) {
    throw invalidProof(
      "webauthn proofs need a passkey, and this IdP's passkeys are off (they need an issuer with a host name, over https): approve with an Ed25519 proof (`apes grants approve`)",
    );
  }
  if (!(await settings.verifyPasskey(p, response as Record<string, unknown>, digest))) {
    throw invalidProof("the passkey assertion is not yours, or not over this grant, decision and approval");
  }
  return "webauthn";
}
