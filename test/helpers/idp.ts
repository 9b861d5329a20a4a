import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { generateKeyPairSync, type KeyObject, randomBytes, sign } from "node:crypto";
import { chownSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Agent, fetch as undiciFetch } from "undici";
import { openStore } from "../../idp/store/open.ts";
import type { Store } from "../../idp/store/types.ts";
import {
  type ApprovalInput,
  approvalDigestHex,
  approvalSigningInput,
  effectiveApproval,
} from "../../protocol/approval.ts";
import { durationSeconds } from "../../protocol/duration.ts";
import { decodeJwt } from "../../protocol/jwt.ts";
import { fingerprint, formatSshPublicKey } from "../../protocol/keys.ts";
import { advertisedFormats, SIGNATURE_FORMAT_V1, signingInput } from "../../protocol/signatures.ts";
import { sharedPostgres } from "./postgres.ts";

/**
 * The real IdP (`dist/apes idp serve`) as a child process for integration tests, plus small HTTP
 * helpers. Every started process is remembered and killed when the test process exits, but tests
 * should still call stop() in afterAll.
 */

export interface IdpHandle {
  url: string;
  issuer: string;
  dataDir: string;
  pid: number;
  /** SIGTERM and wait for exit. */
  stop(): Promise<void>;
  /** Send a signal (default SIGKILL) and wait for exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Start again on the same data dir AND the same port (url/issuer/pid are updated). */
  restart(): Promise<void>;
  /** stderr so far (JSON log lines), across restarts. */
  logs(): string;
  /** Exit code of the last process once it has exited (null while running or when killed by a signal). */
  exitCode(): number | null;
}

export interface StartIdpOptions {
  dataDir?: string;
  /**
   * Where the IdP keeps its data: a SQLite data dir, or a database on this worker's PostgreSQL
   * server (test/helpers/postgres.ts). Default: APES_TEST_STORE, else sqlite. With postgres,
   * `dataDir` names the database: the same dataDir is the same database (restarts, a second
   * instance), and runApes rewrites `--data <that dir>` to the database options, so the offline
   * admin commands of a test run against the same store either way.
   */
  store?: "sqlite" | "postgres";
  tokenTtl?: string;
  tls?: { cert: string; key: string };
  issuer?: string;
  /** The port on 127.0.0.1 (default 0: any free one). */
  port?: number;
  extraArgs?: string[];
  env?: Record<string, string>;
}

export function apesBin(): string {
  return resolve(import.meta.dirname, "..", "..", "dist", "apes");
}

const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

function waitExit(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((r) => p.once("exit", () => r()));
}

/** The store integration tests use unless told otherwise (CI runs the IdP suites with both). */
export function testStore(): "sqlite" | "postgres" {
  return process.env.APES_TEST_STORE === "postgres" ? "postgres" : "sqlite";
}

/** The database options standing in for `--data DIR` when DIR names a PostgreSQL test database (created on first use). */
const databases = new Map<string, string[]>();
const creating = new Map<string, Promise<string[]>>();

export function databaseFor(dataDir: string): Promise<string[]> {
  let p = creating.get(dataDir);
  if (!p) {
    p = (async () => {
      const pg = await sharedPostgres();
      const url = await pg.createDatabase("idp");
      mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      const keyFile = join(dataDir, "db.key");
      writeFileSync(keyFile, randomBytes(32), { mode: 0o600 });
      const args = ["--database", url, "--database-key-file", keyFile];
      databases.set(dataDir, args);
      return args;
    })();
    creating.set(dataDir, p);
  }
  return p;
}

/** `--data DIR` as the command line of an admin command on that test's store. */
export function storeArgs(dataDir: string): string[] {
  return databases.get(dataDir) ?? ["--data", dataDir];
}

/**
 * The store of a test's IdP, opened in the test process as an admin command would: the data dir's
 * SQLite, or the PostgreSQL database standing in for it (databaseFor).
 */
export async function openTestStore(dataDir: string): Promise<Store> {
  const db = databases.get(dataDir);
  if (db === undefined) return (await openStore({ kind: "sqlite", dataDir })).store;
  return (await openStore({ kind: "postgres", url: db[1]!, keyFile: db[3]! })).store;
}

