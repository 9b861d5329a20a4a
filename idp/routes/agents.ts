import { fingerprint, KeyFormatError, parseSshPublicKey } from "../../protocol/keys.ts";
import { ProblemError } from "../../protocol/problem.ts";
import type { Idp, Principal } from "../context.ts";
import { AGENT_NAME, agentEmail, identityField } from "../grants.ts";
import { jsonBody, onlyFields, type Router } from "../http.ts";
import type { UserRecord } from "../store/types.ts";
import { PATHS } from "./discovery.ts";

/** The public view of a user (never the key itself beyond its public line). */
export function userView(u: UserRecord): Record<string, unknown> {
  return {
    email: u.email,
    kind: u.kind,
    act: u.kind,
    ...(u.name ? { name: u.name } : {}),
    ...(u.owner ? { owner: u.owner } : {}),
    approvers: u.approvers,
    admin: u.admin,
    disabled: u.disabled,
    ...(u.publicKey ? { public_key: u.publicKey, fingerprint: u.fingerprint } : {}),
    created_at: u.createdAt,
  };
}

export function registerAgentRoutes(router: Router<Principal>, idp: Idp): void {
  router.add("GET", PATHS.me, true, (_call, p) => ({ status: 200, body: userView(p.user) }));

  // A human enrolls an agent it will own: `{name, public_key}` -> 201 with `<name>+agent@<owner domain>`.
  router.add("POST", PATHS.agents, true, async (call, p) => {
    if (p.actor.kind !== "human") throw new ProblemError("forbidden", "only humans enroll agents");
    // A delegated token enrolls for its delegator only when the delegate is an agent the delegator
    // owns (a Nest enrolling the agents its owner asked for): the audit line names both.
    if (p.actingParty !== undefined) {
      const delegate = await idp.store.getUser(p.actingParty);
      if (delegate?.kind !== "agent" || delegate.owner !== p.sub || delegate.disabled)
        throw new ProblemError(
          "forbidden",
          "a delegated token enrolls agents only when its delegate is an agent the delegator owns",
        );
    }
    const body = await jsonBody(call);
    onlyFields(body, ["name", "public_key"]);
    if (typeof body.name !== "string" || !AGENT_NAME.test(body.name)) {
      throw new ProblemError("invalid_request", "name must be 1-40 lowercase letters, digits or dashes");
    }
    if (typeof body.public_key !== "string" || body.public_key.length > 1024) {
      throw new ProblemError("invalid_request", "public_key must be an ssh-ed25519 public key line");
    }
    let key: ReturnType<typeof parseSshPublicKey>;
    try {
      key = parseSshPublicKey(body.public_key);
    } catch (e) {
      if (e instanceof KeyFormatError) throw new ProblemError("invalid_request", `public_key: ${e.message}`);
      throw e;
    }
    const email = identityField("the agent's email", agentEmail(body.name, p.sub));
    if (await idp.store.getUser(email)) throw new ProblemError("conflict", `${email} already exists`);
    await idp.store.addUser({
      email,
      kind: "agent",
      owner: p.sub,
      name: body.name,
      publicKey: body.public_key.trim(),
      fingerprint: fingerprint(key.key),
      createdAt: idp.now(),
    });
    idp.log.log("info", "agent enrolled", {
      rid: call.rid,
      sub: p.sub,
      agent: email,
      ...(p.actingParty !== undefined ? { acting_party: p.actingParty } : {}),
    });
    return { status: 201, body: userView((await idp.store.getUser(email))!) };
  });

  router.add("GET", PATHS.agents, true, async (_call, p) => {
    const users = await Promise.all((await idp.store.subordinatesOf(p.sub)).map((e) => idp.store.getUser(e)));
    const mine = users.filter(
      (u): u is UserRecord => u !== undefined && u.kind === "agent" && u.owner === p.sub,
    );
    return { status: 200, body: { data: mine.map(userView) } };
  });
}
