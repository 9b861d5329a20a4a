import { closeSync, fsyncSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";

/**
 * The troop's audit log: one JSON object per line in `audit.log` in the data dir (0600), appended
 * synchronously, for every intent and frame with its actor chain: `by` (who asked or reported),
 * `via` (the delegate that acted for `by`), `nest` (which nest), and what happened. Never a token,
 * never a secret (intents carry secret names only), never free text a nest sent (only its length).
 */

export const AUDIT_FILE = "audit.log";

export type AuditEvent =
  | "socket.open"
  | "socket.refused"
  | "socket.closed"
  | "socket.reauth"
  | "intent.submitted"
  | "intent.replayed"
  | "intent.refused"
  | "intent.delivered"
  | "frame"
  | "frame.refused";

export interface AuditLog {
  write(event: AuditEvent, fields: Record<string, unknown>): void;
  close(): void;
}

export function openAudit(dataDir: string, now: () => number): AuditLog {
  const fd = openSync(join(dataDir, AUDIT_FILE), "a", 0o600);
  let open = true;
  return {
    write(event, fields) {
      if (!open) return;
      // time and event first, and never overwritten by a field of the same name.
      writeSync(fd, `${JSON.stringify(Object.assign({ time: now(), event }, fields, { event }))}\n`);
    },
    close() {
      if (!open) return;
      open = false;
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    },
  };
}