export async function startIdp(options: StartIdpOptions = {}): Promise<IdpHandle> {
  const dataDir = options.dataDir ?? join(mkdtempSync(join(tmpdir(), "apes-idp-")), "data");
  const store = options.store ?? testStore();
  const location = store === "postgres" ? await databaseFor(dataDir) : ["--data", dataDir];
  let stderr = "";
  let proc: ChildProcess;
  let port = options.port ?? 0;
  let url = "";
  let issuer = "";

  const launch = async () => {
    const args = ["idp", "serve", "--listen", `127.0.0.1:${port}`, ...location];
    if (options.tokenTtl) args.push("--token-ttl", options.tokenTtl);
    if (options.tls) args.push("--tls-cert", options.tls.cert, "--tls-key", options.tls.key);
    if (options.issuer) args.push("--issuer", options.issuer);
    args.push(...(options.extraArgs ?? []));
    const p = spawn(apesBin(), args, {
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    proc = p;
    live.add(p);
    p.once("exit", () => live.delete(p));
    const start = stderr.length;
    await new Promise<void>((resolveStart, reject) => {
      const timer = setTimeout(() => {
        p.kill("SIGKILL");
        reject(new Error(`the IdP did not report "listening" within 20 s:\n${stderr.slice(start)}`));
      }, 20_000);
      let buffer = "";
      let listening = false;
      p.stderr!.setEncoding("utf8");
      p.stderr!.on("data", (chunk: string) => {
        stderr += chunk;
        if (listening) return;
        buffer += chunk;
        let nl = buffer.indexOf("\n");
        while (nl !== -1) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          nl = buffer.indexOf("\n");
          try {
            const entry = JSON.parse(line) as { msg?: string; url?: string; issuer?: string };
            if (entry.msg === "listening" && entry.url) {
              clearTimeout(timer);
              listening = true;
              url = entry.url;
              issuer = entry.issuer ?? entry.url;
              port = Number(new URL(entry.url).port);
              resolveStart();
              return;
            }
          } catch {
            // not a log line
          }
        }
      });
      p.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`the IdP exited (${code ?? signal}) before listening:\n${stderr.slice(start)}`));
      });
    });
  };

  await launch();
  const handle: IdpHandle = {
    get url() {
      return url;
    },
    get issuer() {
      return issuer;
    },
    dataDir,
    get pid() {
      return proc.pid!;
    },
    async stop() {
      proc.kill("SIGTERM");
      await waitExit(proc);
    },
    async kill(signal: NodeJS.Signals = "SIGKILL") {
      proc.kill(signal);
      await waitExit(proc);
    },
    async restart() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        await waitExit(proc);
      }
      url = "";
      issuer = "";
      await launch();
    },
    logs: () => stderr,
    exitCode: () => proc.exitCode,
  };
  return handle;
}

/** A self-signed certificate for 127.0.0.1 (one day) in dir: the IdP's TLS pair and the CA to trust. */
export function loopbackCert(dir: string): { cert: string; key: string } {
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"].concat([
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      "-keyout",
      key,
      "-out",
      cert,
    ]),
    { stdio: "ignore" },
  );
  return { cert, key };
}

/** A fetch that trusts the CA in `caFile` (a loopback TLS IdP's self-signed certificate). */
export function fetchTrusting(caFile: string): FetchLike {
  const dispatcher = new Agent({ connect: { ca: readFileSync(caFile) } });
  return ((url: string, init?: RequestInit) =>
    undiciFetch(url, { ...(init as object), dispatcher })) as unknown as FetchLike;
}

/**
 * `ca_file` in HOME's config.toml: how a client trusts a loopback TLS IdP's certificate. With `owner`
 * the files belong to that user (the CLI refuses a config another user could have written).
 */
