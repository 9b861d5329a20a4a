import { visible } from "../../protocol/display.ts";
import type { Context } from "../context.ts";
import { CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { request } from "../http.ts";
import { endpointRefusal, requireEndpoint } from "../idp-client.ts";
import {
  CLI_CLIENT_ID,
  oauthEndpoints,
  oauthFailure,
  sessionFrom,
  tokenRequest,
  verifyIdToken,
} from "./oauth.ts";
import type { StoredSession } from "./store.ts";

const DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";

interface DeviceAnswer {
  device_code?: unknown;
  user_code?: unknown;
  verification_uri?: unknown;
  expires_in?: unknown;
  interval?: unknown;
}

/**
 * `apes login --device <email>` (RFC 8628) for a machine without a browser: the IdP gives a code to
 * type at its /device page on any other device; apes polls at the IdP's interval, five seconds more
 * after every slow_down, until approved, denied or expired.
 */
export async function deviceLogin(ctx: Context, idp: string, email: string): Promise<StoredSession> {
  const e = await oauthEndpoints(ctx, idp);
  const url = requireEndpoint(e, e.deviceAuthorizationEndpoint, "device_authorization_endpoint");
  const d = (await request<DeviceAnswer>(ctx, { url, form: { client_id: CLI_CLIENT_ID } })).body ?? {};
  if (
    typeof d.device_code !== "string" ||
    typeof d.user_code !== "string" ||
    typeof d.verification_uri !== "string"
  ) {
    throw new CliError("the IdP's device authorization answer is incomplete", {
      exitCode: ExitCode.UNAVAILABLE,
    });
  }
  const where = endpointRefusal(e.idp, d.verification_uri);
  if (where) {
    throw new CliError(
      `the IdP's verification_uri ${visible(d.verification_uri, { max: 200 })} ${where}: refused`,
      {
        exitCode: ExitCode.UNAVAILABLE,
      },
    );
  }
  const bounded = (v: unknown, dflt: number, max: number) =>
    typeof v === "number" && Number.isInteger(v) && v > 0 ? Math.min(v, max) : dflt;
  let interval = bounded(d.interval, 5, 60);
  const expiresIn = bounded(d.expires_in, 600, 3600);
  const deadline = ctx.clock.now() + expiresIn * 1000;
  ctx.io.stderr.write(
    `apes: to log in as ${visible(email)}, open ${visible(d.verification_uri, { max: 200 })} on any device\n` +
      `  and enter the code  ${visible(d.user_code, { max: 32 })}  (valid ${Math.round(expiresIn / 60)} min)\n`,
  );
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
    if (a.error === "access_denied") throw oauthFailure("the login was denied", a);
    if (a.error === "expired_token") break;
    if (a.error !== undefined) throw oauthFailure("the IdP refused the device login", a);
    await verifyIdToken(ctx, e, a.id_token, { email });
    return sessionFrom(ctx, e, email, a, "device");
  }
  throw new CliError("the device code expired before the login was approved", {
    exitCode: ExitCode.TEMPFAIL,
    hint: `run \`apes login --device ${email}\` again`,
  });
}
