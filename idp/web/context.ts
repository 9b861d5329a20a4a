import { createHmac } from "node:crypto";
import { isLoopbackHost } from "../../protocol/ddisa.ts";
import { ChallengeSealer } from "../challenges.ts";
import type { Idp } from "../context.ts";

/**
 * What the IdP's pages share, built once by the server from the Idp and the data dir's secret:
 * the WebAuthn relying party (RP ID = the issuer's host, origin = the issuer's origin), the sealer
 * of passkey challenges and the secret of CSRF and same-site tokens (both derived from the secret,
 * each under its own label, so no value made for one purpose is valid for another).
 */
export interface WebContext {
  idp: Idp;
  /** The issuer's origin, as a browser writes it in Origin and clientDataJSON. */
  origin: string;
  /** The WebAuthn RP ID: the issuer's host name. */
  rpId: string;
  rpName: string;
  /** Why passkey pages cannot work with this issuer; undefined: they can. */
  unavailable?: string;
  challenges: ChallengeSealer;
  /** Key of CSRF tokens and the same-site cookie (server/web/csrf.ts). */
  csrfSecret: Buffer;
  /** Browser session lifetime, seconds. */
  sessionTtl: number;
}

export const WEB_SESSION_TTL = 12 * 3600;

const derive = (secret: Buffer, label: string) => createHmac("sha256", secret).update(label).digest();

/**
 * Why the browser pages cannot run under `issuer`: WebAuthn needs a host name (not an IP address)
 * and a secure context (https, or http on localhost, which browsers treat as secure: for
 * development only).
 */
export function webUnavailable(issuer: string): string | undefined {
  const u = new URL(issuer);
  const host = u.hostname.replace(/^\[|\]$/g, "");
  if (/^[0-9.]+$/.test(host) || host.includes(":")) {
    return `the issuer ${u.origin} is an IP address, and passkeys need a host name (use --issuer https://id.example.com, or http://localhost:PORT for development)`;
  }
  if (u.protocol !== "https:" && !(u.protocol === "http:" && isLoopbackHost(host))) {
    return `the issuer ${u.origin} is plain http, and passkeys and secure cookies need https (plain http only on localhost, for development)`;
  }
  return undefined;
}

export function webContext(idp: Idp, secret: Buffer, sessionTtl = WEB_SESSION_TTL): WebContext {
  const u = new URL(idp.issuer);
  const ctx: WebContext = {
    idp,
    origin: u.origin,
    rpId: u.hostname,
    rpName: u.hostname,
    challenges: new ChallengeSealer(derive(secret, "apes-webauthn-challenges-v1")),
    csrfSecret: derive(secret, "apes-web-csrf-v1"),
    sessionTtl,
  };
  const why = webUnavailable(idp.issuer);
  if (why) ctx.unavailable = why;
  return ctx;
}
