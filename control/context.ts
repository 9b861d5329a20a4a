import { EventEmitter } from "node:events";
import type { Call } from "../server/http.ts";
import type { Logger } from "../server/log.ts";
import type { SpLogin } from "../sp/login.ts";
import type { Actor } from "./actors.ts";
import type { AuditLog } from "./audit.ts";
import type { IdpLink } from "./idp-link.ts";
import type { TroopStore } from "./store/types.ts";

/** Everything the troop's parts share, built once by control/server.ts. */
export interface Troop {
  store: TroopStore;
  link: IdpLink;
  audit: AuditLog;
  log: Logger;
  /** Unix seconds. */
  now(): number;
  /** Seconds between pings on a nest socket; a pong must come before the next one. */
  pingIntervalS: number;
  /** In-process wake-ups: `intent:<nest>` when an intent for that nest is queued. */
  events: EventEmitter;
  shutdown: AbortSignal;
  /**
   * Counts a token not verified before against its client's address (a signature check costs CPU:
   * a flood of made-up tokens is limited like any unauthenticated request); throws 429.
   */
  admitToken(token: string, address: string): void;
  /** Whether the nest holds a live socket now. */
  connected(nest: string): boolean;
  /** Sends queued intents of the nest over its socket, if it has one. */
  push(nest: string): void;
  /** The bearer token's actor (admitToken first); throws the 401/403/503 problem. */
  authenticate(call: Call): Promise<Actor>;
  /** DDISA browser sign-in for the status page (sp/login.ts), when `--web-login` is on. */
  sp?: SpLogin;
}

export function troopEvents(): EventEmitter {
  const e = new EventEmitter();
  e.setMaxListeners(0);
  return e;
}
