import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerClientsAdd } from "./clients-add.ts";
import { register as registerClientsList } from "./clients-list.ts";
import { register as registerClientsRemove } from "./clients-remove.ts";
import { register as registerKeysRotate } from "./keys-rotate.ts";
import { register as registerNotificationsList } from "./notifications-list.ts";
import { register as registerNotificationsRetry } from "./notifications-retry.ts";
import { register as registerServe } from "./serve.ts";
import { register as registerUsersAdd } from "./users-add.ts";
import { register as registerUsersDisable } from "./users-disable.ts";
import { register as registerUsersInvite } from "./users-invite.ts";
import { register as registerUsersList } from "./users-list.ts";

/** `apes idp ...`: the reference identity provider and its offline admin commands. */
export function registerIdpCommands(program: Command, getContext: GetContext): void {
  const idp = program
    .command("idp")
    .description("run and administer the reference identity provider")
    .helpCommand(false)
    .addHelpText(
      "after",
      `
Examples:
  $ apes idp serve --listen 127.0.0.1:8080
  $ apes idp users add alice@example.com --human --key ~/.ssh/id_ed25519.pub --admin
  $ apes idp users add bot@example.com --agent --owner alice@example.com --key bot.pub
  $ apes idp keys rotate`,
    );
  registerServe(idp, getContext);
  const users = idp
    .command("users")
    .description("add, list, disable and invite users (offline, on the data dir)")
    .helpCommand(false)
    .addHelpText(
      "after",
      `
Examples:
  $ apes idp users add alice@example.com --human --key ~/.ssh/id_ed25519.pub --admin
  $ apes idp users list --json
  $ apes idp users disable bot@example.com
  $ apes idp users invite alice@example.com`,
    );
  registerUsersAdd(users, getContext);
  registerUsersList(users, getContext);
  registerUsersDisable(users, getContext);
  registerUsersInvite(users, getContext);
  const keys = idp
    .command("keys")
    .description("manage the IdP's signing keys")
    .helpCommand(false)
    .addHelpText("after", "\nExamples:\n  $ apes idp keys rotate --data /var/lib/apes-idp");
  registerKeysRotate(keys, getContext);
  const clients = idp
    .command("clients")
    .description("register, list and remove OAuth clients (offline, on the data dir)")
    .helpCommand(false)
    .addHelpText(
      "after",
      `
Examples:
  $ apes idp clients add troop --redirect-uri https://troop.example.com/auth/callback
  $ apes idp clients list --json
  $ apes idp clients remove troop`,
    );
  registerClientsAdd(clients, getContext);
  registerClientsList(clients, getContext);
  registerClientsRemove(clients, getContext);
  const notifications = idp
    .command("notifications")
    .description("the notification outbox: deliveries and the dead-letter queue (offline, on the data dir)")
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes idp notifications list --dead\n  $ apes idp notifications retry --all-dead",
    );
  registerNotificationsList(notifications, getContext);
  registerNotificationsRetry(notifications, getContext);
}