export function trustCaIn(home: string, caFile: string, owner?: { uid: number; gid: number }): void {
  const dir = join(home, ".config", "apes");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.toml"), `ca_file = ${JSON.stringify(caFile)}\n`);
  if (owner)
    for (const p of [join(home, ".config"), dir, join(dir, "config.toml")])
      chownSync(p, owner.uid, owner.gid);
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `dist/apes ...args` and collects its output (never throws on a non-zero exit). */
export async function runApes(argv: string[], env: Record<string, string> = {}): Promise<RunResult> {
  // With the PostgreSQL store, `--data DIR` of an idp command names DIR's database.
  const dir = argv[0] === "idp" || argv.includes("idp") ? argv[argv.indexOf("--data") + 1] : undefined;
  if (dir !== undefined && argv.includes("--data") && testStore() === "postgres") await databaseFor(dir);
  const args = argv.flatMap((a, i) =>
    a === "--data" && databases.has(argv[i + 1]!)
      ? []
      : i > 0 && argv[i - 1] === "--data" && databases.has(a)
        ? databases.get(a)!
        : [a],
  );
  return new Promise((resolveRun) => {
    execFile(apesBin(), args, { env: { ...process.env, ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolveRun({ code, stdout, stderr });
    });
  });
}

export async function addUser(
  dataDir: string,
  email: string,
  options: {
    agent?: boolean;
    owner?: string;
    approvers?: string[];
    publicKey?: string;
    admin?: boolean;
  } = {},
): Promise<void> {
  const args = ["idp", "users", "add", email, options.agent ? "--agent" : "--human", "--data", dataDir];
  if (options.owner) args.push("--owner", options.owner);
  for (const a of options.approvers ?? []) args.push("--approver", a);
  if (options.publicKey) args.push("--key", options.publicKey);
  if (options.admin) args.push("--admin");
  const r = await runApes(args);
  if (r.code !== 0) throw new Error(`apes idp users add ${email} failed (${r.code}): ${r.stderr}`);
}

/** A fresh Ed25519 key pair with its `ssh-ed25519 ...` public line. */
export function newKey(comment = "test"): {
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicLine: string;
} {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return { privateKey, publicKey, publicLine: formatSshPublicKey(publicKey, comment) };
}

export type FetchLike = typeof fetch;

export async function discovery(url: string, f: FetchLike = fetch): Promise<Record<string, string>> {
  const res = await f(`${url}/.well-known/openid-configuration`);
  if (!res.ok) throw new Error(`discovery failed: ${res.status}`);
  return (await res.json()) as Record<string, string>;
}

/**
 * The login signature over `challenge` in the format the IdP advertises (docs/signatures.md): the
 * domain-separated form when offered, else the older raw challenge bytes.
 */
export function loginSignature(
  doc: Record<string, unknown>,
  id: string,
  challenge: string,
  privateKey: KeyObject,
): string {
  const bytes = advertisedFormats(doc).includes(SIGNATURE_FORMAT_V1)
    ? signingInput("login", String(doc.issuer).replace(/\/+$/, ""), id, challenge)
    : Buffer.from(challenge, "utf8");
  return sign(null, bytes, privateKey).toString("base64");
}

/** Challenge/authenticate through the endpoints in discovery; returns the session token. */
export async function loginWithKey(url: string, email: string, privateKey: KeyObject, f: FetchLike = fetch) {
  const d = await discovery(url, f);
  const post = async (endpoint: string, body: unknown) => {
    const res = await f(endpoint, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new Error(`${endpoint}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  const { challenge } = (await post(d.ddisa_auth_challenge_endpoint!, { id: email })) as {
    challenge: string;
  };
  const signature = loginSignature(d, email, challenge, privateKey);
  const { token } = (await post(d.ddisa_auth_authenticate_endpoint!, {
    id: email,
    challenge,
    signature,
  })) as {
    token: string;
  };
  return token;
}

// biome-ignore lint/suspicious/noExplicitAny: response bodies are arbitrary JSON; tests assert their shape.
export type Json = any;

export interface ApiResponse<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
}

/** A tiny JSON client for the IdP's APIs: `api(url, token).post("/api/grants", {...})`. */
export function api(base: string, token?: string, f: FetchLike = fetch) {
  const call = async <T = Json>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<ApiResponse<T>> => {
    const h: Record<string, string> = { ...headers };
    if (token) h.authorization = `Bearer ${token}`;
    if (body !== undefined) h["content-type"] ??= "application/json";
    const res = await f(path.startsWith("http") ? path : base + path, {
      method,
      headers: h,
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // leave as text
    }
    return { status: res.status, headers: res.headers, body: parsed as T };
  };
  return {
    get: <T = Json>(path: string, headers?: Record<string, string>) =>
      call<T>("GET", path, undefined, headers),
    post: <T = Json>(path: string, body?: unknown, headers?: Record<string, string>) =>
      call<T>("POST", path, body ?? {}, headers),
    delete: <T = Json>(path: string, headers?: Record<string, string>) =>
      call<T>("DELETE", path, undefined, headers),
    call,
  };
}

// --- approvals (docs/signatures.md, "Approvals") ---

/**
 * An Ed25519 approval proof by `approver` over `input` (tests tamper with the input to get bad ones);
 * a caller signing many passes its key's fingerprint, computed once, as the CLI does.
 */
export function signApproval(
  input: ApprovalInput,
  approver: string,
  privateKey: KeyObject,
  keyFingerprint = fingerprint(privateKey),
) {
  const signed = approvalSigningInput(input.issuer, approver, approvalDigestHex(input));
  return {
    type: "ed25519" as const,
    key_fingerprint: keyFingerprint,
    signature: sign(null, signed, privateKey).toString("base64"),
  };
}

/** The approval input of `grant` (as fetched) at `issuer` for an approve body's choice. */
export function approvalInputOf(
  issuer: string,
  grant: Json,
  choice: { grant_type?: string; duration?: number | string } = {},
): ApprovalInput {
  const a = effectiveApproval(grant.request, {
    grant_type: choice.grant_type as ApprovalInput["grantType"] | undefined,
    duration: durationSeconds(choice.duration),
  });
  return {
    issuer: issuer.replace(/\/+$/, ""),
    grantId: grant.id,
    type: grant.type,
    request: grant.request,
    decision: "approve",
    grantType: a.grantType,
    duration: a.duration,
  };
}

/**
 * Approves grant `id` as the holder of `token` the way `apes grants approve` does: fetch the grant,
 * sign its approval digest with `privateKey`, send `body` with the proof.
 */
export async function approveWithProof(
  base: string,
  token: string,
  id: string,
  privateKey: KeyObject,
  body: { grant_type?: string; duration?: number | string } = {},
  f: FetchLike = fetch,
): Promise<ApiResponse<Json>> {
  const d = await discovery(base, f);
  const client = api(base, token, f);
  const grant = await client.get(`${d.openape_grants_endpoint}/${id}`);
  if (grant.status !== 200) return grant;
  const approver = String(decodeJwt(token).payload.sub);
  const proof = signApproval(approvalInputOf(d.issuer!, grant.body, body), approver, privateKey);
  return client.post(`${d.openape_grants_endpoint}/${id}/approve`, { ...body, proof });
}

// --- a small organisation for tests ---
/**
 * A small organisation on a real IdP process, shared by the idp-* integration tests:
 * alice owns bot (bob approves bot too), carol owns bot2, dave is unrelated, root is an admin.
 */
export const USERS = {
  alice: "alice@example.com",
  bob: "bob@example.com",
  carol: "carol@example.com",
  dave: "dave@example.com",
  root: "root@example.com",
  bot: "bot@example.com",
  bot2: "bot2@example.com",
} as const;
export type Name = keyof typeof USERS;

export interface World {
  idp: IdpHandle;
  keys: Record<Name, ReturnType<typeof newKey>>;
  tokens: Record<Name, string>;
  as(name: Name): ReturnType<typeof api>;
  /** `name` approves grant `id` with an Ed25519 proof of its own key (approveWithProof). */
  approve(
    name: Name,
    id: string,
    body?: { grant_type?: string; duration?: number | string },
  ): Promise<ApiResponse<Json>>;
  /** `name`'s Ed25519 proof approving `grant` (as fetched or created) with `body`'s choice. */
  proof(name: Name, grant: Json, body?: { grant_type?: string; duration?: number | string }): Json;
  relogin(): Promise<void>;
  grants: string;
  delegations: string;
  discovery: Record<string, string>;
}

export async function startWorld(options: StartIdpOptions = {}): Promise<World> {
  const dataDir = join(mkdtempSync(join(tmpdir(), "apes-idp-world-")), "data");
  const keys = Object.fromEntries(Object.keys(USERS).map((n) => [n, newKey(n)])) as World["keys"];
  await addUser(dataDir, USERS.alice, { publicKey: keys.alice.publicLine });
  await addUser(dataDir, USERS.bob, { publicKey: keys.bob.publicLine });
  await addUser(dataDir, USERS.carol, { publicKey: keys.carol.publicLine });
  await addUser(dataDir, USERS.dave, { publicKey: keys.dave.publicLine, approvers: [USERS.carol] });
  await addUser(dataDir, USERS.root, { publicKey: keys.root.publicLine, admin: true });
  await addUser(dataDir, USERS.bot, {
    agent: true,
    owner: USERS.alice,
    approvers: [USERS.bob],
    publicKey: keys.bot.publicLine,
  });
  await addUser(dataDir, USERS.bot2, { agent: true, owner: USERS.carol, publicKey: keys.bot2.publicLine });
  const idp = await startIdp({ ...options, dataDir });
  const world: World = {
    idp,
    keys,
    tokens: {} as World["tokens"],
    as: (name) => api(idp.url, world.tokens[name]),
    approve: (name, id, body) =>
      approveWithProof(idp.url, world.tokens[name], id, keys[name].privateKey, body),
    proof: (name, grant, body) =>
      signApproval(approvalInputOf(world.discovery.issuer!, grant, body), USERS[name], keys[name].privateKey),
    async relogin() {
      for (const n of Object.keys(USERS) as Name[]) {
        world.tokens[n] = await loginWithKey(idp.url, USERS[n], keys[n].privateKey);
      }
    },
    grants: "",
    delegations: "",
    discovery: {},
  };
  await world.relogin();
  world.discovery = (await api(idp.url).get("/.well-known/openid-configuration")).body;
  world.grants = world.discovery.openape_grants_endpoint!;
  world.delegations = world.discovery.openape_delegations_endpoint!;
  return world;
}

export const ls = (argv: string[] = ["ls", "/root"]) => ({
  target_host: "web1",
  audience: "escapes",
  command: argv,
});
