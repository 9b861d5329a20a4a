import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openTroopStore } from "../../../control/store/sqlite.ts";
import { troopStoreContract } from "./contract.ts";

troopStoreContract("sqlite", async (again) => {
  const dir = again ?? join(mkdtempSync(join(tmpdir(), "apes-troop-store-")), "data");
  return { store: openTroopStore(dir), dir };
});
