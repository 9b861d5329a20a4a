import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  type ApprovalSettings,
  approvalBinding,
  approvalProofTypes,
  checkApprovalProof,
  passkeyVerifier,
} from "../../idp/approval.ts";
import type { Idp, Principal } from "../../idp/context.ts";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import type { Store, UserRecord } from "../../idp/store/types.ts";
import { type WebContext, webContext } from "../../idp/web/context.ts";
import { startAssertion } from "../../idp/web/passkeys.ts";
import { approvalDigest, approvalDigestHex, approvalSigningInput } from "../../protocol/approval.ts";
import { formatSshPublicKey } from "../../protocol/keys.ts";
import { ProblemError } from "../../protocol/problem.ts";
import type { Grant } from "../../protocol/types.ts";
import { jsonLogger } from "../../server/log.ts";
import { type SoftPasskey, softPasskey } from "../helpers/soft-passkey.ts";

// The proof dispatch of idp/approval.ts with an injected passkey verifier (the browser's assertion
// check of the IdP's passkey code plugs in there): which binding it is given, and what each outcome does.
// The Ed25519 path against the real server: test/integration/approval-proof.test.ts.

const ISSUER = "https://id.example.com";
const key = generateKeyPairSync("ed25519");
const grant: Grant = {
  id: "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d",
  type: "command",
  status: "pending",
  created_at: 1,
  request: {
    requester: "bot@example.com",
    target_host: "web1",
    audience: "escapes",
    grant_type: "once",
    command: ["id"],
  },
};
const once = { grantType: "once" as const, duration: undefined };

function principal(extra: Partial<Principal["actor"]> = {}, user: Partial<UserRecord> = {}): Principal {
  const u: UserRecord = {
    email: "alice@example.com",
    kind: "human",
    approvers: [],
    admin: false,
    disabled: false,
    publicKey: formatSshPublicKey(key.publicKey, "alice"),
    createdAt: 1,
    ...user,
  };
  return {
    sub: u.email,
    user: u,
    actor: { sub: u.email, kind: u.kind, admin: false, delegated: false, ...extra },
    tokenExp: 2,
  };
}

function idp() {
  const lines: string[] = [];
  return { base: ISSUER, log: jsonLogger("info", (l) => lines.push(l)), lines };
}

const ed25519 = (p = principal()) => ({
  type: "ed25519",
  signature: sign(
    null,
    approvalSigningInput(
      ISSUER,
      p.sub,
      approvalDigestHex({
        issuer: ISSUER,
        grantId: grant.id,
        type: grant.type,
        request: { ...grant.request },
        decision: "approve",
        ...once,
      }),
    ),
    key.privateKey,
  ).toString("base64"),
});

async function problemOf(p: Promise<unknown>): Promise<ProblemError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ProblemError) return e;
    throw e;
  }
  throw new Error("no problem thrown");
}

describe("checkApprovalProof", () => {
  const strict: ApprovalSettings = { allowBearer: false };

  it("an Ed25519 proof of the approver's key over the stored grant: ed25519", async () => {
    expect(await checkApprovalProof(idp(), strict, principal(), grant, once, ed25519())).toBe("ed25519");
  });

  it("no proof: proof_required, unless bearer approvals are allowed (then logged)", async () => {
    const e = await problemOf(checkApprovalProof(idp(), strict, principal(), grant, once, undefined));
    expect(e.code).toBe("proof_required");
    expect(e.status).toBe(403);
    expect(e.message).toMatch(/^approval needs a proof/);
    const i = idp();
    expect(await checkApprovalProof(i, { allowBearer: true }, principal(), grant, once, undefined)).toBe(
      "bearer",
    );
    expect(JSON.parse(i.lines[0]!)).toMatchObject({
      level: "warn",
      grant: grant.id,
      by: "alice@example.com",
    });
  });

  it("agents and delegated tokens never approve, whatever the proof and settings", async () => {
    for (const actor of [{ delegated: true }, { kind: "agent" as const }]) {
      for (const proof of [ed25519(), undefined]) {
        const e = await problemOf(
          checkApprovalProof(idp(), { allowBearer: true }, principal(actor), grant, once, proof),
        );
        expect(e.code).toBe("forbidden");
      }
    }
  });

  it("after the approver's key changed, a proof of the old key is refused and one of the new key accepted", async () => {
    // The registered key is parsed once per stored line: a proof must be checked against the key stored now.
    expect(await checkApprovalProof(idp(), strict, principal(), grant, once, ed25519())).toBe("ed25519");
    const next = generateKeyPairSync("ed25519");
    const rotated = principal({}, { publicKey: formatSshPublicKey(next.publicKey, "alice") });
    const old = await problemOf(checkApprovalProof(idp(), strict, rotated, grant, once, ed25519(rotated)));
    expect(old.code).toBe("invalid_proof");
    const fresh = {
      ...ed25519(rotated),
      signature: sign(
        null,
        approvalSigningInput(ISSUER, rotated.sub, approvalBinding(ISSUER, grant, once).toString("hex")),
        next.privateKey,
      ).toString("base64"),
    };
    expect(await checkApprovalProof(idp(), strict, rotated, grant, once, fresh)).toBe("ed25519");
    // And back: the first key's line is still cached, and is again the registered one.
    expect(await checkApprovalProof(idp(), strict, principal(), grant, once, ed25519())).toBe("ed25519");
  });

  it("a human without a registered key is pointed at the passkey", async () => {
    const p = principal({}, { publicKey: undefined });
    const e = await problemOf(checkApprovalProof(idp(), strict, p, grant, once, ed25519()));
    expect(e.code).toBe("invalid_proof");
    expect(e.message).toContain("passkey");
  });

  it("webauthn without passkey support: refused with a clear reason", async () => {
    const e = await problemOf(
      checkApprovalProof(idp(), strict, principal(), grant, once, {
        type: "webauthn",
        response: { id: "x" },
      }),
    );
    expect(e.code).toBe("invalid_proof");
    expect(e.message).toContain("webauthn proofs need a passkey");
    expect(approvalProofTypes(strict)).toEqual(["ed25519"]);
  });

  it("webauthn: the verifier gets the principal, the response and the digest of the stored grant and choice", async () => {
    const seen: { p: Principal; response: unknown; binding: Buffer }[] = [];
    const settings: ApprovalSettings = {
      allowBearer: false,
      verifyPasskey: async (p, response, binding) => {
        seen.push({ p, response, binding });
        return response.ok === true;
      },
    };
    expect(approvalProofTypes(settings)).toEqual(["ed25519", "webauthn"]);
    const timed = { grantType: "timed" as const, duration: 600 };
    const p = principal();
    expect(
      await checkApprovalProof(idp(), settings, p, grant, timed, {
        type: "webauthn",
        response: { ok: true },
      }),
    ).toBe("webauthn");
    expect(seen[0]!.p).toBe(p);
    expect(seen[0]!.binding).toEqual(
      approvalDigest({
        issuer: ISSUER,
        grantId: grant.id,
        type: "command",
        request: { ...grant.request },
        decision: "approve",
        ...timed,
      }),
    );
    const e = await problemOf(
      checkApprovalProof(idp(), settings, p, grant, timed, { type: "webauthn", response: { ok: false } }),
    );
    expect(e.code).toBe("invalid_proof");
  });
});

