import type { ClientContext } from "./context.ts";
import { idpEndpoints } from "./discovery.ts";
import { authed } from "./grants.ts";

/**
 * The IdP's agents API (docs/protocol.md): the agents a human owns, and enrolling one with its public
 * key. The endpoint comes from discovery (`openape_agents_endpoint`, else `{idp}/api/agents`); the
 * answers are the IdP's and are shown only through visible().
 */

export interface AgentRecord {
  email?: string;
  name?: string;
  owner?: string;
  approvers?: string[];
  fingerprint?: string;
  disabled?: boolean;
}

export async function agentsApi(ctx: ClientContext) {
  const auth = await authed(ctx);
  const endpoints = await idpEndpoints(ctx, auth.session().idp);
  return {
    auth,
    endpoints,
    async list(): Promise<AgentRecord[]> {
      const res = await auth.call<{ data?: AgentRecord[] } | AgentRecord[]>({
        url: endpoints.agentsEndpoint,
      });
      return Array.isArray(res.body) ? res.body : (res.body?.data ?? []);
    },
    /** Enrolls an agent owned by the session's identity; `publicKey` is an `ssh-ed25519 AAAA...` line. */
    async add(name: string, publicKey: string): Promise<Record<string, unknown>> {
      const res = await auth.call<Record<string, unknown>>({
        url: endpoints.agentsEndpoint,
        method: "POST",
        json: { name, public_key: publicKey },
      });
      return res.body ?? {};
    },
  };
}
