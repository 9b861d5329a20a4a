import { sign } from "node:crypto";
import { type IdpEndpoints, normalizeIdpUrl } from "../../client/discovery.ts";
import type { GrantsClient } from "../../client/grants.ts";
import { loadPrivateKey } from "../../client/keys.ts";
import type { Session } from "../../client/session.ts";
import {
  APPROVAL_PROOFS_FIELD,
  approvalDigestHex,
  approvalSigningInput,
  CanonicalJsonError,
  effectiveApproval,
} from "../../protocol/approval.ts";
import { visible } from "../../protocol/display.ts";
import { canonicalIdentity } from "../../protocol/names.ts";
import { SignatureInputError } from "../../protocol/signatures.ts";
import type { Grant, GrantType } from "../../protocol/types.ts";
import type { Context } from "../context.ts";
import { CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";

/**
 * The proof `apes grants approve` sends (protocol/approval.ts, docs/signatures.md "Approvals"): the
 * session's key signs the approval digest of the grant exactly as fetched and shown, this decision
 * and the approver's choice. The IdP recomputes the digest from the grant it stores, so a proof
 * for any other grant, request, decision or duration does not verify there.
 */

export interface ApprovalChoice {
  grantType: GrantType;
  duration: number | undefined;
}

export interface Ed25519ApprovalProof {
  type: "ed25519";
  key_fingerprint: string;
  signature: string;
}

/** What the approval will be: the approver's options over what was requested (as the IdP decides it). */
export function approvalChoice(
  grant: Grant,
  options: { grant_type?: GrantType | undefined; duration?: number | undefined },
): ApprovalChoice {
  const choice = effectiveApproval(grant.request, options);
  if (choice.grantType === "timed" && choice.duration === undefined) {
    throw new CliError("approving as timed needs a duration: add --duration (e.g. --duration 30m)", {
      exitCode: ExitCode.USAGE,
    });
  }
  return choice;
}

/** Does the IdP verify approval proofs (its discovery document says so)? Older IdPs take none. */
export function verifiesProofs(endpoints: IdpEndpoints): boolean {
  const v = endpoints.document[APPROVAL_PROOFS_FIELD];
  return Array.isArray(v) && v.includes("ed25519");
}

/**
 * Signs the approval of `grant` as `choice` with the session's key. A session without a key (a
 * browser login) cannot: its approvals are made in the browser with the passkey.
 */
export async function ed25519ApprovalProof(
  ctx: Context,
  session: Session,
  endpoints: IdpEndpoints,
  grant: Grant,
  choice: ApprovalChoice,
): Promise<Ed25519ApprovalProof> {
  if (!session.keyPath) {
    throw new CliError(`${session.email} logged in without a key, so apes cannot sign this approval`, {
      exitCode: ExitCode.NOPERM,
      hint: `approve it in the browser at ${endpoints.idp} with your passkey, or log in with a registered key: \`apes login ${session.email} --key PATH\``,
    });
  }
  // The issuer signed is the URL apes connected to (as for a login): an IdP naming another issuer
  // could otherwise get a signature that approves at that other IdP.
  let issuer: string | undefined;
  try {
    issuer = normalizeIdpUrl(endpoints.issuer);
  } catch {
    issuer = undefined;
  }
  if (issuer !== endpoints.idp) {
    throw new CliError(
      `the IdP at ${endpoints.idp} names another issuer in its discovery document (${visible(endpoints.issuer, { max: 200 })}); refusing to sign an approval for it`,
      { exitCode: ExitCode.UNAVAILABLE },
    );
  }
  const approver = canonicalIdentity(session.email);
  if (approver === undefined) {
    throw new CliError(`the session's identity ${visible(session.email, { max: 254 })} is not valid`, {
      exitCode: ExitCode.CONFIG,
    });
  }
  const loaded = await loadPrivateKey(ctx, session.keyPath, { email: session.email });
  if (session.keyFingerprint && loaded.fingerprint !== session.keyFingerprint) {
    throw new CliError(
      `the key at ${session.keyPath} is not the one this session was created with (${loaded.fingerprint}, expected ${session.keyFingerprint})`,
      {
        exitCode: ExitCode.CONFIG,
        hint: `log in with the key registered for you: \`apes login ${session.email} --key PATH\``,
      },
    );
  }
  let signed: Buffer;
  try {
    const digest = approvalDigestHex({
      issuer: endpoints.idp,
      grantId: grant.id,
      type: grant.type,
      request: grant.request as unknown as Record<string, unknown>,
      decision: "approve",
      grantType: choice.grantType,
      duration: choice.duration,
    });
    signed = approvalSigningInput(endpoints.idp, approver, digest);
  } catch (e) {
    if (e instanceof CanonicalJsonError || e instanceof SignatureInputError) {
      throw new CliError(`cannot sign this approval: ${e.message}`, { exitCode: ExitCode.UNAVAILABLE });
    }
    throw e;
  }
  return {
    type: "ed25519",
    key_fingerprint: loaded.fingerprint,
    signature: sign(null, signed, loaded.key).toString("base64"),
  };
}

/**
 * Approves grant `id` the one way the CLI does (`apes grants approve`, `apes grants watch -i`):
 * fetch the grant, sign its approval as `options` choose, send both. An IdP that verifies no
 * proofs (older) gets the bare approval, with a warning on stderr.
 */
export async function approveSigned(
  ctx: Context,
  client: GrantsClient,
  id: string,
  options: { grant_type?: GrantType | undefined; duration?: number | undefined } = {},
): Promise<Grant> {
  const json = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  if (!verifiesProofs(client.endpoints)) {
    ctx.io.stderr.write(
      `apes: warning: the IdP at ${client.endpoints.idp} verifies no approval proofs; approving with the session token alone\n`,
    );
    return client.approve(id, json);
  }
  // The proof covers the grant as fetched here: the IdP refuses it if what it stores differs.
  const grant = await client.get(id);
  const choice = approvalChoice(grant, options);
  const proof = await ed25519ApprovalProof(ctx, client.session, client.endpoints, grant, choice);
  return client.approve(id, { ...json, proof: { ...proof } });
}
