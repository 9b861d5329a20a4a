import type { KeyObject } from "node:crypto";
import { closeSync, constants, fstatSync, lstatSync, openSync, readFileSync, realpathSync } from "node:fs";
import type { Agent } from "node:http";
import { hostname } from "node:os";
import { dirname } from "node:path";
import type { SecureContext, TLSSocket } from "node:tls";
import { visible } from "../protocol/display.ts";
import { fetchJson, HttpFailure } from "../protocol/http.ts";
import { type IssuerKeys, JwksCache, jwksCacheKey, type KeyStore } from "../protocol/jwks.ts";
import { fileKeyStore, trustAnchorId } from "../protocol/jwks-store.ts";
import { type DecodedJwt, decodeJwt, JwtError, verifySignature } from "../protocol/jwt.ts";
import {
  type Allowed,
  checkIssuer,
  checkTokenShape,
  type Decision,
  decide,
  deny,
  exitStatusFor,
  parseRequest,
  type VerifierExit,
  type VerifyRequest,
  verdictFromConsume,
} from "./decide.ts";
import {
  type Policy,
  PolicyError,
  parsePolicy,
  policyFileProblem,
  trustedDirectoryProblem,
} from "./policy.ts";

/**
 * `apes __verify --config-fd 3`: the effects around the pure decision. Runs as the unprivileged
 * `_apes` user with a fixed environment (HOME = the JWKS cache dir). Order (contract):
 *   request line -> policy from the fd -> token shape -> issuer allow-list (no network before this)
 *   -> trust anchor (the pinned CA, or the system roots)
 *   -> discovery + JWKS from that issuer only (cached per issuer AND anchor) -> signature, alg EdDSA
 *   -> claim checks (decide) -> consume at the IdP (fail closed) -> one verdict line on stdout.
 */

