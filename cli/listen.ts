import { usageError } from "./errors.ts";

/** `--listen HOST:PORT` of the servers (`apes idp serve`, `apes troop serve`); port 0 picks a free one. */
export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535)
    throw usageError(
      `invalid --listen "${value}"`,
      "use HOST:PORT, e.g. 127.0.0.1:8080 (port 0 picks a free one)",
    );
  return { host: (m[1] ?? m[2])!, port };
}
