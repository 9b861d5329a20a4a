import type { Agent } from "node:https";
import type { Socket } from "node:net";
import { Readable } from "node:stream";
import { visible } from "../protocol/display.ts";
import { fileKeyStore } from "../protocol/jwks-store.ts";
import { FrameError, FrameReader, serveResident } from "../protocol/resident.ts";
import {
  denialMessage,
  type HttpFn,
  httpsRequest,
  MAX_POLICY_BYTES,
  MAX_REQUEST_BYTES,
  readAheadStore,
  runVerifier,
  type TrustAnchor,
  tlsContext,
  type WarmState,
} from "./verify.ts";

/**
 * `apes verifier serve`: the verifier as a resident `_apes` process on `<cache dir>/verifier.sock`
 * (docs/elevation.md section 3). The shim (root) sends what it would give a one-shot `apes __verify`:
 *   `policy <N>\n`, the N bytes it read from the policy fd it opened and checked, the request line;
 * and gets back what it would read from one:
 *   the verdict line, `exit <status>\n`, then the diagnostics (what stderr carries), then EOF.
 * Each request runs the one-shot verifier's code (verifier/verify.ts) with every check; only the
 * runtime, the TLS context and kept-alive connections of each trust anchor, and the issuers' keys
 * (read from the cache files once, then kept and refreshed in memory) outlive a request. Nobody but
 * root and `_apes` can reach the socket: its directory is `_apes`'s, 0700; the shim checks the
 * directory, the socket and the peer's uid before it sends anything.
 */

/** The shim's whole bound on a verifier (VERIFY_DEADLINE_S of native/proc.h). */
export const REQUEST_DEADLINE_MS = 20_000;
/** Connections at once; the shim uses a one-shot verifier when one more is refused. */
export const MAX_CONNECTIONS = 32;
/** Trust anchors with a pool of their own (a policy names one; more come only with policy edits). */
const MAX_ANCHORS = 8;

export interface ServeOptions {
  socketPath: string;
  /** The JWKS cache directory (the one-shot verifier's HOME). */
  cacheDir: string;
  idleMs: number;
  log(line: string): void;
  /** Stops the server (SIGTERM); open requests finish first. */
  signal?: AbortSignal;
}

/** Serves until idle, the socket is removed, or the executable changes; resolves with why it ended. */
export async function serveVerifier(options: ServeOptions): Promise<string> {
  const warm = new WarmConnections(readAheadStore(fileKeyStore(options.cacheDir)));
  const resident = await serveResident({
    socketPath: options.socketPath,
    idleMs: options.idleMs,
    maxConnections: MAX_CONNECTIONS,
    onConnection: (socket) => answer(socket, warm, options),
  });
  options.signal?.addEventListener("abort", () => resident.close(String(options.signal!.reason)), {
    once: true,
  });
  options.log(`apes verifier: serving on ${options.socketPath}`);
  const why = await resident.ended;
  warm.close();
  options.log(`apes verifier: stopped (${why.replace(/_/g, " ")})`);
  return why;
}

/** One request: read within the deadline, verify, answer. A malformed or late request gets no answer (the shim denies). */
async function answer(socket: Socket, warm: WarmState, options: ServeOptions): Promise<void> {
  const deadline = performance.now() + REQUEST_DEADLINE_MS;
  socket.setTimeout(REQUEST_DEADLINE_MS, () => socket.destroy());
  const reader = new FrameReader(socket);
  let policyText: string;
  let line: string;
  try {
    const head = /^policy (\d{1,7})$/.exec(await reader.readLine(16, deadline));
    if (!head || Number(head[1]) > MAX_POLICY_BYTES) return;
    policyText = (await reader.readBytes(Number(head[1]), deadline)).toString("utf8");
    line = await reader.readLine(MAX_REQUEST_BYTES, deadline);
  } catch (e) {
    if (e instanceof FrameError) return;
    throw e;
  }
  let verdict = "";
  let diagnostics = "";
  const { exit, decision } = await runVerifier(
    {
      stdin: Readable.from([`${line}\n`]),
      stdout: { write: (s: string) => (verdict += s) },
      stderr: { write: (s: string) => (diagnostics += s) },
    },
    { policyText, warm, cacheDir: options.cacheDir },
  );
  // One line per verdict for the service's log (journald); never the token.
  options.log(
    decision.ok
      ? `apes verifier: allow grant ${visible(decision.grant_id, { max: 100 })}`
      : `apes verifier: deny ${decision.reason}`,
  );
  if (!decision.ok) diagnostics += `apes: ${denialMessage(decision)}\n`;
  await new Promise<void>((resolve) => socket.end(`${verdict}exit ${exit}\n${diagnostics}`, resolve));
}

/** One TLS context and one kept-alive pool per trust anchor, so a socket is only reused under the trust it was verified with. */
class WarmConnections implements WarmState {
  private readonly anchors = new Map<string, { agent: Agent; http: HttpFn }>();
  readonly store: WarmState["store"];

  constructor(store: WarmState["store"]) {
    this.store = store;
  }

  httpFor(anchor: TrustAnchor): HttpFn {
    const kept = this.anchors.get(anchor.id);
    if (kept) return kept.http;
    if (this.anchors.size >= MAX_ANCHORS) this.close();
    const secureContext = anchor.ca ? tlsContext(anchor.ca) : undefined;
    const { Agent } = process.getBuiltinModule("node:https");
    // LIFO: the most recently used socket is the one least likely to have been closed by the IdP.
    const agent = new Agent({ keepAlive: true, maxSockets: 16, maxFreeSockets: 4, scheduling: "lifo" });
    const http: HttpFn = (url, init) => httpsRequest(url, init, secureContext, undefined, agent);
    this.anchors.set(anchor.id, { agent, http });
    return http;
  }

  close(): void {
    for (const { agent } of this.anchors.values()) agent.destroy();
    this.anchors.clear();
  }
}