export interface VerifierIo {
  stdin: NodeJS.ReadableStream;
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

export interface VerifierOptions {
  /** The policy's fd (the one-shot verifier); or: */
  configFd?: number;
  /**
   * The policy's bytes, as the shim read them from the fd it opened and checked (the resident
   * verifier, verifier/serve.ts, gets them over its root-only socket).
   */
  policyText?: string;
  /** A resident verifier's state kept across requests (its connections and the keys in memory). */
  warm?: WarmState;
  /** Where the JWKS cache lives (the verifier's HOME). Undefined: no cache. */
  cacheDir?: string;
  nowS?: () => number;
  /** Injected for unit tests; the default talks HTTPS with the policy's trust anchor. */
  http?: HttpFn;
  /** Owner the policy file and a ca_file must have: root, except in unit tests run by another user. */
  policyOwnerUid?: number;
}

/** What a resident verifier keeps warm between requests; every check is made per request as before. */
export interface WarmState {
  /** The HTTP function of one trust anchor: https with its TLS context and a kept-alive pool of its own. */
  httpFor(anchor: TrustAnchor): HttpFn;
  /** The JWKS cache, read from its files once and then kept in memory (readAheadStore). */
  store?: KeyStore;
}

export type HttpFn = (
  url: string,
  init: { method: "GET" | "POST"; headers?: Record<string, string>; body?: string },
) => Promise<{ status: number; body: unknown }>;

/** A network-level failure (no HTTP answer, or a 5xx): fail closed. */
export class Unreachable extends Error {}

export const MAX_REQUEST_BYTES = 64 * 1024;
export const MAX_POLICY_BYTES = 256 * 1024;
const MAX_CA_FILE_BYTES = 1024 * 1024;
const MAX_ANSWER_BYTES = 1024 * 1024;
/**
 * Each request (connect, TLS, headers and the whole body) must be complete within this, so a slow or
 * dripping IdP fails closed in seconds with the step's reason code; the size cap alone would not.
 */
export const HTTP_DEADLINE_MS = 5000;

/** Prints the verdict line (and timing lines); returns the decision and the contract's exit status. */
export async function runVerifier(
  io: VerifierIo,
  options: VerifierOptions,
): Promise<{ exit: VerifierExit; decision: Decision }> {
  const t0 = performance.now();
  const marks: [string, number][] = [];
  const mark = (name: string) => marks.push([name, performance.now()]);
  let timing = false;
  let decision: Decision;
  try {
    decision = await verify(io, options, mark, (req) => {
      timing = req.timing;
    });
  } catch (e) {
    // Anything unexpected is a denial, never an allow.
    decision = deny("config_invalid", `verifier error: ${(e as Error).message}`);
  }
  io.stdout.write(`${JSON.stringify(decision)}\n`);
  if (timing) {
    // "start": from the process's start (performance's time origin) to here: runtime and bundle start-up.
    io.stderr.write(`apes-timing: verifier start ${t0.toFixed(1)}\n`);
    let prev = t0;
    for (const [name, at] of marks) {
      io.stderr.write(`apes-timing: verifier ${name} ${(at - prev).toFixed(1)}\n`);
      prev = at;
    }
    io.stderr.write(`apes-timing: verifier total ${(performance.now() - t0).toFixed(1)}\n`);
  }
  return { exit: exitStatusFor(decision), decision };
}

async function verify(
  io: VerifierIo,
  options: VerifierOptions,
  mark: (name: string) => void,
  onRequest: (r: VerifyRequest) => void,
): Promise<Decision> {
  const prepared = prepare(options, options.policyOwnerUid ?? 0);
  try {
    return await verifyPrepared(io, options, prepared, mark, onRequest);
  } finally {
    prepared.ahead?.close(); // nothing left open past the verdict
  }
}

async function verifyPrepared(
  io: VerifierIo,
  options: VerifierOptions,
  prepared: Prepared,
  mark: (name: string) => void,
  onRequest: (r: VerifyRequest) => void,
): Promise<Decision> {
  const nowS = options.nowS ?? (() => Math.floor(Date.now() / 1000));
  const line = await readLine(io.stdin, MAX_REQUEST_BYTES);
  mark("line");
  if (line === undefined) return deny("request_invalid", "no request line on stdin (or longer than 64 KiB)");
  const request = parseRequest(line);
  if ("ok" in request) return request;
  onRequest(request);

  const { policy } = prepared;
  if ("ok" in policy) return policy;
  mark("read");

  const shape = checkTokenShape(request.jwt);
  if (shape) return shape;
  let unverified: DecodedJwt;
  try {
    unverified = decodeJwt(request.jwt);
  } catch {
    return deny("token_malformed", "the grant token's header or payload is not JSON");
  }
  const issuerCheck = checkIssuer(unverified.payload.iss, policy);
  if (!issuerCheck.ok) return issuerCheck;
  const issuer = issuerCheck.issuer;
  if (unverified.header.alg !== "EdDSA") {
    return deny(
      "signature_invalid",
      `alg ${JSON.stringify(unverified.header.alg ?? null)} is not accepted (EdDSA only)`,
    );
  }
  const kid = unverified.header.kid;
  if (typeof kid !== "string" || kid.length === 0)
    return deny("signature_invalid", "the token header has no kid");

  const { trust } = prepared;
  if (!trust || "ok" in trust) return trust ?? deny("config_invalid", "no trust anchor");
  const { anchor, http, store } = trust;
  let found: { meta: IssuerKeys; key?: KeyObject };
  try {
    const cache = new JwksCache({
      getJson: (url) => http(url, { method: "GET", headers: { accept: "application/json" } }),
      anchor: anchor.id,
      endpoints: [GRANTS_ENDPOINT],
      ...(store ? { store } : {}),
    });
    found = await cache.lookup(issuer, kid, nowS());
  } catch (e) {
    return deny("jwks_unavailable", `cannot get the signing keys of ${issuer}: ${(e as Error).message}`);
  }
  mark("jwks");
  if (!found.meta.keys.some((k) => k.kid === kid))
    return deny("signature_invalid", `the token's key ${kid} is not published by ${issuer}`);
  if (!found.key) return deny("signature_invalid", `key ${kid} is not an Ed25519 key`);
  try {
    verifySignature(unverified, () => found.key);
  } catch (e) {
    const why = e instanceof JwtError && e.reason !== "signature" ? `: ${e.message}` : "";
    return deny(
      "signature_invalid",
      `the token's signature does not verify with ${issuer}'s key ${kid}${why}`,
    );
  }
  // Only now is the payload trusted (decodeJwt parsed the same bytes the signature covers).
  const claims = unverified.payload;
  mark("signature");

  const decision = decide(claims, request, policy, nowS());
  if (!decision.ok) return decision;
  const consumed = await consume(http, found.meta.endpoints[GRANTS_ENDPOINT]!, decision, request.jwt);
  mark("consume");
  return consumed;
}

type Denial = ReturnType<typeof deny>;

/** What depends on the policy alone; each denial is returned where verify() used to meet it. */
interface Prepared {
  policy: Policy | Denial;
  /** Undefined when there is no policy to take it from. */
  trust?: { anchor: TrustAnchor; http: HttpFn; store?: KeyStore } | Denial;
  /** Connections opened ahead to the issuers (closed when the verdict is out). */
  ahead?: ConnectionsAhead;
}

/**
 * Done while the verifier waits for its request line, which comes once a person has approved (an
 * early verifier waits through the decision), so none of it is on the path after the approval: the
 * policy read from the fd, the trust anchor and its one TLS context, the TLS stack loaded, each
 * allow-listed issuer's cached keys read. It contacts no one and learns nothing of the request.
 */
function prepare(options: VerifierOptions, ownerUid: number): Prepared {
  const policy =
    options.policyText !== undefined
      ? policyFromText(options.policyText)
      : readPolicy(options.configFd, ownerUid);
  if ("ok" in policy) return { policy };
  let anchor: TrustAnchor;
  try {
    anchor = trustAnchor(policy, ownerUid);
  } catch (e) {
    return { policy, trust: deny("config_invalid", (e as Error).message) };
  }
  let http = options.http;
  let ahead: ConnectionsAhead | undefined;
  if (!http && options.warm) {
    try {
      http = options.warm.httpFor(anchor);
    } catch (e) {
      return {
        policy,
        trust: deny("config_invalid", `the policy's CA is not usable: ${(e as Error).message}`),
      };
    }
  } else if (!http) {
    try {
      const secureContext = anchor.ca ? tlsContext(anchor.ca) : undefined;
      ahead = new ConnectionsAhead(policy.issuers, secureContext);
      http = httpsWith(secureContext, ahead);
    } catch (e) {
      return {
        policy,
        trust: deny("config_invalid", `the policy's CA is not usable: ${(e as Error).message}`),
      };
    }
  }
  if (options.warm)
    return { policy, trust: { anchor, http, ...(options.warm.store ? { store: options.warm.store } : {}) } };
  const store = options.cacheDir ? readAheadStore(fileKeyStore(options.cacheDir)) : undefined;
  for (const issuer of store ? policy.issuers : []) store!.get(jwksCacheKey(anchor.id, issuer));
  return { policy, trust: { anchor, http, ...(store ? { store } : {}) }, ...(ahead ? { ahead } : {}) };
}

/** The most issuers a verifier connects to ahead (a policy rarely names more than one or two). */
const MAX_CONNECTIONS_AHEAD = 4;
/**
 * How long a connection opened ahead is used for a request: an IdP may close a connection that
 * brought no request after a few seconds (apes idp serve after 10), and a request on a closing one
 * would fail. Past this, a request connects anew, on the TLS stack the connection ahead has warmed.
 */
const AHEAD_REUSE_MS = 2000;

/**
 * TLS connections to the policy's issuers, opened while the verifier waits for its line: a
 * process's first TLS request costs ~20-30 ms more than its next ones (the TLS and HTTP machinery's
 * first use), and that is paid here, off the path after the approval. The first request to an
 * origin within AHEAD_REUSE_MS goes over its connection. Only allow-listed issuers are contacted,
 * with the trust the requests use; nothing of the request is known yet. Idle, they keep no one
 * waiting (unref'd), and close() ends what is left.
 */
class ConnectionsAhead {
  private readonly open = new Map<string, { socket: TLSSocket; at: number }>();