describe("webauthn proofs through the IdP's passkey check (idp/web/passkeys.ts, soft authenticator)", () => {
  let store: Store;
  let web: WebContext;
  let settings: ApprovalSettings;
  let alice: SoftPasskey;
  const quiet = { base: ISSUER, log: jsonLogger("error", () => undefined) };
  beforeEach(async () => {
    store = openSqliteStore(join(mkdtempSync(join(tmpdir(), "apes-approval-passkey-")), "d"));
    const idp = { store, issuer: ISSUER, now: () => 1_000_000, log: quiet.log } as unknown as Idp;
    web = webContext(idp, randomBytes(32));
    const verifyPasskey = passkeyVerifier(web);
    expect(verifyPasskey).toBeDefined();
    settings = { allowBearer: false, ...(verifyPasskey ? { verifyPasskey } : {}) };
    for (const email of ["alice@example.com", "bob@example.com"]) {
      await store.addUser({ email, kind: "human", createdAt: 1 });
    }
    alice = softPasskey({ origin: ISSUER, rpId: "id.example.com" });
    await store.addPasskey(alice.record("alice@example.com"));
  });
  afterEach(async () => {
    await store.close();
  });

  /** An assertion by alice's passkey on options whose challenge commits to `binding`. */
  const assertion = async (binding: Uint8Array, email = "alice@example.com") =>
    alice.assert(await startAssertion(web, { binding, email }));
  const proofCheck = (response: Record<string, unknown>, p = principal(), choice = once) =>
    checkApprovalProof(quiet, settings, p, grant, choice, { type: "webauthn", response });

  it("discovery advertises webauthn when the passkey pages are on", () => {
    expect(approvalProofTypes(settings)).toEqual(["ed25519", "webauthn"]);
  });

  it("an assertion bound to this grant's approval digest approves, once", async () => {
    const response = await assertion(approvalBinding(ISSUER, grant, once));
    expect(await proofCheck(response)).toBe("webauthn");
    // Single use: the same assertion again is no proof.
    expect((await problemOf(proofCheck(response))).code).toBe("invalid_proof");
  });

  it("an assertion made for anything else is no proof", async () => {
    const other = { ...grant, id: "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4e" };
    const tampered = { ...grant, request: { ...grant.request, command: ["id", "-u"] } };
    const timed = { grantType: "timed" as const, duration: 600 };
    const cases: [string, Uint8Array, Principal?][] = [
      ["a login (no binding)", new Uint8Array(0)],
      ["another grant", approvalBinding(ISSUER, other, once)],
      ["another request", approvalBinding(ISSUER, tampered, once)],
      ["another approval (timed)", approvalBinding(ISSUER, grant, timed)],
      ["another IdP", approvalBinding("https://id.example.org", grant, once)],
      [
        "another approver's session",
        approvalBinding(ISSUER, grant, once),
        principal({ sub: "bob@example.com" }, { email: "bob@example.com" }),
      ],
    ];
    for (const [name, binding, p] of cases) {
      const e = await problemOf(proofCheck(await assertion(binding), p));
      expect(e.code, name).toBe("invalid_proof");
    }
  });
});
