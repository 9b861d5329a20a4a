import { visible } from "../protocol/display.ts";
import { normalizeIdentity } from "../protocol/names.ts";
import { usageError } from "./errors.ts";

/**
 * An identity given on the command line, in the form the IdP stores and compares
 * (protocol/names.ts: NFC, lower case, no look-alikes); otherwise a usage error (64) saying why.
 */
export function identityArg(label: string, value: string): string {
  const r = normalizeIdentity(value);
  if (!r.ok) throw usageError(`${label} "${visible(value, { max: 256 })}" ${r.reason}`);
  return r.identity;
}
