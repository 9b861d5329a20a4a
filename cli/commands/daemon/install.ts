import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("install")
    .description("as root: write the Nest's hardened systemd unit (never enables or starts it)")
    .addHelpText(
      "after",
      `
Writes $(PREFIX)/lib/systemd/system/apes-nest.service (0644), which runs
\`apes daemon run\` as _apes-nest. Run \`apes daemon init\` first.

Examples:
  $ sudo apes daemon install && sudo systemctl daemon-reload && sudo systemctl enable --now apes-nest
  $ sudo apes --json daemon install | jq -r .unit`,
    )
    .action(async () => {
      await daemonInstall(getContext());
    });
}

export async function daemonInstall(ctx: Context): Promise<void> {
  const [host, { nestUnit }, fs, { join }, { printData }] = await Promise.all([
    import("../../daemon/host.ts"),
    import("../../daemon/unit.ts"),
    import("node:fs"),
    import("node:path"),
    import("../../output.ts"),
  ]);
  host.requireRoot("apes daemon install");
  const layout = host.nestLayout();
  const dir = join(layout.installed.prefix, "lib", "systemd", "system");
  const unit = join(dir, "apes-nest.service");
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const tmp = `${unit}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, nestUnit(layout), { mode: 0o644 });
  fs.chmodSync(tmp, 0o644);
  fs.renameSync(tmp, unit);
  printData(
    ctx,
    { unit },
    () => `installed ${unit}\nstart it with: systemctl daemon-reload && systemctl enable --now apes-nest`,
  );
}
