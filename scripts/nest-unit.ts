// The Nest's systemd unit for an installation's paths, on stdout: `node scripts/nest-unit.ts PREFIX
// SYSCONFDIR LOCALSTATEDIR`. scripts/deb.sh ships it as apes-nest.service; it is the same function
// `apes daemon install` writes the unit with (cli/daemon/unit.ts), so the two never drift.
import { nestLayout } from "../cli/daemon/host.ts";
import { nestUnit } from "../cli/daemon/unit.ts";
import { pathsFrom } from "../cli/elevation/paths.ts";

const [prefix, sysconfdir, localstatedir] = process.argv.slice(2);
if (![prefix, sysconfdir, localstatedir].every((p) => p?.startsWith("/"))) {
  console.error("usage: node scripts/nest-unit.ts PREFIX SYSCONFDIR LOCALSTATEDIR (absolute paths)");
  process.exit(2);
}
process.stdout.write(
  nestUnit(
    nestLayout(
      pathsFrom({ prefix: prefix!, sysconfdir: sysconfdir!, localstatedir: localstatedir! }, "package"),
    ),
  ),
);
