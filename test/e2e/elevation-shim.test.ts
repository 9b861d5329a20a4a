import { spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { decodeJwt, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import {
  addUser,
  apesBin,
  api,
  type FetchLike,
  fetchTrusting,
  type IdpHandle,
  loginWithKey,
  loopbackCert,
  newKey,
  runApes,
  startIdp,
  trustCaIn,
} from "../helpers/idp.ts";
import {
  type AuditLine,
  collect,
  ensureTestUser,
  installIntoTempPrefix,
  makeUserDir,
  readAudit,
  type ShimInstall,
  spawnAsUser,
  tokenAfterReady,
  type UnixUser,
  writeConfig,
} from "../helpers/shim.ts";

/**
 * The whole elevation path as a user lives it: a REAL non-root user runs the REAL setuid shim
 * (installed into a temporary prefix), which runs the real dist/apes as requester and verifier
 * against the real IdP; a human approves with `apes grants approve`. Then the negative matrix: each
 * case asserts that the command did not run (its marker file stays absent) and that the audit line
 * names the reason.
 *
 * Cases that need a token the honest requester would refuse to deliver (a forged signature, a token
 * for another command, a replay, a revoked or expired grant) use what a local attacker really has:
 * the requester runs as the user with the user's environment, so NODE_OPTIONS=--require makes it
 * hand the shim any token. The verifier (fixed environment, other user) is the boundary under test.
 * The IdP speaks TLS with a self-signed certificate: pinned in the policy, and named as `ca_file` in
 * every client's config.toml (issuers are https only).
 */

const ALICE = "alice@example.com"; // owns the agent; an approver in the policy
const BOB = "bob@example.com"; // an approver of the agent at the IdP, but NOT in the policy
const CAROL = "carol@example.com"; // a human mapped to the test user (self-approval case)
const BOT = "bot@example.com"; // the agent

let inst: ShimInstall;
let user: UnixUser;
let idp: IdpHandle;
let work: string;
let markers: string;
let agentHome: string; // the test user's HOME with the agent's session
let carolHome: string; // the test user's HOME with carol's session
const rootHomes: Record<string, string> = {}; // root-owned sessions: humans approving, bot fetching tokens
let evilPreload: string;
let idpCa: string; // the IdP's certificate (PEM file)
let tlsFetch: FetchLike;
let aliceApi: ReturnType<typeof api>;
let carolApi: ReturnType<typeof api>;

const HOST = hostname();

function policy(over: Record<string, string> = {}): string {
  const keys: Record<string, string> = {
    issuers: JSON.stringify([idp.issuer]),
    approvers: JSON.stringify([ALICE, CAROL]),
    ca_pem: `'''\n${readFileSync(idpCa, "utf8").trim()}\n'''`,
    run_as: JSON.stringify(["root", "nobody"]),
    ...over,
  };
  const users = over.users ?? `"${user.name}" = ${JSON.stringify([BOT, CAROL])}`;
  delete keys.users;
  return `${Object.entries(keys)
    .map(([k, v]) => `${k} = ${v}`)
    .join("\n")}\n[users]\n${users}\n`;
}

function marker(name: string): string {
  return join(markers, name);
}

interface Elevation {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  audit: AuditLine | undefined;
}

/** Runs `apes ARGS` through the shim as the test user; `approve` decides the pending grant meanwhile. */
async function elevate(
  args: string[],
  options: {
    home?: string;
    env?: Record<string, string>;
    decide?: (id: string) => Promise<void>;
    viewer?: ReturnType<typeof api>;
  } = {},
): Promise<Elevation> {
  const before = readAudit(inst).length;
  const child = spawnAsUser(user, [inst.shim, ...args], {
    env: { HOME: options.home ?? agentHome, PATH: "/usr/bin:/bin", LANG: "C.UTF-8", ...options.env },
  });
  const done = collect(child, { timeoutMs: 30_000 });
  if (options.decide) {
    const argv = args.slice(args.indexOf("--") + 1);
    await options.decide(await pendingGrant(argv, options.viewer));
  }
  const r = await done;
  const lines = readAudit(inst);
  return { ...r, audit: lines.length > before ? lines.at(-1) : undefined };
}

/** The id of the pending grant for argv, as alice sees it (bounded wait). */
async function pendingGrant(argv: string[], viewer = aliceApi): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const res = await viewer.get(`${grantsUrl()}?status=pending&limit=100`);
    const found = (res.body?.data ?? []).find(
      (g: { request: { command?: string[] } }) => JSON.stringify(g.request.command) === JSON.stringify(argv),
    );
    if (found) return found.id as string;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no pending grant for ${JSON.stringify(argv)}`);
}

let grantsEndpoint = "";
const grantsUrl = () => grantsEndpoint;

async function decideAs(who: string, action: "approve" | "deny" | "revoke", id: string): Promise<void> {
  const r = await runApes(["grants", action, id], { HOME: rootHomes[who]! });
  expect(r.code, r.stderr).toBe(0);
}
const approveBy = (who: string) => (id: string) => decideAs(who, "approve", id);

/** An approved grant for argv requested by the agent (through its root-owned session), and its AuthZ-JWT. */
async function approvedToken(
  argv: string[],
  extra: string[] = [],
  approver = ALICE,
): Promise<{ id: string; token: string }> {
  const created = await runApes(["--no-wait", "--reason", "e2e", ...extra, "--", ...argv], {
    HOME: rootHomes[BOT]!,
  });
  expect(created.code, created.stderr).toBe(75);
  const id = created.stdout.trim();
  await decideAs(approver, "approve", id);
  const token = await new Promise<string>((resolve, reject) => {
    const p = spawn(apesBin(), ["__request", "--result-fd", "3", "--grant", id, ...extra, "--", ...argv], {
      env: { ...process.env, HOME: rootHomes[BOT]! },
      stdio: ["ignore", "ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    (p.stdio[3] as NodeJS.ReadableStream).on("data", (c: Buffer) => (out += c.toString()));
    p.stderr!.on("data", (c: Buffer) => (err += c.toString()));
    p.on("close", (code) =>
      code === 0 ? resolve(tokenAfterReady(out)) : reject(new Error(`__request failed (${code}): ${err}`)),
    );
  });
  return { id, token };
}

let tokenFiles = 0;
/** Environment that makes the (user-controlled) requester hand the shim `token` instead of asking. */
function evil(token: string): Record<string, string> {
  const file = join(work, `token-${tokenFiles++}`);
  writeFileSync(file, token, { mode: 0o644 });
  return { NODE_OPTIONS: `--require ${evilPreload}`, EVIL_TOKEN: file };
}

function expectDenied(r: Elevation, reason: string, markerFile?: string) {
  expect(r.code, r.stderr).not.toBe(0);
  expect(r.audit?.decision, r.stderr).toBe("deny");
  expect(r.audit?.reason, r.stderr).toBe(reason);
  if (markerFile) expect(existsSync(markerFile)).toBe(false);
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the elevation e2e tests run as root (CI does)");
  inst = await installIntoTempPrefix();
  user = ensureTestUser();
  work = mkdtempSync(join(tmpdir(), "apes-elev-e2e-"));
  chmodSync(work, 0o755);
  markers = join(work, "markers");
  mkdirSync(markers, { mode: 0o755 });
  evilPreload = join(work, "evil.cjs");
  writeFileSync(
    evilPreload,
    `const fs = require("node:fs");
if (process.argv.includes("__request")) {
  fs.writeSync(3, fs.readFileSync(process.env.EVIL_TOKEN, "utf8"));
  process.exit(0);
}
`,
    { mode: 0o644 },
  );

  const data = join(work, "idp");
  const tlsDir = join(work, "tls");
  mkdirSync(tlsDir, { mode: 0o755 });
  const tls = loopbackCert(tlsDir);
  idpCa = tls.cert;
  chmodSync(idpCa, 0o644);
  tlsFetch = fetchTrusting(idpCa);
  const keys = Object.fromEntries([ALICE, BOB, CAROL, BOT].map((e) => [e, newKey(e)]));
  await addUser(data, ALICE, { publicKey: keys[ALICE]!.publicLine });
  await addUser(data, BOB, { publicKey: keys[BOB]!.publicLine });
  await addUser(data, CAROL, { publicKey: keys[CAROL]!.publicLine });
  await addUser(data, BOT, { agent: true, owner: ALICE, approvers: [BOB], publicKey: keys[BOT]!.publicLine });
  idp = await startIdp({ dataDir: data, tls });
  const disc = (await api(idp.url, undefined, tlsFetch).get("/.well-known/openid-configuration")).body;
  grantsEndpoint = disc.openape_grants_endpoint;
  const login = async (e: string) =>
    api(idp.url, await loginWithKey(idp.url, e, keys[e]!.privateKey, tlsFetch), tlsFetch);
  aliceApi = await login(ALICE);
  carolApi = await login(CAROL);

  const pem = (e: string) => keys[e]!.privateKey.export({ type: "pkcs8", format: "pem" }) as string;
  for (const e of [ALICE, BOB, CAROL, BOT]) {
    const home = mkdtempSync(join(work, "root-home-"));
    trustIdpCa(home);
    writeFileSync(join(home, "key.pem"), pem(e), { mode: 0o600 });
    const r = await runApes(["login", e, "--key", join(home, "key.pem"), "--idp", idp.url], { HOME: home });
    expect(r.code, r.stderr).toBe(0);
    rootHomes[e] = home;
  }
  // The test user's own sessions, logged in through the shim (a non-elevation passes straight through).
  const userHome = async (e: string) => {
    const home = makeUserDir(user, work);
    trustIdpCa(home, user);
    writeFileSync(join(home, "key.pem"), pem(e), { mode: 0o600 });
    chownSync(join(home, "key.pem"), user.uid, user.gid);
    const r = await collect(
      spawnAsUser(user, [inst.shim, "login", e, "--key", join(home, "key.pem"), "--idp", idp.url], {
        env: { HOME: home, PATH: "/usr/bin:/bin" },
      }),
    );
    expect(r.code, r.stderr).toBe(0);
    return home;
  };
  agentHome = await userHome(BOT);
  carolHome = await userHome(CAROL);
  writeConfig(inst, policy());
}, 120_000);

const trustIdpCa = (home: string, owner?: UnixUser) => trustCaIn(home, idpCa, owner);

afterAll(async () => {
  await idp?.stop();
  await inst?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("elevation through the setuid shim: approved", () => {
  it("runs `id -u` as root once a human approves, and audits who approved", async () => {
    const r = await elevate(["--reason", "e2e", "--", "id", "-u"], { decide: approveBy(ALICE) });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("0\n");
    expect(r.stderr).toContain("approved by alice@example.com");
    expect(r.stderr).toContain(`who:     ${ALICE} (owner) or ${BOB}`);
    expect(r.audit).toMatchObject({
      decision: "allow",
      user: user.name,
      run_as: "root",
      argv: ["id", "-u"],
      cmd_hash: cmdHash(["id", "-u"]),
      sub: BOT,
      decided_by: ALICE,
      issuer: idp.issuer,
    });
  });

  it("--as nobody runs the command as nobody", async () => {
    const r = await elevate(["--as", "nobody", "--reason", "e2e", "--", "id", "-un"], {
      decide: approveBy(ALICE),
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("nobody\n");
    expect(r.audit).toMatchObject({ decision: "allow", run_as: "nobody" });
  });

  it("`apes run` is the same, and a timed grant is reused without asking again", async () => {
    const argv = ["id", "-g"];
    const first = await elevate(
      ["run", "--approval", "timed", "--duration", "10m", "--reason", "e2e", "--", ...argv],
      {
        decide: approveBy(ALICE),
      },
    );
    expect(first.stdout).toBe("0\n");
    const again = await elevate(["--approval", "timed", "--duration", "10m", "--", ...argv]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe("0\n");
    expect(again.stderr).toContain("using timed grant");
    expect(again.audit?.grant_id).toBe(first.audit?.grant_id);
  });
});

describe("apes trust through the installed shim", () => {
  it("as root writes the installation's policy (paths.json), 0600 root, and the next elevation uses it", async () => {
    // make install wrote paths.json next to the executable: that is how `apes trust` finds SYSCONFDIR.
    const pathsJson = join(inst.prefix, "libexec", "apes", "paths.json");
    expect(JSON.parse(readFileSync(pathsJson, "utf8"))).toEqual({
      prefix: inst.prefix,
      sysconfdir: inst.etc,
      localstatedir: inst.var,
    });
    expect(statSync(pathsJson).uid).toBe(0);
    try {
      rmSync(inst.config);
      const args = ["trust", "--idp", idp.url, "--ca-file", idpCa, "--approvers", `${ALICE},${CAROL}`];
      args.push("--map", `${user.name}=${BOT},${CAROL}`, "--run-as", "root,nobody");
      const r = await collect(spawn(inst.shim, args, { env: { PATH: "/usr/bin:/bin", HOME: work } }));
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toContain("discovery and JWKS ok");
      const st = statSync(inst.config);
      expect([st.uid, st.mode & 0o777]).toEqual([0, 0o600]);
      const shown = await collect(
        spawn(inst.shim, ["trust", "--show", "--json"], { env: { PATH: "/usr/bin:/bin", HOME: work } }),
      );
      expect(JSON.parse(shown.stdout)).toMatchObject({
        path: inst.config,
        insecure: null,
        policy: { run_as: ["root", "nobody"] },
      });
      const ok = await elevate(["--reason", "e2e", "--", "id", "-u"], { decide: approveBy(ALICE) });
      expect(ok.stdout).toBe("0\n");
    } finally {
      writeConfig(inst, policy());
    }
  });

  it("as the user is refused (77) and leaves the policy alone", async () => {
    const before = readFileSync(inst.config, "utf8");
    const r = await collect(
      spawnAsUser(
        user,
        [inst.shim, "trust", "--idp", idp.url, "--approvers", BOT, "--map", `${user.name}=${BOT}`],
        {
          env: { HOME: agentHome, PATH: "/usr/bin:/bin" },
        },
      ),
    );
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("run it as root");
    expect(readFileSync(inst.config, "utf8")).toBe(before);
  });
});

describe("elevation through the setuid shim: nothing runs when", () => {
  it("the approver denies", async () => {
    const m = marker("denied");
    const r = await elevate(["--reason", "e2e", "--", "touch", m], {
      decide: (id) => decideAs(ALICE, "deny", id),
    });
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("denied by alice@example.com");
    // The requester reports "grant_denied" on its pipe; a shim that audits it says requester_grant_denied.
    expect(r.audit?.reason).toBe("requester_grant_denied");
    expect(r.audit?.decision).toBe("deny");
    expect(existsSync(m)).toBe(false);
  });

  it("the grant is never approved: --no-wait, then --grant of the still pending grant", async () => {
    const m = marker("never");
    const first = await elevate(["--no-wait", "--reason", "e2e", "--", "touch", m]);
    expect(first.code).toBe(75);
    expect(first.audit?.decision).toBe("pending");
    const id = first.stdout.trim();
    expect(first.stderr).toContain(`apes --grant ${id} -- touch ${m}`);
    const second = await elevate(["--grant", id, "--timeout", "1s", "--", "touch", m]);
    expect(second.code).toBe(75);
    expect(second.audit?.decision).toBe("pending");
    expect(existsSync(m)).toBe(false);
  });

  it("the grant was revoked after approval (the verifier's consume refuses it)", async () => {
    const m = marker("revoked");
    const { id, token } = await approvedToken(["touch", m]);
    await decideAs(ALICE, "revoke", id);
    const r = await elevate(["--", "touch", m], { env: evil(token) });
    expectDenied(r, "grant_not_usable", m);
    expect(r.stderr).toContain("revoked");
  });

  it("the JWT is signed by a foreign key under the IdP's kid", async () => {
    const m = marker("forged");
    const { token } = await approvedToken(["touch", m]);
    const [h, p] = token.split(".");
    const forged = await new SignJWT(JSON.parse(Buffer.from(p!, "base64url").toString()))
      .setProtectedHeader(JSON.parse(Buffer.from(h!, "base64url").toString()))
      .sign(generateKeyPairSync("ed25519").privateKey);
    expectDenied(await elevate(["--", "touch", m], { env: evil(forged) }), "signature_invalid", m);
  });

  it("the argv differs in one argument from the approved one", async () => {
    const { token } = await approvedToken(["touch", marker("approved-one")]);
    const m = marker("other-one");
    expectDenied(await elevate(["--", "touch", m], { env: evil(token) }), "command_mismatch", m);
    expect(existsSync(marker("approved-one"))).toBe(false);
  });

  it('["a b"] was approved and ["a","b"] is asked for', async () => {
    const a = marker("a");
    const b = marker("b");
    const { token } = await approvedToken(["touch", `${a} ${b}`]);
    const r = await elevate(["--", "touch", a, b], { env: evil(token) });
    expectDenied(r, "command_mismatch", a);
    expect(existsSync(b)).toBe(false);
  });

  it("a once grant is replayed", async () => {
    const m = marker("replay");
    const { token } = await approvedToken(["touch", m]);
    const first = await elevate(["--", "touch", m], { env: evil(token) });
    expect(first.code, first.stderr).toBe(0);
    expect(existsSync(m)).toBe(true);
    rmSync(m);
    const again = await elevate(["--", "touch", m], { env: evil(token) });
    expectDenied(again, "grant_not_usable", m);
    expect(again.stderr).toContain("already_consumed");
  });

  it("a timed grant has expired", async () => {
    const m = marker("expired");
    // The window starts at approval, and fetching the token after it takes a few process starts:
    // leave it ample room on a loaded machine, then wait for the token's own exp to pass.
    const timed = ["--approval", "timed", "--duration", "5s"];
    const { token } = await approvedToken(["touch", m], timed);
    const exp = decodeJwt(token).exp!;
    await new Promise((r) => setTimeout(r, Math.max(0, exp * 1000 - Date.now()) + 1100));
    const r = await elevate([...timed, "--", "touch", m], {
      env: evil(token),
    });
    expectDenied(r, "grant_not_usable", m);
    expect(r.stderr).toContain("expired");
  });

  it("the requester approved its own grant (a human mapped to the user)", async () => {
    const m = marker("self");
    const r = await elevate(["--reason", "e2e", "--", "touch", m], {
      home: carolHome,
      viewer: carolApi,
      decide: approveBy(CAROL),
    });
    expectDenied(r, "self_approval", m);
  });

  it("the approver is not an approver in the policy", async () => {
    const m = marker("bob");
    expectDenied(
      await elevate(["--reason", "e2e", "--", "touch", m], { decide: approveBy(BOB) }),
      "approver_not_allowed",
      m,
    );
  });

  it("run_as is not allowed by the policy", async () => {
    writeConfig(inst, policy({ run_as: JSON.stringify(["root"]) }));
    try {
      const m = marker("runas");
      const r = await elevate(["--as", "nobody", "--reason", "e2e", "--", "touch", m], {
        decide: approveBy(ALICE),
      });
      expectDenied(r, "run_as_not_allowed", m);
    } finally {
      writeConfig(inst, policy());
    }
  });

  for (const [name, over, reason] of [
    [
      "the issuer is not allowed",
      { issuers: JSON.stringify(["https://id.other.example"]) },
      "issuer_not_allowed",
    ],
    ["the audience is not accepted", { audiences: JSON.stringify(["ops"]) }, "audience_not_allowed"],
    ["the grant is for another host", { host: JSON.stringify(`not-${HOST}`) }, "host_mismatch"],
    [
      "the identity is not mapped to the user",
      { users: `"${user?.name ?? "apes-e2e"}" = ["${CAROL}"]` },
      "identity_not_mapped",
    ],
  ] as const) {
    it(name, async () => {
      writeConfig(inst, policy(over));
      try {
        const m = marker(reason);
        expectDenied(
          await elevate(["--reason", "e2e", "--", "touch", m], { decide: approveBy(ALICE) }),
          reason,
          m,
        );
      } finally {
        writeConfig(inst, policy());
      }
    });
  }

  // A group-writable, foreign-owned, symlinked or missing policy: covered in shim-install.test.ts
  // (config_insecure / config_missing), not duplicated here.

  it("the requester is SIGKILLed while waiting (and a later approval runs nothing)", async () => {
    const m = marker("killed");
    const before = readAudit(inst).length;
    // The one-shot requester process itself (a warm requester would revoke the grant when its
    // client dies: the Ctrl-C test below covers that path).
    const child = spawnAsUser(user, [inst.shim, "--reason", "e2e", "--", "touch", m], {
      env: { HOME: agentHome, PATH: "/usr/bin:/bin", APES_KEEP_WARM: "0" },
    });
    const done = collect(child);
    const id = await pendingGrant(["touch", m]);
    const requester = await childOf(child.pid!);
    process.kill(requester, "SIGKILL");
    const r = await done;
    expect(r.code).not.toBe(0);
    await decideAs(ALICE, "approve", id);
    await new Promise((res) => setTimeout(res, 300));
    expect(existsSync(m)).toBe(false);
    expect(readAudit(inst).slice(before)).toEqual([
      expect.objectContaining({ decision: "deny", reason: "requester_failed" }),
    ]);
  });

  it("Ctrl-C while waiting cancels the grant and exits 130", async () => {
    const m = marker("interrupted");
    const child = spawnAsUser(user, [inst.shim, "--reason", "e2e", "--", "touch", m], {
      env: { HOME: agentHome, PATH: "/usr/bin:/bin" },
    });
    const done = collect(child);
    const id = await pendingGrant(["touch", m]);
    process.kill(await childOf(child.pid!), "SIGINT");
    const r = await done;
    expect(r.code).toBe(130);
    expect(r.stderr).toContain("cancelled");
    const g = await aliceApi.get(`${grantsUrl()}/${id}`);
    expect(g.body.status).toBe("revoked");
    expect(existsSync(m)).toBe(false);
  });
});

/**
 * The requester: the shim's child running `__request`, or relaying to the caller's warm requester
 * (the shim's own program, as the caller). The other child is the verifier (as _apes), which the
 * shim starts first and which waits for its request line. Bounded wait for it to appear.
 */
async function childOf(pid: number): Promise<number> {
  const { readFileSync } = await import("node:fs");
  for (let i = 0; i < 100; i++) {
    try {
      const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
        .trim()
        .split(/\s+/)
        .filter(Boolean);
      const requester = kids.find((k) => {
        const argv = readFileSync(`/proc/${k}/cmdline`, "utf8").split("\0");
        const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${k}/status`, "utf8"))?.[1]);
        return argv[1] === "__request" || (uid === user.uid && argv[0] === inst.shim);
      });
      if (requester) return Number(requester);
    } catch {
      // not yet (or a child ended between listing and reading)
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no requester child of ${pid}`);
}
