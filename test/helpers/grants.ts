import { expect } from "vitest";
import type { GrantQuery, Store } from "../../idp/store/types.ts";
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

/** A grant row as an older schema stored it, for the upgrade tests of both stores. */
export interface StoredGrantRow {
  id: string;
  type: "command" | "delegation";
  requester: string;
  status: Grant["status"];
  request: string;
  delegator: string | null;
  delegate: string | null;
  createdAt: number;
}

/** 24 grants of 3 requesters, 4 statuses and both types, oldest first. */
export function upgradeRows(): StoredGrantRow[] {
  const statuses = ["pending", "approved", "used", "denied"] as const;
  return Array.from({ length: 24 }, (_, i) => {
    const requester = `r${i % 3}@x`;
    const type = i % 5 === 0 ? "delegation" : "command";
    return {
      id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
      type,
      requester,
      status: statuses[i % 4]!,
      request: JSON.stringify({
        requester,
        target_host: "h",
        audience: "escapes",
        grant_type: "once",
        command: ["ls"],
      }),
      delegator: type === "delegation" ? requester : null,
      delegate: type === "delegation" ? "bot@x" : null,
      createdAt: i,
    };
  });
}

/** The listings an index change could break, each as the rows say: by status, by type, by both. */
export async function expectListingsOf(store: Store, rows: readonly StoredGrantRow[]): Promise<void> {
  const newest = [...rows].reverse();
  const ids = async (q: GrantQuery) => (await store.queryGrants(q)).items.map((i) => i.grant.id);
  expect(await ids({ status: "pending", limit: 100 })).toEqual(
    newest.filter((x) => x.status === "pending").map((x) => x.id),
  );
  expect(await ids({ type: "delegation", limit: 100 })).toEqual(
    newest.filter((x) => x.type === "delegation").map((x) => x.id),
  );
  expect(await ids({ status: "used", type: "command", limit: 2 })).toEqual(
    newest
      .filter((x) => x.status === "used" && x.type === "command")
      .slice(0, 2)
      .map((x) => x.id),
  );
}
