// The load the IdP benchmarks share (bench/idp, bench/idp-workers, bench/idp-instances): the seeded
// users and grants, starting a real `apes idp serve`, JSON calls over an undici pool, key login, one
// grant lifecycle as a client makes it, and one approval-to-waiter sample.
import { type ChildProcess, spawn } from "node:child_process";
import { generateKeyPairSync, type KeyPairKeyObjectResult, randomUUID, sign } from "node:crypto";
import type { Pool } from "undici";
import { matchKey } from "../idp/grants.ts";
import type { Store } from "../idp/store/types.ts";
import { fingerprint, formatSshPublicKey } from "../protocol/keys.ts";
import { signingInput } from "../protocol/signatures.ts";
import type { Grant } from "../protocol/types.ts";
import { approvalInputOf, signApproval } from "../test/helpers/idp.ts";

export const APPROVER = "alice@bench.test";

/** The approver and one agent per client, each with its own Ed25519 key pair. */
export interface BenchUsers {
  human: KeyPairKeyObjectResult;
  agents: { email: string; key: KeyPairKeyObjectResult }[];
}

export function benchUsers(agentCount: number): BenchUsers {
  return {
    human: generateKeyPairSync("ed25519"),
    agents: Array.from({ length: agentCount }, (_, i) => ({
      email: `agent${i}@bench.test`,
      key: generateKeyPairSync("ed25519"),
    })),
  };
}

/** The mix of statuses the seeded grants cycle through: mostly used, some of every ended kind, a few pending. */
export const SEED_STATUSES: Grant["status"][] = [
  "used",
  "used",
  "used",
  "denied",
  "revoked",
  "expired",
  "pending",
];

/** Grant `i` of `total` seeded: the agents take turns as requesters, the oldest first, one second apart. */
export function seededGrant(users: BenchUsers, i: number, total: number, now: number): Grant {
  return {
    id: randomUUID(),
    type: "command",
    request: {
      requester: users.agents[i % users.agents.length]!.email,
      target_host: "web1",
      audience: "escapes",
      grant_type: "once",
      command: ["seed", String(i)],
    },
    status: SEED_STATUSES[i % SEED_STATUSES.length]!,
    created_at: now - total + i,
  };
}

/** The users, and without `usersOnly` `grants` grants, through the store API, `inFlight` inserts at a time. */
export async function seedStore(
  store: Store,
  users: BenchUsers,
  grants: number,
  { inFlight = 1, usersOnly = false }: { inFlight?: number; usersOnly?: boolean } = {},
): Promise<void> {
  await store.addUser({
    email: APPROVER,
    kind: "human",
    publicKey: formatSshPublicKey(users.human.publicKey),
    createdAt: 1,
  });
  for (const a of users.agents) {
    await store.addUser({
      email: a.email,
      kind: "agent",
      owner: APPROVER,
      publicKey: formatSshPublicKey(a.key.publicKey),
      createdAt: 1,
    });
  }
  if (!usersOnly) {
    const now = Math.floor(Date.now() / 1000);
    const batch: Promise<unknown>[] = [];
    for (let i = 0; i < grants; i++) {
      const grant = seededGrant(users, i, grants, now);
      batch.push(store.insertGrant({ grant, matchKey: matchKey(grant.request) }));
      if (batch.length >= inFlight) await Promise.all(batch.splice(0));
    }
    await Promise.all(batch);
  }
  await store.lifecycle?.flush?.();
}

/** Rate limits off: every bench client is one loopback address, and the benches measure throughput. */
export const NO_RATE_LIMITS = [
  "--rate-limit",
  "off",
  "--login-rate-limit",
  "off",
  "--token-rate-limit",
  "off",
];

/** Runs `argv` (an `apes idp serve` command line, or one that execs it) until it logs where it listens. */
export async function startIdp(argv: readonly string[]): Promise<{ proc: ChildProcess; url: string }> {
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
  const url: string = await new Promise((res, rej) => {
    let buf = "";
    proc.stderr!.on("data", (c: Buffer) => {
      buf += c.toString();
      const m = /"msg":"listening","url":"([^"]+)"/.exec(buf);
      if (m) {
        proc.stderr!.removeAllListeners("data");
        proc.stderr!.resume();
        res(m[1]!);
      }
    });
    proc.once("exit", (c) => rej(new Error(`idp exited ${c}: ${buf}`)));
  });
  return { proc, url };
}

/** Stops a server started by startIdp and closes its pool. */
export async function stopIdp(proc: ChildProcess, pool: Pool): Promise<void> {
  proc.kill("SIGTERM");
  if (proc.exitCode === null && proc.signalCode === null) await new Promise((r) => proc.once("exit", r));
  await pool.close();
}

// biome-ignore lint/suspicious/noExplicitAny: our own server's JSON, read field by field
export type Reply = { status: number; body: any; headers: Record<string, unknown> };
export type Call = (
  method: string,
  path: string,
  token?: string,
  body?: unknown,
  headers?: Record<string, string>,
) => Promise<Reply>;

