import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { api, newKey, startWorld, USERS, type World } from "../helpers/idp.ts";

/**
 * A Nest enrolls the agents its owner asked for with a delegated token (sub = the owner, act.sub =
 * the Nest, itself an agent the owner owns), never with the owner's own token. The IdP allows that
 * only when the delegate is an agent of the delegator: a delegation to someone else's agent, or from
 * someone who does not own the delegate, enrolls nothing. (bot is alice's agent in the test world.)
 */

const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt";

describe("delegated agent enrollment (the Nest for its owner)", () => {
  let w: World;
  beforeAll(async () => {
    w = await startWorld();
  });
  afterAll(async () => {
    await w?.idp.stop();
  });

  async function delegatedToken(delegator: "alice" | "carol", audience = "apes-cli"): Promise<string> {
    const d = await w
      .as(delegator)
      .post(w.delegations, { delegate: USERS.bot, audience, grant_type: "always" });
    expect(d.status, JSON.stringify(d.body)).toBe(201);
    const body = new URLSearchParams({
      grant_type: EXCHANGE,
      actor_token: w.tokens.bot,
      actor_token_type: JWT_TYPE,
      delegation_grant_id: d.body.id,
      audience,
    }).toString();
    const r = await api(w.idp.url).post(w.discovery.token_endpoint!, body, {
      "content-type": "application/x-www-form-urlencoded",
    });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body.access_token;
  }

  it("the owner's agent, acting for the owner, enrolls a new agent the owner owns", async () => {
    const token = await delegatedToken("alice");
    const k = newKey("worker");
    const r = await api(w.idp.url, token).post(w.discovery.openape_agents_endpoint!, {
      name: "worker1",
      public_key: k.publicLine,
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect(r.body).toMatchObject({ email: "worker1+agent@example.com", owner: USERS.alice, kind: "agent" });
    expect(w.idp.logs()).toMatch(/"msg":"agent enrolled".*"acting_party":"bot@example.com"/);
  });

  it("a delegation from someone who does not own the delegate enrolls nothing", async () => {
    const token = await delegatedToken("carol");
    const r = await api(w.idp.url, token).post(w.discovery.openape_agents_endpoint!, {
      name: "sneaky",
      public_key: newKey().publicLine,
    });
    expect(r.status).toBe(403);
    expect(r.body.detail).toMatch(/agent the delegator owns/);
  });

  it("the agent's own token still cannot enroll agents", async () => {
    const r = await w.as("bot").post(w.discovery.openape_agents_endpoint!, {
      name: "own",
      public_key: newKey().publicLine,
    });
    expect(r.status).toBe(403);
  });
});
