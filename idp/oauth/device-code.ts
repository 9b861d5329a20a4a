import { randomInt } from "node:crypto";

/**
 * The pure parts of the device authorization grant (RFC 8628): user codes and the polling rule.
 *
 * User codes are 8 letters from 20 consonants (RFC 8628 section 6.1's example alphabet: no vowels,
 * so no words; no digits, so no 0/O or 1/I confusion), shown as `BCDF-GHJK`: 20^8 (about 2^34.6)
 * values, against the rate-limited guesses an attacker gets within a code's 10 minutes. What a
 * person types is normalised (case, dashes, spaces) before it is compared.
 */

export const USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ";
export const USER_CODE_LENGTH = 8;
/** Seconds a device code lives. */
export const DEVICE_CODE_TTL = 600;
/** Seconds a client waits between polls at first; every slow_down adds SLOW_DOWN_STEP. */
export const DEVICE_POLL_INTERVAL = 5;
export const SLOW_DOWN_STEP = 5;

export function newUserCode(random: (max: number) => number = randomInt): string {
  let code = "";
  for (let i = 0; i < USER_CODE_LENGTH; i++) code += USER_CODE_ALPHABET[random(USER_CODE_ALPHABET.length)];
  return code;
}

/** `BCDFGHJK` as a person reads it: `BCDF-GHJK`. */
export function formatUserCode(code: string): string {
  return `${code.slice(0, 4)}-${code.slice(4)}`;
}

/** What a person typed, as stored (upper case, no separators), or undefined when it cannot be a code. */
export function normalizeUserCode(typed: unknown): string | undefined {
  if (typeof typed !== "string" || typed.length > 32) return undefined;
  const code = typed.toUpperCase().replace(/[\s-]/g, "");
  if (code.length !== USER_CODE_LENGTH) return undefined;
  for (const c of code) if (!USER_CODE_ALPHABET.includes(c)) return undefined;
  return code;
}

export type DeviceStatus = "pending" | "approved" | "denied" | "used";

export interface DevicePollState {
  status: DeviceStatus;
  expiresAt: number;
  interval: number;
  lastPollAt?: number;
}

export type PollOutcome =
  | { kind: "expired_token" }
  | { kind: "access_denied" }
  | { kind: "slow_down"; interval: number }
  | { kind: "authorization_pending" }
  | { kind: "approved" };

/**
 * What a poll at `now` gets (RFC 8628 section 3.5). Expiry first, then the decision; while still
 * pending, a poll sooner than the current interval after the last one gets slow_down, and the
 * interval grows for good. A spent code
 * ("used") is answered like an expired one: it can never yield a second set of tokens.
 */
export function pollOutcome(s: DevicePollState, now: number): PollOutcome {
  if (now >= s.expiresAt || s.status === "used") return { kind: "expired_token" };
  if (s.status === "denied") return { kind: "access_denied" };
  // Tokens as soon as they are there, however fast the poll: only waiting is throttled.
  if (s.status === "approved") return { kind: "approved" };
  if (s.lastPollAt !== undefined && now - s.lastPollAt < s.interval) {
    return { kind: "slow_down", interval: s.interval + SLOW_DOWN_STEP };
  }
  return { kind: "authorization_pending" };
}
