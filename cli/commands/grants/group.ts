import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerApprove } from "./approve.ts";
import { register as registerDeny } from "./deny.ts";
import { register as registerList } from "./list.ts";
import { register as registerRequest } from "./request.ts";
import { register as registerRevoke } from "./revoke.ts";
import { register as registerShow } from "./show.ts";
import { register as registerToken } from "./token.ts";
import { register as registerVerify } from "./verify.ts";
import { register as registerWait } from "./wait.ts";
import { register as registerWatch } from "./watch.ts";

/** `apes grants ...`: one command per file. */
export function registerGrantsCommands(program: Command, getContext: GetContext): void {
  const group = program
    .command("grants")
    .description("grants: ask for, decide, use and verify approvals of commands and permissions")
    .helpCommand(false)
    .addHelpText(
      "after",
      '\nExamples:\n  $ apes grants request -- systemctl restart nginx\n  $ apes grants request --target prod-server --permission deploy --reason "Deploy hotfix #123"\n  $ apes grants list --inbox\n  $ apes grants approve <id>\n  $ apes grants wait <id> --timeout 10m',
    );
  registerRequest(group, getContext);
  registerList(group, getContext);
  registerShow(group, getContext);
  registerApprove(group, getContext);
  registerDeny(group, getContext);
  registerRevoke(group, getContext);
  registerToken(group, getContext);
  registerWait(group, getContext);
  registerWatch(group, getContext);
  registerVerify(group, getContext);
}