  constructor(issuers: readonly string[], secureContext: SecureContext | undefined) {
    const { connect } = process.getBuiltinModule("node:tls");
    const { isIP } = process.getBuiltinModule("node:net");
    for (const issuer of issuers.slice(0, MAX_CONNECTIONS_AHEAD)) {
      let url: URL;
      try {
        url = new URL(issuer);
      } catch {
        continue;
      }
      if (url.protocol !== "https:" || this.open.has(url.origin)) continue;
      const host = url.hostname.replace(/^\[|\]$/g, "");
      const socket = connect({
        host,
        port: Number(url.port || 443),
        ...(isIP(host) ? {} : { servername: host }),
        ...(secureContext ? { secureContext } : {}),
      });
      const entry = { socket, at: performance.now() };
      this.open.set(url.origin, entry);
      const drop = () => {
        if (this.open.get(url.origin) === entry) this.open.delete(url.origin);
      };
      socket.on("error", drop).once("close", drop).once("end", drop);
      socket.setTimeout(HTTP_DEADLINE_MS, () => socket.destroy());
      socket.unref();
    }
  }

  /** The origin's connection for one request, if it is fresh enough; it is then the request's. */
  take(origin: string): TLSSocket | undefined {
    const entry = this.open.get(origin);
    this.open.delete(origin);
    if (!entry || entry.socket.destroyed || performance.now() - entry.at > AHEAD_REUSE_MS) {
      entry?.socket.destroy();
      return undefined;
    }
    entry.socket.setTimeout(0);
    entry.socket.ref();
    return entry.socket;
  }

