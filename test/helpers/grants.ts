import { cmdHash } from "../../protocol/cmd-hash.ts";
import type { Grant } from "../../protocol/types.ts";

/** A schema-shaped pending once-grant for `id -u`; override fields of the grant or its request. */
export function sampleGrant(over: Partial<Grant> = {}, req: Partial<Grant["request"]> = {}): Grant {
  return {
    id: "g-1",
    type: "command",
    status: "pending",
    created_at: 1,
    request: {
      requester: "agent@example.com",
      target_host: "web1",
      audience: "escapes",
      grant_type: "once",
      command: ["id", "-u"],
      cmd_hash: cmdHash(["id", "-u"]),
      run_as: "root",
      ...req,
    },
    ...over,
  };
}
