import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExitCode } from "../../cli/exit-codes.ts";
import { CLOSE } from "../../protocol/troop.ts";
import {
  addUser,
  api,
  fetchTrusting,
  type IdpHandle,
  loopbackCert,
  runApes,
  startIdp,
} from "../helpers/idp.ts";
import { connectNest, startTroop, TROOP_AUDIENCE, type TroopHandle } from "../helpers/troop.ts";
import { type CliUser, cliUser, jwtClaims } from "./cli-helpers.ts";

/**
 * The troop from the command line: a nest identity and its owner log in with `apes login`, get
 * their tokens for the troop with `apes token exchange --audience` (no delegation: their own
 * identity), and use them on the socket and the REST API; `apes troop serve` refuses bad options
 * and stops gracefully on SIGTERM.
 */
let idp: IdpHandle;
let troop: TroopHandle;
let alice: CliUser;
let nest: CliUser;

beforeAll(async () => {
  idp = await startIdp();
  alice = cliUser("alice@example.com", idp.url);
  nest = cliUser("nest-web1@example.com", idp.url);
  await addUser(idp.dataDir, alice.email, { publicKey: alice.publicLine });
  await addUser(idp.dataDir, nest.email, { agent: true, owner: alice.email, publicKey: nest.publicLine });
  for (const u of [alice, nest]) {
    const r = await u.run(["login", u.email]);
    if (r.code !== 0) throw new Error(`login ${u.email}: ${r.stderr}`);
  }
  troop = await startTroop(idp.issuer);
});
afterAll(async () => {
  await troop?.stop();
  await idp?.stop();
});

describe("apes token exchange --audience and apes troop serve", () => {
  it("an own token for the troop from the CLI opens the nest socket; the owner submits with hers", async () => {
    const t = await nest.run(["token", "exchange", "--audience", TROOP_AUDIENCE]);
    expect(t.code, t.stderr).toBe(0);
    const token = t.stdout.trim();
    expect(jwtClaims(token)).toMatchObject({
      sub: nest.email,
      aud: TROOP_AUDIENCE,
      act: "agent",
      owner: alice.email,
    });
    const r = await connectNest(troop.wsUrl, token);
    if (!r.ok) throw new Error(`refused ${r.status} ${r.body}`);
    expect((await r.nest.next("hello")).nest).toBe(nest.email);
    const mine = (await alice.run(["token", "exchange", "--audience", TROOP_AUDIENCE])).stdout.trim();
    const submitted = await api(troop.url, mine).post("/v1/intents", {
      id: "cli-1",
      nest: nest.email,
      kind: "pause",
      agent: "worker",
    });
    expect(submitted.status).toBe(201);
    expect((await r.nest.next("intent")).intent).toMatchObject({ id: "cli-1", submitted_by: alice.email });
    // SIGTERM: the socket is closed with 1001 and the troop exits 0 after "stopped".
    const stopped = troop.stop();
    expect((await r.nest.closed).code).toBe(CLOSE.goingAway);
    expect(await stopped).toEqual({ code: 0, signal: null });
    expect(troop.logs()).toMatch(/"msg":"stopped"/);
    const audit = readFileSync(join(troop.dataDir, "audit.log"), "utf8");
    expect(audit).toContain('"event":"intent.submitted"');
    await troop.restart();
  });

  it("tokens not seen before count against the client's address: a flood of made-up ones gets 429", async () => {
    const limited = await startTroop(idp.issuer, { extraArgs: ["--auth-rate-limit", "3/1m"] });
    try {
      const good = (await nest.run(["token", "exchange", "--audience", TROOP_AUDIENCE])).stdout.trim();
      expect((await api(limited.url, good).get("/v1/nests")).status).toBe(200); // 1 of 3
      // Verified before: no longer counted.
      for (let i = 0; i < 5; i++) expect((await api(limited.url, good).get("/v1/nests")).status).toBe(200);
      const [h, p] = good.split(".");
      expect((await api(limited.url, `${h}.${p}.AAAA`).get("/v1/nests")).status).toBe(401);
      expect((await api(limited.url, `${h}.${p}.AAAB`).get("/v1/nests")).status).toBe(401);
      expect((await api(limited.url, `${h}.${p}.AAAC`).get("/v1/nests")).status).toBe(429);
      expect(await connectNest(limited.wsUrl, `${h}.${p}.AAAD`)).toMatchObject({ ok: false, status: 429 });
    } finally {
      await limited.stop();
    }
  });

  it("serves wss and https with --tls-cert/--tls-key", async () => {
    const tls = loopbackCert(mkdtempSync(join(tmpdir(), "apes-troop-tls-")));
    const secure = await startTroop(idp.issuer, {
      extraArgs: ["--tls-cert", tls.cert, "--tls-key", tls.key],
    });
    try {
      expect(secure.url).toMatch(/^https:/);
      const token = (await nest.run(["token", "exchange", "--audience", TROOP_AUDIENCE])).stdout.trim();
      const r = await connectNest(secure.wsUrl, token, { ca: readFileSync(tls.cert) });
      if (!r.ok) throw new Error(`refused ${r.status}`);
      expect((await r.nest.next("hello")).nest).toBe(nest.email);
      const nests = await api(secure.url, token, fetchTrusting(tls.cert)).get("/v1/nests");
      expect(nests.body.data[0]).toMatchObject({ id: nest.email, connected: true });
      r.nest.close();
    } finally {
      await secure.stop();
    }
  });

  it("refuses bad options with the usage exit code", async () => {
    for (const args of [
      ["--client-id", "apes-cli", "--idp", idp.issuer],
      ["--client-id", "*", "--idp", idp.issuer],
      ["--client-id", "t", "--idp", "ftp://x"],
      ["--client-id", "t", "--idp", idp.issuer, "--ping-interval", "0s"],
      ["--client-id", "t", "--idp", idp.issuer, "--auth-rate-limit", "lots"],
      ["--client-id", "t", "--idp", idp.issuer, "--clock-skew", "1h"],
      ["--client-id", "t", "--idp", idp.issuer, "--listen", "nowhere"],
      ["--idp", idp.issuer],
    ]) {
      const r = await runApes(["troop", "serve", ...args]);
      expect(r.code, args.join(" ")).toBe(ExitCode.USAGE);
    }
  });
});