/** One JSON request on `pool`, with a bearer token when given; the answer's body parsed. */
export async function jsonRequest(
  pool: Pool,
  method: string,
  path: string,
  token?: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Reply> {
  const h: Record<string, string> = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (body !== undefined) h["content-type"] = "application/json";
  const r = await pool.request({
    method: method as "GET",
    path,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.body.text();
  return { status: r.statusCode, body: text ? JSON.parse(text) : undefined, headers: r.headers };
}

/** Where a client finds the grants, and everyone's session token after a key login (the challenge signed). */
export interface SignedIn {
  issuer: string;
  /** The grants endpoint's path. */
  G: string;
  humanToken: string;
  /** One per agent, in the order of users.agents. */
  tokens: string[];
}

export async function signIn(call: Call, users: BenchUsers): Promise<SignedIn> {
  const disco = (await call("GET", "/.well-known/openid-configuration")).body;
  const path = (u: string) => new URL(u).pathname;
  const issuer = String(disco.issuer).replace(/\/+$/, "");
  const login = async (email: string, key: KeyPairKeyObjectResult) => {
    const { challenge } = (
      await call("POST", path(disco.ddisa_auth_challenge_endpoint), undefined, { id: email })
    ).body;
    const signature = sign(null, signingInput("login", issuer, email, challenge), key.privateKey).toString(
      "base64",
    );
    const r = await call("POST", path(disco.ddisa_auth_authenticate_endpoint), undefined, {
      id: email,
      challenge,
      signature,
    });
    if (r.status !== 200) throw new Error(`login ${email}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.token as string;
  };
  const humanToken = await login(APPROVER, users.human);
  const tokens = await Promise.all(users.agents.map((a) => login(a.email, a.key)));
  return { issuer, G: path(disco.openape_grants_endpoint), humanToken, tokens };
}

/** The approve body with the approver's Ed25519 proof over `grant` as created (docs/signatures.md, "Approvals"). */
export function approveBody(issuer: string, users: BenchUsers) {
  // Once, as the CLI does per run: a load generator on the IdP's cores must not spend more than a client.
  const keyFingerprint = fingerprint(users.human.publicKey);
  return (grant: Record<string, unknown>) => ({
    proof: signApproval(approvalInputOf(issuer, grant, {}), APPROVER, users.human.privateKey, keyFingerprint),
  });
}

export type Step = "create" | "approve" | "token" | "consume";

/**
 * One grant lifecycle as an agent's client makes it: create, approve (the human), token, consume.
 * True when all four succeeded. `timed` wraps each step (latency per step).
 */
export async function lifecycle(
  call: Call,
  s: SignedIn,
  token: string,
  approval: (grant: Record<string, unknown>) => unknown,
  n: number,
  timed: <T>(step: Step, f: () => Promise<T>) => Promise<T> = (_, f) => f(),
): Promise<boolean> {
  const c = await timed("create", () =>
    call("POST", s.G, token, {
      target_host: "web1",
      audience: "escapes",
      grant_type: "once",
      command: ["bench", String(n)],
    }),
  );
  if (c.status !== 201) return false;
  const id = c.body.id;
  const body = approval(c.body);
  const a = await timed("approve", () => call("POST", `${s.G}/${id}/approve`, s.humanToken, body));
  const tk = await timed("token", () => call("POST", `${s.G}/${id}/token`, token));
  const cs = await timed("consume", () => call("POST", `${s.G}/${id}/consume`, tk.body?.authz_jwt));
  return a.status === 200 && tk.status === 200 && cs.body?.status === "consumed";
}

/**
 * One approval-to-waiter sample in ms: a grant created, a waiter parked on it (Prefer: wait, through
 * `wait`), then approved (through `approve`, perhaps another connection or instance); from the
 * approval sent to the waiter answered.
 */
export async function approvalToWaiter(
  calls: { create: Call; wait: Call; approve: Call },
  s: SignedIn,
  token: string,
  approval: (grant: Record<string, unknown>) => unknown,
  n: number,
): Promise<number> {
  const c = await calls.create("POST", s.G, token, {
    target_host: "web1",
    audience: "escapes",
    grant_type: "once",
    command: ["notify", String(n)],
  });
  if (c.status !== 201) throw new Error(`create: ${c.status} ${JSON.stringify(c.body)}`);
  let answered = 0;
  const waiter = calls
    .wait("GET", `${s.G}/${c.body.id}`, token, undefined, {
      prefer: "wait=30",
      "if-none-match": c.headers.etag as string,
    })
    .then((r) => {
      answered = performance.now();
      return r;
    });
  // Let the waiter park at the IdP before approving.
  await new Promise((r) => setTimeout(r, 5));
  const body = approval(c.body);
  const sent = performance.now();
  const a = await calls.approve("POST", `${s.G}/${c.body.id}/approve`, s.humanToken, body);
  if (a.status !== 200) throw new Error(`approve: ${a.status} ${JSON.stringify(a.body)}`);
  const r = await waiter;
  if (r.status !== 200 || r.body.status !== "approved") throw new Error(`waiter got ${r.status}`);
  return answered - sent;
}
