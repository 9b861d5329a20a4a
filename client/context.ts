/**
 * What client/ needs from whoever runs it (the CLI, the Nest): a transport, a clock, where its files
 * live, a few settings, and two ways to tell things that are not errors. No terminal, no exit codes,
 * no shell hints: failures are ClientErrors (client/errors.ts), which the caller maps to its own terms
 * (the CLI: cli/errors.ts). cli/context.ts's Context satisfies this interface as it is.
 */

export type Fetch = typeof fetch;

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** The settings client/ reads (a subset of the CLI's config.toml; the Nest brings its own). */
export interface ClientConfig {
  /** PEM file with extra CA certificates trusted for HTTPS to the IdP (added to the system roots). */
  caFile?: string;
  /** Sign an IdP's bare login challenge when it does not advertise bound signatures (docs/signatures.md). */
  allowRawLoginSignature: boolean;
  /** Origins besides the IdP's own that its discovery document may name as endpoints. */
  idpEndpointOrigins: readonly string[];
}

/** What DDISA discovery (client/ddisa.ts) also reads: the configured IdP and the DNS settings. */
export interface DnsConfig extends ClientConfig {
  /** The IdP to use whatever DNS says (config.toml `idp`, APES_IDP). */
  idp?: string;
  dns: {
    servers?: string[];
    dohUrl?: string;
    allowLoopbackHttp: boolean;
    timeoutMs: number;
  };
  /** Where the settings were read from, for messages. */
  source?: string;
}

/** Something the caller may want to show; never a failure. */
export type ClientWarning =
  | { kind: "key_mode"; path: string; mode: number }
  | { kind: "raw_login_signature"; idp: string };

export interface ClientContext {
  /** The transport (fetch-shaped): every request goes through it (client/http.ts adds an extra CA). */
  http: Fetch;
  clock: Clock;
  /**
   * configDir holds auth.json, its lock and the default key (id_ed25519); cacheDir the discovery
   * cache. The CLI passes its XDG directories, the Nest its own HOME's.
   */
  paths: { configDir: string; cacheDir: string };
  /**
   * Tunables from the environment: HOME (~/.ssh/id_ed25519), APES_HTTP_TIMEOUT_MS, APES_NO_PUSH,
   * APES_POLL_INTERVAL_MS.
   */
  env: Readonly<Record<string, string | undefined>>;
  /** Loaded on first use. */
  config(): Promise<ClientConfig>;
  /** A diagnostic line (never a token or a body); the caller decides whether it is shown. */
  debug(message: string): void;
  warn(warning: ClientWarning): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
    }),
};

/**
 * A ClientContext for a process of its own (the Nest, a service): `configDir` holds auth.json and the
 * key, `cacheDir` the discovery cache; the system clock and client/http.ts's transport unless given;
 * debug lines and warnings dropped unless given.
 */
export function clientContext(options: {
  configDir: string;
  cacheDir: string;
  env?: Readonly<Record<string, string | undefined>>;
  config?: Partial<ClientConfig>;
  http?: Fetch;
  clock?: Clock;
  debug?: (message: string) => void;
  warn?: (warning: ClientWarning) => void;
}): ClientContext {
  const config: ClientConfig = { allowRawLoginSignature: false, idpEndpointOrigins: [], ...options.config };
  return {
    // Loaded on first use, as the CLI does: a context that never makes a request pays nothing.
    http:
      options.http ??
      (async (input, init) => (await import("./http.ts")).nodeFetch(input as string | URL | Request, init)),
    clock: options.clock ?? systemClock,
    paths: { configDir: options.configDir, cacheDir: options.cacheDir },
    env: options.env ?? {},
    config: async () => config,
    debug: options.debug ?? (() => undefined),
    warn: options.warn ?? (() => undefined),
  };
}
