import { lstatSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";

/**
 * Where the installed pieces live. The shim has these paths compiled in (Makefile PREFIX, SYSCONFDIR,
 * LOCALSTATEDIR); the executable learns them from `paths.json`, which `make install` writes next to
 * it ($(PREFIX)/libexec/apes/paths.json, root-owned, not group/world-writable). Never from argv or
 * the environment: a caller must not be able to point `sudo apes trust` at another file. Without a
 * trustworthy paths.json (dist/apes run from the tree) the defaults apply.
 */
export interface InstalledPaths {
  prefix: string;
  sysconfdir: string;
  localstatedir: string;
  /** $(SYSCONFDIR)/apes/config.toml: the policy. */
  configFile: string;
  /** $(LOCALSTATEDIR)/log/apes/audit.log: the shim's audit log. */
  auditLog: string;
  /** $(LOCALSTATEDIR)/cache/apes: the verifier's JWKS cache. */
  cacheDir: string;
  /** The paths.json that was used, or "defaults". */
  source: string;
}

export const DEFAULT_PATHS = { prefix: "/usr/local", sysconfdir: "/etc", localstatedir: "/var" } as const;

export function pathsFrom(
  base: { prefix: string; sysconfdir: string; localstatedir: string },
  source: string,
): InstalledPaths {
  return {
    ...base,
    configFile: join(base.sysconfdir, "apes", "config.toml"),
    auditLog: join(base.localstatedir, "log", "apes", "audit.log"),
    cacheDir: join(base.localstatedir, "cache", "apes"),
    source,
  };
}

/** `trustedUid`: who must own paths.json (root; the tests pass their own uid to reach this path). */
export function installedPaths(execPath: string = process.execPath, trustedUid = 0): InstalledPaths {
  const file = join(dirname(execPath), "paths.json");
  try {
    const st = lstatSync(file);
    if (!st.isFile() || st.uid !== trustedUid || (st.mode & 0o022) !== 0)
      return pathsFrom(DEFAULT_PATHS, "defaults");
    const v = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
    const abs = (x: unknown) => typeof x === "string" && x.startsWith("/") && !x.includes("\0");
    if (!abs(v.prefix) || !abs(v.sysconfdir) || !abs(v.localstatedir))
      return pathsFrom(DEFAULT_PATHS, "defaults");
    return pathsFrom(
      {
        prefix: v.prefix as string,
        sysconfdir: v.sysconfdir as string,
        localstatedir: v.localstatedir as string,
      },
      file,
    );
  } catch {
    return pathsFrom(DEFAULT_PATHS, "defaults");
  }
}
