import { visible } from "../protocol/display.ts";
import type { ClientContext } from "./context.ts";
import { endpointRefusal, requireEndpoint } from "./discovery.ts";
import { ClientError } from "./errors.ts";
import { request } from "./http.ts";
import {
  CLI_CLIENT_ID,
  oauthEndpoints,
  oauthFailure,
  sessionFrom,
  tokenRequest,
  verifyIdToken,
} from "./oauth.ts";
import type { StoredSession } from "./session-store.ts";

const DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";

interface DeviceAnswer {
  device_code?: unknown;
  user_code?: unknown;
  verification_uri?: unknown;
  expires_in?: unknown;
  interval?: unknown;
}

/** What the person must do on another device (already visible() and bounded). */
export interface DeviceInstructions {
  verificationUri: string;
  userCode: string;
  expiresIn: number;
}

/**
 * A human's login with a device code (RFC 8628), for a machine without a browser: the IdP gives a
 * code to type at its /device page on any other device (`show` tells the person); this polls at
 * the IdP's interval, five seconds more after every slow_down, until approved, denied or expired.
 */
export async function deviceLogin(
  ctx: ClientContext,
  idp: string,
  email: string,
  options: { show: (i: DeviceInstructions) => void },
): Promise<StoredSession> {
  const e = await oauthEndpoints(ctx, idp);
  const url = requireEndpoint(e, e.deviceAuthorizationEndpoint, "device_authorization_endpoint");
  const d = (await request<DeviceAnswer>(ctx, { url, form: { client_id: CLI_CLIENT_ID } })).body ?? {};
  if (
    typeof d.device_code !== "string" ||
    typeof d.user_code !== "string" ||
    typeof d.verification_uri !== "string"
  ) {
    throw new ClientError("unexpected_answer", "the IdP's device authorization answer is incomplete", {});
  }
  const where = endpointRefusal(e.idp, d.verification_uri);
  if (where) {
    throw new ClientError(
      "endpoint_refused",
      `the IdP's verification_uri ${visible(d.verification_uri, { max: 200 })} ${where}: refused`,
      { idp: e.idp, field: "verification_uri", why: where },
    );
  }
  const bounded = (v: unknown, dflt: number, max: number) =>
    typeof v === "number" && Number.isInteger(v) && v > 0 ? Math.min(v, max) : dflt;
  let interval = bounded(d.interval, 5, 60);
  const expiresIn = bounded(d.expires_in, 600, 3600);
  const deadline = ctx.clock.now() + expiresIn * 1000;
  options.show({
    verificationUri: visible(d.verification_uri, { max: 200 }),
    userCode: visible(d.user_code, { max: 32 }),
    expiresIn,
  });
  for (;;) {
    await ctx.clock.sleep(interval * 1000);
    if (ctx.clock.now() > deadline) break;
    const a = await tokenRequest(ctx, e, {
      grant_type: DEVICE_CODE_GRANT,
      device_code: d.device_code,
      client_id: CLI_CLIENT_ID,
    });
    if (a.error === "authorization_pending") continue;
    if (a.error === "slow_down") {
      interval += 5;
      ctx.debug(`login: slow_down, polling every ${interval} s`);
      continue;
    }
    if (a.error === "access_denied") {
      throw new ClientError("login_denied", `the login of ${visible(email)} was denied (access_denied)`, {
        email,
      });
    }
    if (a.error === "expired_token") break;
    if (a.error !== undefined) throw oauthFailure("the IdP refused the device login", "device", a);
    await verifyIdToken(ctx, e, a.id_token, { email });
    return sessionFrom(ctx, e, email, a, "device");
  }
  throw new ClientError("login_timed_out", "the device code expired before the login was approved", {
    email,
    flow: "device",
  });
}