  close(): void {
    for (const { socket } of this.open.values()) socket.destroy();
    this.open.clear();
  }
}

/**
 * The store with each entry read at most once per process: entries read ahead in prepare() are not
 * read again at the lookup. A copy older than the file is still checked for age and kid by the cache
 * (an expired or kid-less one is fetched afresh), so reading early changes no decision.
 */
export function readAheadStore(store: KeyStore): KeyStore {
  const read = new Map<string, ReturnType<KeyStore["get"]>>();
  return {
    get(key) {
      if (!read.has(key)) read.set(key, store.get(key));
      return read.get(key);
    },
    set(key, value) {
      read.set(key, value);
      store.set(key, value);
    },
  };
}

function readPolicy(fd: number | undefined, ownerUid: number): Policy | ReturnType<typeof deny> {
  if (fd === undefined) return deny("config_invalid", "no policy given");
  try {
    const st = fstatSync(fd);
    const problem = policyFileProblem({ uid: st.uid, mode: st.mode, isFile: st.isFile() }, ownerUid);
    if (problem) return deny("config_invalid", `the policy ${problem}`);
    if (st.size > MAX_POLICY_BYTES) return deny("config_invalid", "the policy is larger than 256 KiB");
    const text = readFileSync(fd, "utf8");
    return parsePolicy(text, "the policy", { hostname: hostname() });
  } catch (e) {
    if (e instanceof PolicyError) return deny("config_invalid", e.message);
    return deny("config_invalid", `cannot read the policy from fd ${fd}: ${(e as Error).message}`);
  }
}

function policyFromText(text: string): Policy | ReturnType<typeof deny> {
  if (Buffer.byteLength(text, "utf8") > MAX_POLICY_BYTES)
    return deny("config_invalid", "the policy is larger than 256 KiB");
  try {
    return parsePolicy(text, "the policy", { hostname: hostname() });
  } catch (e) {
    if (e instanceof PolicyError) return deny("config_invalid", e.message);
    return deny("config_invalid", `cannot parse the policy: ${(e as Error).message}`);
  }
}

/** Characters of a denial's detail shown (the shim forwards at most 4 KiB of diagnostics anyway). */
const MAX_DETAIL = 500;

/** The one line a denial is explained by on the verifier's diagnostics (the shim forwards it, escaped). */
export function denialMessage(decision: Decision & { ok: false }): string {
  return `not allowed (${decision.reason}): ${visible(decision.detail, { max: MAX_DETAIL })}`;
}

async function consume(
  http: HttpFn,
  grantsEndpoint: string,
  allowed: Allowed,
  jwt: string,
): Promise<Decision> {
  const url = `${grantsEndpoint}/${encodeURIComponent(allowed.grant_id)}/consume`;
  let res: { status: number; body: unknown };
  try {
    res = await http(url, {
      method: "POST",
      headers: { authorization: `Bearer ${jwt}`, "content-type": "application/json" },
      body: "{}",
    });
  } catch (e) {
    return deny("idp_unreachable", `cannot consume the grant at ${grantsEndpoint}: ${(e as Error).message}`);
  }
  if (res.status >= 500)
    return deny("idp_unreachable", `the IdP failed to consume the grant (${res.status})`);
  return verdictFromConsume(res.status, res.body, allowed);
}

/** The discovery name of the endpoint the verifier consumes at (it must be on the issuer's origin). */
const GRANTS_ENDPOINT = "openape_grants_endpoint";

/**
 * The TLS trust for the issuers: `ca` (PEM) when the policy pins a CA, else the system roots. `id`
 * names it in the JWKS cache: "sha256:<hex of the PEM>" or "system-roots".
 */
export interface TrustAnchor {
  ca?: string;
  id: string;
}

/** The policy's trust anchor; reads a ca_file only when root guards it like the policy. Throws PolicyError. */
export function trustAnchor(policy: Policy, ownerUid = 0): TrustAnchor {
  const parts = [policy.caPem, policy.caFile ? readCaFile(policy.caFile, ownerUid) : undefined];
  const ca = parts.filter((p) => p !== undefined).join("\n");
  return ca ? { ca, id: trustAnchorId(ca) } : { id: trustAnchorId(undefined) };
}

/**
 * A ca_file decides whom the verifier believes, so it gets the policy's own rules: a canonical path (no
 * symlink anywhere, so the directories checked are the ones the open goes through), every directory
 * above it root-owned and writable by root only, and the file itself opened without following a link
 * or blocking on a FIFO, a regular root-owned file that no one else can write (checked on the fd).
 */
function readCaFile(path: string, ownerUid: number): string {
  const refuse = (why: string) =>
    new PolicyError(`ca_file ${path} ${why}; or pin the CA inline: sudo apes trust ... --ca-file F`);
  let real: string;
  try {
    real = realpathSync(path);
  } catch (e) {
    throw refuse(`cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (real !== path) throw refuse(`is not a path without symlinks (it resolves to ${real})`);
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    let st: ReturnType<typeof lstatSync>;
    try {
      st = lstatSync(dir);
    } catch (e) {
      throw refuse(
        `cannot be checked (${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      );
    }
    const problem = trustedDirectoryProblem(
      { uid: st.uid, mode: st.mode, isDirectory: st.isDirectory() },
      ownerUid,
    );
    if (problem) throw refuse(`is in ${dir}, which ${problem}`);
    if (dir === "/") break;
  }
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    throw refuse(`cannot be opened (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const st = fstatSync(fd);
    const problem = policyFileProblem({ uid: st.uid, mode: st.mode, isFile: st.isFile() }, ownerUid);
    if (problem) throw refuse(problem);
    if (st.size > MAX_CA_FILE_BYTES) throw refuse("is larger than 1 MiB");
    return readFileSync(fd, "utf8");
  } finally {
    closeSync(fd);
  }
}

/**
 * HTTPS through the protocol client (cheap to load; each verifier is a fresh process). With a `ca` the
 * policy PINS the issuers' CA: only those certificates are trusted, not the system roots (stricter,
 * and it skips parsing ~140 roots).
 */
export function httpWithCa(ca: string | undefined): HttpFn {
  return httpsWith(ca ? tlsContext(ca) : undefined);
}

/** One TLS context for every request of the process (building one parses the CA: a few ms each). */
export function tlsContext(ca: string): SecureContext {
  return process.getBuiltinModule("node:tls").createSecureContext({ ca });
}

function httpsWith(secureContext: SecureContext | undefined, ahead?: ConnectionsAhead): HttpFn {
  return (url, init) => httpsRequest(url, init, secureContext, ahead?.take(new URL(url).origin));
}

/** The HTTP function for a policy (`apes trust` validates an IdP with it before writing). */
export function httpForPolicy(policy: Policy): HttpFn {
  return httpWithCa(trustAnchor(policy).ca);
}

export async function httpsRequest(
  url: string,
  init: { method: string; headers?: Record<string, string>; body?: string },
  secureContext: SecureContext | undefined,
  socket: TLSSocket | undefined,
  agent?: Agent,
): Promise<{ status: number; body: unknown }> {
  try {
    // Without a context of the policy's CA, the system roots (the https default).
    return await fetchJson(url, {
      ...init,
      ...(secureContext ? { secureContext } : {}),
      ...(socket ? { socket } : {}),
      ...(agent ? { agent } : {}),
      plainHttp: "never",
      timeoutMs: HTTP_DEADLINE_MS,
      maxBytes: MAX_ANSWER_BYTES,
    });
  } catch (e) {
    if (e instanceof HttpFailure && e.kind === "network") throw new Unreachable(networkReason(e));
    throw new Unreachable((e as Error).message);
  }
}

function networkReason(e: HttpFailure): string {
  if (e.code === "ECONNREFUSED") return "connection refused";
  if (e.code === "ENOTFOUND" || e.code === "EAI_AGAIN") return "host name not found";
  if (e.code?.startsWith("ERR_TLS") || e.code?.includes("CERT") || /certificate/i.test(e.message)) {
    return `TLS: ${e.message} (is the IdP's CA in the policy? \`sudo apes trust ... --ca-file F\`)`;
  }
  return e.message;
}

/** One line from the stream (up to a newline or EOF), or undefined when longer than `max` bytes. */
export async function readLine(stream: NodeJS.ReadableStream, max: number): Promise<string | undefined> {
  let buf = "";
  for await (const chunk of stream) {
    buf += typeof chunk === "string" ? chunk : (chunk as Buffer).toString("utf8");
    const nl = buf.indexOf("\n");
    if (nl >= 0) return buf.slice(0, nl);
    if (buf.length > max) return undefined;
  }
  if (buf.length > max) return undefined;
  return buf.length > 0 ? buf : undefined;
}
