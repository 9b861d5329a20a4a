import type { IncomingMessage } from "node:http";
import type { Fetch } from "../context.ts";

/**
 * A small fetch over node:http(s) for the requester, which runs once per elevation: the global
 * fetch loads Node's bundled undici on first use (~30 ms of every `apes -- cmd`). It supports what
 * cli/http.ts uses: method, headers, string body, AbortSignal, redirect "error" (redirects are
 * never followed), and a response with status, headers.get() and text(). `ca` adds PEM CAs to the
 * system roots, as cli/http.ts does for `ca_file`.
 */
export function nodeFetch(options: { ca?: string } = {}): Fetch {
  // getBuiltinModule: loaded on first use, synchronously, without an ESM facade (see helper/verify.ts).
  const ca = options.ca ? [...process.getBuiltinModule("node:tls").rootCertificates, options.ca] : undefined;
  const f = (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
    const send =
      url.protocol === "https:"
        ? process.getBuiltinModule("node:https").request
        : url.protocol === "http:"
          ? process.getBuiltinModule("node:http").request
          : undefined;
    if (!send) return Promise.reject(new TypeError(`unsupported URL scheme ${url.protocol}`));
    // cli/http.ts passes a plain object (a Headers instance would load undici, the thing avoided here).
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries((init.headers ?? {}) as Record<string, string>))
      headers[k.toLowerCase()] = v;
    const body = typeof init.body === "string" ? init.body : undefined;
    if (body !== undefined) headers["content-length"] = String(Buffer.byteLength(body));
    return new Promise<Response>((resolve, reject) => {
      const signal = init.signal ?? undefined;
      if (signal?.aborted) return reject(signal.reason);
      const req = send(
        url,
        { method: init.method ?? "GET", headers, ...(ca ? { ca } : {}) },
        (res: IncomingMessage) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", reject);
          res.on("end", () => {
            signal?.removeEventListener("abort", onAbort);
            const text = Buffer.concat(chunks).toString("utf8");
            const status = res.statusCode ?? 0;
            // 304 Not Modified is an answer (ETag polling), not a redirect.
            if ([301, 302, 303, 307, 308].includes(status) && init.redirect === "error") {
              return reject(new TypeError(`redirect to ${res.headers.location ?? "?"} refused`));
            }
            const response = {
              status,
              ok: status >= 200 && status < 300,
              headers: {
                get(name: string) {
                  const v = res.headers[name.toLowerCase()];
                  return v === undefined ? null : Array.isArray(v) ? v.join(", ") : String(v);
                },
              },
              text: async () => text,
              json: async () => JSON.parse(text) as unknown,
            };
            resolve(response as unknown as Response);
          });
        },
      );
      const onAbort = () =>
        req.destroy(signal?.reason instanceof Error ? signal.reason : new Error("aborted"));
      signal?.addEventListener("abort", onAbort, { once: true });
      req.on("error", (e: Error) => {
        signal?.removeEventListener("abort", onAbort);
        reject(new TypeError("fetch failed", { cause: e }));
      });
      req.end(body);
    });
  };
  return f as Fetch;
}

/** The requester's context: same as `ctx`, but HTTP goes through nodeFetch (with the user's ca_file). */
export async function withNodeFetch<C extends { http: Fetch; config(): Promise<{ caFile?: string }> }>(
  ctx: C,
): Promise<C> {
  const config = await ctx.config();
  let ca: string | undefined;
  if (config.caFile) {
    const { readFile } = await import("node:fs/promises");
    const { configError } = await import("../errors.ts");
    try {
      ca = await readFile(config.caFile, "utf8");
    } catch (e) {
      throw configError(
        `cannot read the CA file ${config.caFile}: ${(e as Error).message}`,
        "fix `ca_file` in config.toml or APES_CA_FILE",
      );
    }
    if (!ca.includes("-----BEGIN CERTIFICATE-----")) {
      throw configError(
        `${config.caFile} holds no PEM certificate`,
        "point `ca_file` / APES_CA_FILE at a PEM CA certificate",
      );
    }
  }
  // The CA now lives in nodeFetch; cli/http.ts must not build its own (undici) transport for it.
  return { ...ctx, http: nodeFetch({ ca }), config: async () => ({ ...config, caFile: undefined }) };
}
