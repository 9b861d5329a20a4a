import { visible } from "../../protocol/display.ts";
import { usageError } from "../errors.ts";

const SUB_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A subscription id from argv, checked before anything is sent. */
export function checkSubscriptionId(id: string): string {
  if (!SUB_ID.test(id))
    throw usageError(
      `"${visible(id, { max: 80 })}" is not a subscription id`,
      "`apes notify list` shows them",
    );
  return id;
}
