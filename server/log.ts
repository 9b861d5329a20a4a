/**
 * Structured logs: one JSON object per line on stderr. Callers pass only non-secret fields; tokens,
 * signatures, challenges and keys are never logged.
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
  /** Logged at any level: lifecycle lines tools depend on (listening, stopped). */
  always(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
  enabled(level: LogLevel): boolean;
}

export function isLogLevel(v: string): v is LogLevel {
  return v in ORDER;
}

/** `base`: fields on every line (a worker's number, server/cluster.ts). */
export function jsonLogger(
  level: LogLevel,
  write: (line: string) => void = (l) => process.stderr.write(l),
  base?: Record<string, unknown>,
): Logger {
  const min = ORDER[level];
  const emit = (l: LogLevel, msg: string, fields?: Record<string, unknown>) =>
    write(`${JSON.stringify({ time: new Date().toISOString(), level: l, msg, ...base, ...fields })}\n`);
  return {
    enabled: (l) => ORDER[l] >= min,
    log(l, msg, fields) {
      if (ORDER[l] >= min) emit(l, msg, fields);
    },
    always: emit,
  };
}
