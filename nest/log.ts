/**
 * The nest's log: one JSON object per line on stderr (journald keeps them). No token ever reaches a
 * line: fields named like a credential are dropped, and any string that looks like a JWT (three
 * base64url parts, the first a JSON header) or a Bearer credential is replaced, wherever it hides
 * (an error message from a peer, a nested object). Tests feed it tokens and look for them.
 */
export type LogLevel = "debug" | "info" | "warn" | "error";
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface NestLog {
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
}

const SECRET_KEYS =
  /^(token|access_token|actor_token|subject_token|authorization|secret|password|key|private_key)$/i;
const JWT_LIKE = /eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g;
const BEARER = /\b(Bearer)\s+[^\s"',;]+/gi;

export function redact(value: unknown, depth = 0): unknown {
  if (typeof value === "string") return value.replace(JWT_LIKE, "[jwt]").replace(BEARER, "$1 [redacted]");
  if (depth > 6 || value === null || typeof value !== "object") return value;
  if (value instanceof Error) return redact(value.message, depth + 1);
  if (Array.isArray(value)) return value.slice(0, 64).map((v) => redact(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (SECRET_KEYS.test(k)) out[k] = "[redacted]";
    else out[k] = redact(v, depth + 1);
  }
  return out;
}

export function nestLogger(
  level: LogLevel,
  write: (line: string) => void = (l) => process.stderr.write(l),
  now: () => number = Date.now,
): NestLog {
  const min = ORDER[level];
  return {
    log(l, msg, fields) {
      if (ORDER[l] < min) return;
      const safe = redact({ ...fields }) as Record<string, unknown>;
      write(
        `${JSON.stringify({ time: new Date(now()).toISOString(), level: l, msg: redact(msg), ...safe })}\n`,
      );
    },
  };
}
