import { sign } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { loadSchemas } from "../../protocol/schemas.ts";
import { api, ls, startWorld, USERS, type World } from "../helpers/idp.ts";

const schemas = loadSchemas();

function claimsOf(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString("utf8"));
}
function headerOf(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split(".")[0]!, "base64url").toString("utf8"));
}

/** Every problem body must validate against error.json. */
function expectProblem(
  r: { status: number; body: unknown; headers: Headers },
  status: number,
  code?: string,
) {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(r.headers.get("content-type")).toMatch(/^application\/problem\+json/);
  schemas.assert("error", r.body);
  if (code) expect((r.body as { type: string }).type).toBe(`https://openape.org/errors/${code}`);
}

describe("idp grants API", () => {
  let w: World;
  beforeAll(async () => {
    w = await startWorld();
  });
  afterAll(async () => {
    await w?.idp.stop();
  });

  const create = async (
    who: "bot" | "bot2" | "alice" | "dave" = "bot",
    body: Record<string, unknown> = ls(),
  ) => {
    const r = await w.as(who).post(w.grants, { grant_type: "once", ...body });
    expect([200, 201], JSON.stringify(r.body)).toContain(r.status);
    schemas.assert("grant", r.body);
    return r.body as { id: string; status: string; request: Record<string, unknown> };
  };

  describe("what the approver reads", () => {
    it("refuses control, bidi and invisible characters outside command, naming the field (400)", async () => {
      for (const [field, value] of [
        ["reason", "deploy\x1b[2K"],
        ["audience", "escapes\u202e"],
        ["target_host", "web1\u200d"],
        ["run_as", "root\r"],
        ["permissions", ["read", "write\x9b"]],
      ] as const) {
        const r = await w.as("bot").post(w.grants, { grant_type: "once", ...ls(), [field]: value });
        expectProblem(r, 400, "invalid_request");
        const name = field === "permissions" ? "permissions[1]" : field;
        expect((r.body as { detail: string }).detail).toMatch(
          new RegExp(`^${name.replace(/[[\]]/g, "\\$&")} contains control`),
        );
      }
    });

    it("accepts them in command, and logs the grant as shown escaped", async () => {
      const g = await create("bot", ls(["sh", "-c", "echo a\nrm -rf /x\x1b[1A"]));
      expect(g.request.command).toEqual(["sh", "-c", "echo a\nrm -rf /x\x1b[1A"]);
      const line = w.idp
        .logs()
        .split("\n")
        .find((l) => l.includes(g.id) && l.includes("shown escaped"));
      expect(JSON.parse(line ?? "{}")).toMatchObject({
        level: "warn",
        grant: g.id,
        warning: "warning: this command contains control or invisible characters (shown escaped)",
      });
      const plain = await create("bot", ls(["ls", "-l"]));
      expect(w.idp.logs()).not.toMatch(new RegExp(`${plain.id}.*shown escaped`));
    });
  });

  describe("lifecycle", () => {
    it("create -> approve -> token -> consume (once)", async () => {
      const g = await create("bot", {
        ...ls(["systemctl", "restart", "nginx"]),
        reason: "deploy",
        run_as: "root",
      });
      expect(g.status).toBe("pending");
      expect(g.request.requester).toBe(USERS.bot);
      expect(g.request.cmd_hash).toBe(cmdHash(["systemctl", "restart", "nginx"]));

      const a = await w.approve("alice", g.id);
      expect(a.status).toBe(200);
      schemas.assert("grant", a.body);
      expect(a.body).toMatchObject({ status: "approved", decided_by: USERS.alice });
      expect(typeof a.body.decided_at).toBe("number");
      expect(a.body.expires_at).toBeUndefined();

      const t = await w.as("bot").post(`${w.grants}/${g.id}/token`);
      expect(t.status).toBe(200);
      schemas.assert("grant", t.body.grant);
      const claims = claimsOf(t.body.authz_jwt);
      schemas.assert("authz-jwt-claims", claims);
      expect(claims).toMatchObject({
        iss: w.idp.issuer,
        sub: USERS.bot,
        aud: "escapes",
        target_host: "web1",
        grant_id: g.id,
        grant_type: "once",
        approval: "once",
        command: ["systemctl", "restart", "nginx"],
        cmd_hash: cmdHash(["systemctl", "restart", "nginx"]),
        run_as: "root",
        decided_by: USERS.alice,
      });
      expect((claims.exp as number) - (claims.iat as number)).toBe(300);
      expect(typeof headerOf(t.body.authz_jwt).kid).toBe("string");

      const v = await api(w.idp.url).post(`${w.grants}/verify`, { token: t.body.authz_jwt });
      expect(v.body).toMatchObject({ valid: true, claims: { grant_id: g.id } });

      const c = await api(w.idp.url, t.body.authz_jwt).post(`${w.grants}/${g.id}/consume`);
      expect(c.status).toBe(200);
      expect(c.body.status).toBe("consumed");
      const again = await api(w.idp.url, t.body.authz_jwt).post(`${w.grants}/${g.id}/consume`);
      expect(again.status).toBe(409);
      expect(again.body).toMatchObject({ error: "already_consumed", status: "used" });

      const after = await w.as("bot").get(`${w.grants}/${g.id}`);
      schemas.assert("grant", after.body);
      expect(after.body.status).toBe("used");
      expect(typeof after.body.used_at).toBe("number");
      const v2 = await api(w.idp.url).post(`${w.grants}/verify`, { token: t.body.authz_jwt });
      expect(v2.body).toMatchObject({ valid: false, error: "already_consumed" });
    });

    it("timed: needs duration, sets expires_at, AuthZ-JWT exp = expires_at, consume stays valid", async () => {
      const missing = await w.as("bot").post(w.grants, { ...ls(), grant_type: "timed" });
      expectProblem(missing, 400, "invalid_request");
      const g = await create("bot", { ...ls(["uptime"]), grant_type: "timed", duration: 600 });
      const a = await w.approve("alice", g.id);
      expect(a.body.expires_at).toBe(a.body.decided_at + 600);
      const t = await w.as("bot").post(`${w.grants}/${g.id}/token`);
      const claims = claimsOf(t.body.authz_jwt);
      schemas.assert("authz-jwt-claims", claims);
      expect(claims.exp).toBe(a.body.expires_at);
      for (let i = 0; i < 2; i++) {
        const c = await api(w.idp.url, t.body.authz_jwt).post(`${w.grants}/${g.id}/consume`);
        expect(c.status).toBe(200);
        expect(c.body.status).toBe("valid");
      }
    });

    it("always: AuthZ-JWT lives 3600 s; an exactly matching request reuses it (200)", async () => {
      const body = { ...ls(["journalctl", "-u", "nginx"]), grant_type: "always", run_as: "root" };
      const g = await create("bot", body);
      await w.approve("alice", g.id);
      const t = await w.as("bot").post(`${w.grants}/${g.id}/token`);
      const claims = claimsOf(t.body.authz_jwt);
      expect((claims.exp as number) - (claims.iat as number)).toBe(3600);

      const reuse = await w.as("bot").post(w.grants, { ...body, grant_type: "once" });
      expect(reuse.status).toBe(200);
      expect(reuse.body.id).toBe(g.id);
      // Any difference (run_as, host, audience, command) is a new request.
      for (const diff of [
        { run_as: "www" },
        { target_host: "web2" },
        { audience: "proxy" },
        { command: ["journalctl"] },
      ]) {
        const r = await w.as("bot").post(w.grants, { ...body, ...diff });
        expect(r.status, JSON.stringify(diff)).toBe(201);
        expect(r.body.id).not.toBe(g.id);
      }
      // Another requester never reuses it.
      const other = await w.as("bot2").post(w.grants, body);
      expect(other.status).toBe(201);
    });

    it("`Prefer: authz-jwt` on a read: the requester's AuthZ-JWT with its approved grant, in the long poll the approval wakes", async () => {
      const g = await create("bot", ls(["echo", "folded into a read"]));
      expect(g.status).toBe("pending");
      const url = `${w.grants}/${g.id}`;
      // Pending: the grant alone, the preference not applied.
      const pending = await w.as("bot").get(url, { prefer: "authz-jwt" });
      expect(pending.status).toBe(200);
      schemas.assert("grant", pending.body);
      expect(pending.headers.get("preference-applied")).toBeNull();
      // A long poll parked on the pending grant, answered by the approval with the token in it.
      const waiting = w
        .as("bot")
        .get(url, { prefer: "wait=20, authz-jwt", "if-none-match": pending.headers.get("etag")! });
      await new Promise((r) => setTimeout(r, 100));
      await w.approve("alice", g.id);
      const woken = await waiting;
      expect(woken.status).toBe(200);
      expect(woken.headers.get("preference-applied")).toBe("wait=20, authz-jwt");
      schemas.assert("grant", woken.body.grant);
      expect(woken.body.grant).toMatchObject({ id: g.id, status: "approved" });
      schemas.assert("authz-jwt-claims", claimsOf(woken.body.authz_jwt));
      expect(claimsOf(woken.body.authz_jwt)).toMatchObject({ grant_id: g.id, sub: "bot@example.com" });
      // The approver reads the same grant with the same preference: the grant alone (not the requester).
      const byAlice = await w.as("alice").get(url, { prefer: "authz-jwt" });
      expect(byAlice.status).toBe(200);
      schemas.assert("grant", byAlice.body);
      expect(byAlice.headers.get("preference-applied")).toBeNull();
      // Without the preference: the grant alone, as before.
      const plain = await w.as("bot").get(url);
      schemas.assert("grant", plain.body);
      expect(JSON.stringify(plain.body)).not.toContain("authz_jwt");
      // The folded token is a real one: it consumes the once grant.
      const c = await api(w.idp.url, woken.body.authz_jwt).post(`${url}/consume`);
      expect(c.status).toBe(200);
      expect(c.body.status).toBe("consumed");
    });

    it("`Prefer: authz-jwt` folds the requester's AuthZ-JWT into a reuse answer, and into nothing else on a create", async () => {
      const body = {
        ...ls(["journalctl", "-u", "sshd"]),
        grant_type: "timed",
        duration: 600,
        run_as: "root",
      };
      const prefer = { prefer: "authz-jwt" };
      // Pending (201): no token, the preference not applied.
      const pending = await w.as("bot").post(w.grants, body, prefer);
      expect(pending.status).toBe(201);
      expect(pending.headers.get("preference-applied")).toBeNull();
      schemas.assert("grant", pending.body);
      expect(JSON.stringify(pending.body)).not.toContain("authz_jwt");
      await w.approve("alice", pending.body.id);

      const folded = await w.as("bot").post(w.grants, body, prefer);
      expect(folded.status).toBe(200);
      expect(folded.headers.get("preference-applied")).toBe("authz-jwt");
      schemas.assert("grant", folded.body.grant);
      expect(folded.body.grant.id).toBe(pending.body.id);
      // The token endpoint's token: the same claims but its own jti (and iat).
      const t = await w.as("bot").post(`${w.grants}/${pending.body.id}/token`);
      const { jti: j1, iat: i1, ...c1 } = claimsOf(folded.body.authz_jwt);
      const { jti: j2, iat: i2, ...c2 } = claimsOf(t.body.authz_jwt);
      expect(c1).toEqual(c2);
      expect(j1).not.toBe(j2);
      expect(headerOf(folded.body.authz_jwt)).toEqual(headerOf(t.body.authz_jwt));
      const c = await api(w.idp.url, folded.body.authz_jwt).post(`${w.grants}/${pending.body.id}/consume`);
      expect(c.status).toBe(200);
      expect(c.body.status).toBe("valid");
      // Without the preference: the grant alone, as before.
      const plain = await w.as("bot").post(w.grants, body);
      expect(plain.status).toBe(200);
      expect(plain.headers.get("preference-applied")).toBeNull();
      schemas.assert("grant", plain.body);
      expect(JSON.stringify(plain.body)).not.toContain("authz_jwt");
      // Another requester asking the same never reuses it, so never gets its token.
      const other = await w.as("bot2").post(w.grants, body, prefer);
      expect(other.status).toBe(201);
      expect(JSON.stringify(other.body)).not.toContain("authz_jwt");
    });

    it("approve may override grant_type and duration", async () => {
      const g = await create("bot", { ...ls(["df", "-h"]), grant_type: "always" });
      const bad = await w.approve("alice", g.id, { grant_type: "timed" });
      expectProblem(bad, 400, "invalid_request");
      const a = await w.approve("alice", g.id, { grant_type: "timed", duration: "30m" });
      expect(a.status).toBe(200);
      schemas.assert("grant", a.body);
      expect(a.body.request).toMatchObject({ grant_type: "timed", duration: 1800 });
      expect(a.body.approval_proof).toBe("ed25519");
      expect(a.body.expires_at).toBe(a.body.decided_at + 1800);
    });

    it("deny and revoke; consuming denied and revoked grants fails", async () => {
      const d = await create();
      const r = await w.as("bob").post(`${w.grants}/${d.id}/deny`);
      expect(r.body).toMatchObject({ status: "denied", decided_by: USERS.bob });
      const tok = await w.as("bot").post(`${w.grants}/${d.id}/token`);
      expectProblem(tok, 409, "invalid_state");

      const g = await create();
      await w.approve("alice", g.id);
      const t = await w.as("bot").post(`${w.grants}/${g.id}/token`);
      const rv = await w.as("alice").post(`${w.grants}/${g.id}/revoke`);
      expect(rv.body.status).toBe("revoked");
      const c = await api(w.idp.url, t.body.authz_jwt).post(`${w.grants}/${g.id}/consume`);
      expect(c.status).toBe(409);
      expect(c.body).toMatchObject({ error: "revoked", status: "revoked" });
      // revoked is final
      expectProblem(await w.as("alice").post(`${w.grants}/${g.id}/revoke`), 409, "invalid_state");
      expectProblem(await w.approve("alice", g.id), 409, "invalid_state");
    });

    it("the requester may cancel its own pending grant; others may not revoke a pending one", async () => {
      const g = await create();
      expectProblem(await w.as("alice").post(`${w.grants}/${g.id}/revoke`), 409, "invalid_state");
      const r = await w.as("bot").post(`${w.grants}/${g.id}/revoke`);
      expect(r.body.status).toBe("revoked");
    });

    it("a human's own grant: decided by itself, its approvers or an admin, not by others", async () => {
      const g = await create("dave");
      // Not visible to alice: refused before any proof is looked at.
      expectProblem(await w.as("alice").post(`${w.grants}/${g.id}/approve`), 404, "not_found");
      const byApprover = await w.approve("carol", g.id);
      expect(byApprover.body).toMatchObject({ status: "approved", decided_by: USERS.carol });
      const g2 = await create("dave", ls(["id"]));
      expect((await w.as("root").post(`${w.grants}/${g2.id}/deny`)).body.status).toBe("denied");
      const g3 = await create("dave", ls(["whoami"]));
      expect((await w.approve("dave", g3.id)).body.decided_by).toBe(USERS.dave);
    });

    it("expires a timed grant on read once expires_at has passed", async () => {
      // 2 s leaves room for approve + token on a loaded machine before the window closes.
      const g = await create("bot", { ...ls(["sleep", "1"]), grant_type: "timed", duration: 2 });
      await w.approve("alice", g.id);
      const t = await w.as("bot").post(`${w.grants}/${g.id}/token`);
      // Wait (bounded) for the second to pass, using long-poll on the grant instead of sleeping blindly.
      let status = "approved";
      for (let i = 0; i < 15 && status === "approved"; i++) {
        const r = await w.as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=1" });
        status = r.body.status;
      }
      expect(status).toBe("expired");
      // The AuthZ-JWT of a timed grant expires with the grant.
      const c = await api(w.idp.url, t.body.authz_jwt).post(`${w.grants}/${g.id}/consume`);
      expectProblem(c, 401, "invalid_token");
      expect(c.body.reason).toBe("expired");
      const v = await api(w.idp.url).post(`${w.grants}/verify`, { token: t.body.authz_jwt });
      expect(v.body).toMatchObject({ valid: false, error: "expired" });
      expectProblem(await w.as("bot").post(`${w.grants}/${g.id}/token`), 409, "invalid_state");
      schemas.assert("grant", (await w.as("bot").get(`${w.grants}/${g.id}`)).body);
    });
  });

  describe("reads", () => {
    it("ETag and If-None-Match -> 304", async () => {
      const g = await create();
      const r = await w.as("bot").get(`${w.grants}/${g.id}`);
      const etag = r.headers.get("etag")!;
      expect(etag).toBeTruthy();
      const same = await w.as("bot").get(`${w.grants}/${g.id}`, { "if-none-match": etag });
      expect(same.status).toBe(304);
      await w.approve("alice", g.id);
      const changed = await w.as("bot").get(`${w.grants}/${g.id}`, { "if-none-match": etag });
      expect(changed.status).toBe(200);
      expect(changed.headers.get("etag")).not.toBe(etag);
    });

    it("lists visible grants only: own, owned/approved agents', all for admins", async () => {
      const g2 = await create("bot2", ls(["visible-test"]));
      const ids = async (who: "bot" | "alice" | "bob" | "carol" | "root" | "dave") =>
        ((await w.as(who).get(`${w.grants}?limit=100`)).body.data as { id: string }[]).map((g) => g.id);
      expect(await ids("carol")).toContain(g2.id);
      expect(await ids("root")).toContain(g2.id);
      for (const who of ["bot", "alice", "bob", "dave"] as const) expect(await ids(who)).not.toContain(g2.id);
      const botList = (await w.as("alice").get(`${w.grants}?requester=${USERS.bot}&limit=100`)).body;
      for (const g of botList.data) {
        schemas.assert("grant", g);
        expect(g.request.requester).toBe(USERS.bot);
      }
      const none = await w.as("alice").get(`${w.grants}?requester=${USERS.bot2}`);
      expect(none.body.data).toEqual([]);
      const pending = await w.as("carol").get(`${w.grants}?status=pending`);
      expect(pending.body.data.every((g: { status: string }) => g.status === "pending")).toBe(true);
    });

    it("paginates newest first with a stable cursor and no skipped rows", async () => {
      const made: string[] = [];
      for (let i = 0; i < 23; i++) made.push((await create("bot2", ls(["page", String(i)]))).id);
      const seen: string[] = [];
      let cursor: string | null = null;
      for (let pageNo = 0; pageNo < 20; pageNo++) {
        const q: string = `${w.grants}?requester=${USERS.bot2}&limit=5${cursor ? `&cursor=${cursor}` : ""}`;
        const r = await w.as("carol").get(q);
        expect(r.status).toBe(200);
        seen.push(...r.body.data.map((g: { id: string }) => g.id));
        schemas.assert("grant-list", r.body);
        cursor = r.body.pagination.cursor;
        expect(r.body.pagination.has_more).toBe(cursor !== null);
        if (!cursor) break;
      }
      expect(new Set(seen).size).toBe(seen.length);
      const newestFirst = [...made].reverse();
      expect(seen.slice(0, 23)).toEqual(newestFirst);
    });

    it("refuses bad list parameters", async () => {
      expectProblem(await w.as("alice").get(`${w.grants}?limit=0`), 400);
      expectProblem(await w.as("alice").get(`${w.grants}?limit=101`), 400);
      expectProblem(await w.as("alice").get(`${w.grants}?cursor=garbage`), 400);
      expectProblem(await w.as("alice").get(`${w.grants}?status=weird`), 400);
      expectProblem(await w.as("alice").get(`${w.grants}?colour=red`), 400);
    });
  });

  describe("batch", () => {
    it("applies each operation with the single call's authorization", async () => {
      const a = await create();
      const b = await create();
      const foreign = await create("bot2", ls(["foreign"]));
      const r = await w.as("alice").post(`${w.grants}/batch`, {
        operations: [
          { id: a.id, action: "approve", proof: w.proof("alice", a) },
          { id: b.id, action: "deny" },
          { id: foreign.id, action: "approve", proof: w.proof("alice", foreign) },
          { id: a.id, action: "approve", proof: w.proof("alice", a) },
        ],
      });
      expect(r.status).toBe(200);
      expect(r.body.results).toEqual([
        { id: a.id, success: true, status: "approved" },
        { id: b.id, success: true, status: "denied" },
        expect.objectContaining({ id: foreign.id, success: false, error: "not_found" }),
        expect.objectContaining({ id: a.id, success: false, error: "invalid_state", status: "approved" }),
      ]);
      expect((await w.as("carol").get(`${w.grants}/${foreign.id}`)).body.status).toBe("pending");
    });

    it("refuses malformed batches", async () => {
      expectProblem(await w.as("alice").post(`${w.grants}/batch`, { operations: [] }), 400);
      expectProblem(
        await w.as("alice").post(`${w.grants}/batch`, { operations: [{ id: "x", action: "nuke" }] }),
        400,
      );
      expectProblem(await w.as("alice").post(`${w.grants}/batch`, { ops: [] }), 400);
    });
  });

  describe("authorization negative matrix", () => {
    it("an agent cannot approve its own grant (single call and batch)", async () => {
      const g = await create();
      expectProblem(await w.approve("bot", g.id), 403, "forbidden");
      expectProblem(await w.as("bot").post(`${w.grants}/${g.id}/deny`), 403, "forbidden");
      const b = await w.as("bot").post(`${w.grants}/batch`, {
        operations: [{ id: g.id, action: "approve", proof: w.proof("bot", g) }],
      });
      expect(b.body.results[0]).toMatchObject({ id: g.id, success: false, error: "forbidden" });
      expect((await w.as("bot").get(`${w.grants}/${g.id}`)).body.status).toBe("pending");
    });

    it("another agent or an unrelated human cannot decide or read", async () => {
      const g = await create();
      expectProblem(await w.as("bot2").post(`${w.grants}/${g.id}/approve`), 404);
      expectProblem(await w.as("carol").post(`${w.grants}/${g.id}/approve`), 404);
      const carolsProof = { proof: w.proof("carol", g) };
      expectProblem(await w.as("carol").post(`${w.grants}/${g.id}/approve`, carolsProof), 404);
      expectProblem(await w.as("dave").get(`${w.grants}/${g.id}`), 404);
      expectProblem(await w.as("bot2").get(`${w.grants}/${g.id}`), 404);
      // The admin sees it but may not decide for an agent it neither owns nor approves.
      expect((await w.as("root").get(`${w.grants}/${g.id}`)).status).toBe(200);
      expectProblem(await w.approve("root", g.id), 403);
      expect((await w.as("bot").get(`${w.grants}/${g.id}`)).body.status).toBe("pending");
    });

    it("only the requester fetches the token", async () => {
      const g = await create();
      await w.approve("alice", g.id);
      expectProblem(await w.as("alice").post(`${w.grants}/${g.id}/token`), 403, "forbidden");
      expectProblem(await w.as("bot2").post(`${w.grants}/${g.id}/token`), 404);
    });

    it("a token for a pending grant is refused", async () => {
      const g = await create();
      expectProblem(await w.as("bot").post(`${w.grants}/${g.id}/token`), 409, "invalid_state");
    });

    it("unauthenticated, forged, expired-looking and wrong-audience tokens are refused", async () => {
      expectProblem(await api(w.idp.url).get(w.grants), 401, "unauthorized");
      expectProblem(await api(w.idp.url, "not-a-jwt").get(w.grants), 401, "invalid_token");
      const [h, p] = w.tokens.bot.split(".");
      const tampered = JSON.parse(Buffer.from(p!, "base64url").toString());
      tampered.sub = USERS.alice;
      const forged = `${h}.${Buffer.from(JSON.stringify(tampered)).toString("base64url")}.${w.tokens.bot.split(".")[2]}`;
      expectProblem(await api(w.idp.url, forged).get(w.grants), 401, "invalid_token");
      const unknownKid = `${Buffer.from(JSON.stringify({ alg: "EdDSA", kid: "nope" })).toString("base64url")}.${p}.${w.tokens.bot.split(".")[2]}`;
      expectProblem(await api(w.idp.url, unknownKid).get(w.grants), 401, "invalid_token");
      const none = `${Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url")}.${p}.`;
      expectProblem(await api(w.idp.url, none).get(w.grants), 401, "invalid_token");
      // An AuthZ-JWT (aud "escapes") is not a session token.
      const g = await create();
      await w.approve("alice", g.id);
      const t = await w.as("bot").post(`${w.grants}/${g.id}/token`);
      expectProblem(await api(w.idp.url, t.body.authz_jwt).get(w.grants), 401, "invalid_token");
      // A JWT signed by someone else's key with a matching kid is refused too.
      const jwk = (await api(w.idp.url).get("/.well-known/jwks.json")).body.keys[0];
      const evilHeader = Buffer.from(JSON.stringify({ alg: "EdDSA", kid: jwk.kid })).toString("base64url");
      const now = Math.floor(Date.now() / 1000);
      const evilPayload = Buffer.from(
        JSON.stringify({
          iss: w.idp.issuer,
          sub: USERS.alice,
          aud: "apes-cli",
          act: "human",
          iat: now,
          exp: now + 60,
          jti: "x",
        }),
      ).toString("base64url");
      const evilSig = sign(
        null,
        Buffer.from(`${evilHeader}.${evilPayload}`),
        w.keys.dave.privateKey,
      ).toString("base64url");
      expectProblem(
        await api(w.idp.url, `${evilHeader}.${evilPayload}.${evilSig}`).get(w.grants),
        401,
        "invalid_token",
      );
    });

    it("a forged or mismatching AuthZ-JWT cannot consume", async () => {
      const g = await create();
      await w.approve("alice", g.id);
      const t = await w.as("bot").post(`${w.grants}/${g.id}/token`);
      const [h, p, s] = t.body.authz_jwt.split(".");
      const claims = JSON.parse(Buffer.from(p, "base64url").toString());
      claims.exp += 3600;
      const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${s}`;
      expectProblem(await api(w.idp.url, forged).post(`${w.grants}/${g.id}/consume`), 401, "invalid_token");
      // A session token is not an AuthZ-JWT.
      expectProblem(
        await api(w.idp.url, w.tokens.bot).post(`${w.grants}/${g.id}/consume`),
        401,
        "invalid_token",
      );
      // The AuthZ-JWT of another grant.
      const other = await create();
      expectProblem(await api(w.idp.url, t.body.authz_jwt).post(`${w.grants}/${other.id}/consume`), 401);
      const v = await api(w.idp.url).post(`${w.grants}/verify`, { token: forged });
      expect(v.body).toMatchObject({ valid: false, error: "signature" });
      // Still consumable with the genuine token.
      const c = await api(w.idp.url, t.body.authz_jwt).post(`${w.grants}/${g.id}/consume`);
      expect(c.body.status).toBe("consumed");
    });
  });

  describe("bad input changes nothing", () => {
    it("gets precise 4xx problems", async () => {
      const bot = w.as("bot");
      expectProblem(await bot.post(w.grants, "{not json"), 400, "invalid_json");
      expectProblem(await bot.post(w.grants, "[1,2]"), 400, "invalid_request");
      expectProblem(await bot.post(w.grants, { ...ls(), grant_type: "forever" }), 400, "invalid_request");
      expectProblem(
        await bot.post(w.grants, { ...ls(), grant_type: "once", colour: "red" }),
        400,
        "invalid_request",
      );
      expectProblem(
        await bot.post(w.grants, { ...ls(), grant_type: "once", command: "ls" }),
        400,
        "invalid_request",
      );
      expectProblem(
        await bot.post(w.grants, { ...ls(), grant_type: "once", command: [] }),
        400,
        "invalid_request",
      );
      expectProblem(await bot.post(w.grants, { ...ls(), grant_type: "once", cmd_hash: "SHA-256:00" }), 400);
      expectProblem(await bot.post(w.grants, { ...ls(), grant_type: "timed", duration: -5 }), 400);
      expectProblem(await bot.post(w.grants, { ...ls(), grant_type: "timed", duration: 1.5 }), 400);
      expectProblem(await bot.post(w.grants, { ...ls(), grant_type: "once", duration: 60 }), 400);
      expectProblem(await bot.post(w.grants, { command: ["ls"], grant_type: "once" }), 400);
      expectProblem(await bot.post(w.grants, { ...ls(), grant_type: "once", requester: USERS.alice }), 403);
      expectProblem(await bot.post(w.grants, { ...ls(), grant_type: "once", delegate: USERS.alice }), 400);
      expectProblem(await bot.post(w.grants, { ...ls(), grant_type: "once", audience: "apes-cli" }), 400);
      expectProblem(await bot.post(w.grants, "{}", { "content-type": "text/plain" }), 415);
      const huge = { ...ls(), grant_type: "once", reason: "x".repeat(70 * 1024) };
      expectProblem(await bot.post(w.grants, huge), 413, "payload_too_large");
      expectProblem(await bot.get(`${w.grants}/not-a-uuid`), 404);
      expectProblem(await bot.get(`${w.grants}/00000000-0000-4000-8000-000000000000`), 404);
      expectProblem(await bot.call("PUT", w.grants), 405);
      expectProblem(await bot.get("/nope"), 404);
      // None of that created a grant.
      const mine = await bot.get(`${w.grants}?status=pending&limit=100`);
      for (const g of mine.body.data) expect(g.request.reason ?? "").not.toMatch(/^x+$/);
    });
  });
});
