import { execFile } from "node:child_process";
import { lstat, readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { authFile } from "../../client/session-store.ts";
import type { Context } from "../context.ts";
import { installedPaths } from "../elevation/paths.ts";
import type { DoctorEnv, FileInfo, HttpAnswer, Trust } from "./checks.ts";

/** How long one IdP request may take (the whole doctor run stays short when an IdP hangs). */
const GET_TIMEOUT_MS = 5000;
/** Every HTTP status resolves: the checks judge the answer, not the transport. */
const ANY_STATUS = Array.from({ length: 500 }, (_, i) => i + 100);

/** The real effects behind `apes doctor`. */
export function systemDoctorEnv(ctx: Context): DoctorEnv {
  const pinnedContexts = new Map<string, Promise<Context>>();
  return {
    uid: process.getuid?.() ?? -1,
    paths: installedPaths(),
    nowMs: () => ctx.clock.now(),
    hostname: () => hostname(),
    async lstat(path) {
      try {
        const st = await lstat(path);
        return {
          uid: st.uid,
          gid: st.gid,
          mode: st.mode,
          nlink: st.nlink,
          isFile: st.isFile(),
          isDirectory: st.isDirectory(),
          isSymbolicLink: st.isSymbolicLink(),
          isSocket: st.isSocket(),
        } satisfies FileInfo;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "ENOTDIR") return undefined;
        throw e;
      }
    },
    readFile: (path) => readFile(path, "utf8"),
    // The verifier's rule for ca_file (root-guarded path, no symlinks), not a second copy of it.
    pinnedCa: async (policy) => (await import("../../verifier/verify.ts")).trustAnchor(policy).ca,
    lookupUser: (name) =>
      new Promise((resolve) => {
        execFile("/usr/bin/getent", ["passwd", name], { timeout: 5000 }, (err, out) => {
          const f = String(out).trim().split(":");
          resolve(err || f.length < 4 ? undefined : { uid: Number(f[2]), gid: Number(f[3]) });
        });
      }),
    async get(url: string, trust: Trust): Promise<HttpAnswer> {
      const { request } = await import("../../client/http.ts");
      let through = ctx;
      if (trust !== "user") {
        let pinned = pinnedContexts.get(trust.pinnedCa);
        if (!pinned) {
          pinned = pinnedContext(ctx, trust.pinnedCa);
          pinnedContexts.set(trust.pinnedCa, pinned);
        }
        through = await pinned;
      }
      const res = await request(through, { url, accept: ANY_STATUS, timeoutMs: GET_TIMEOUT_MS });
      return {
        status: res.status,
        body: res.body,
        date: res.headers.get("date") ?? undefined,
        receivedAtMs: ctx.clock.now(),
      };
    },
    authFile: authFile(ctx),
    async session() {
      const { readSession } = await import("../../client/session-store.ts");
      return readSession(ctx);
    },
    async keyFingerprint(path) {
      const { fingerprint, parsePrivateKey } = await import("../../protocol/keys.ts");
      return fingerprint(parsePrivateKey(await readFile(path, "utf8")));
    },
    configuredIdp: async () => (await ctx.config()).idp,
    async ddisa(email) {
      const { resolveForEmail } = await import("../../client/ddisa.ts");
      const r = await resolveForEmail(ctx, email);
      const s = r.selection.selected;
      return { name: r.name, ...(s ? { selected: { idp: s.idp, mode: s.mode ?? "open" } } : {}) };
    },
  };
}

/**
 * The user's context, but trusting ONLY the policy's CA (as the verifier does): the user's own
 * `ca_file` and the system roots play no part.
 */
async function pinnedContext(ctx: Context, pem: string): Promise<Context> {
  const [{ createSecureContext }, { nodeFetch }] = await Promise.all([
    import("node:tls"),
    import("../../client/http.ts"),
  ]);
  const secureContext = createSecureContext({ ca: pem });
  const config = await ctx.config();
  return {
    ...ctx,
    http: ((input: string | URL | Request, init?: RequestInit) =>
      nodeFetch(input, init, { secureContext })) as Context["http"],
    config: async () => ({ ...config, caFile: undefined }),
  };
}
