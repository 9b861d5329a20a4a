import { homedir } from "node:os";
import { join } from "node:path";

/** XDG base directories for user files (config, data, state, cache), each with an `apes` subdirectory. */
export interface Paths {
  configDir: string;
  dataDir: string;
  stateDir: string;
  cacheDir: string;
}

export function xdgPaths(env: Readonly<Record<string, string | undefined>>): Paths {
  const home = env.HOME || safeHomedir();
  const base = (name: string, fallback: string) => {
    const v = env[name];
    // The XDG spec says relative paths are invalid and must be ignored.
    return v?.startsWith("/") ? v : join(home, fallback);
  };
  return {
    configDir: join(base("XDG_CONFIG_HOME", ".config"), "apes"),
    dataDir: join(base("XDG_DATA_HOME", ".local/share"), "apes"),
    stateDir: join(base("XDG_STATE_HOME", ".local/state"), "apes"),
    cacheDir: join(base("XDG_CACHE_HOME", ".cache"), "apes"),
  };
}

function safeHomedir(): string {
  try {
    return homedir();
  } catch {
    return "/";
  }
}
