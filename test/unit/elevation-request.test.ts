import { describe, expect, it } from "vitest";
import { parseElevation, validateElevation } from "../../cli/elevation/grammar.ts";
import {
  canonicalCommand,
  describeApprovers,
  grantMismatch,
  grantRequestFor,
  type RequesterDeps,
  requesterReason,
  runRequester,
} from "../../cli/elevation/request.ts";
import { CliError } from "../../cli/errors.ts";
import type { GrantsClient } from "../../client/grants.ts";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { REQUESTER_REASONS } from "../../protocol/elevation.ts";
import type { Grant } from "../../protocol/types.ts";
import { fakeContext } from "../helpers/fake-context.ts";
import { sampleGrant } from "../helpers/grants.ts";

const ME = "agent@example.com";

function request(argv: string[]) {
  const p = parseElevation(argv);
  if (!p.ok) throw new Error(p.error);
  const v = validateElevation(p.args);
  if (!v.ok) throw new Error(v.error);
  return v.request;
}

const grant = (over: Partial<Grant> = {}, req: Partial<Grant["request"]> = {}): Grant =>
  sampleGrant(over, { requester: ME, ...req });

interface Recorder {
  created: unknown[];
  createOptions: unknown[];
  revoked: string[];
  delivered: { fd: number; token: string }[];
  /** The fds the shim was told "approved, start the verifier" on. */
  ready: number[];
  /** For each token fetch: how many ready announcements came before it. */
  fetchedAfterReady: number[];
}

function fakeClient(
  options: { create?: () => { grant: Grant; reused: boolean; authz_jwt?: string }; get?: Grant } = {},
) {
  const rec: Recorder = {
    created: [],
    createOptions: [],
    revoked: [],
    delivered: [],
    ready: [],
    fetchedAfterReady: [],
  };
  const client = {
    session: { idp: "https://id.example.com", email: ME, act: "agent", token: "session", expiresAt: 0 },
    endpoints: {},
    async create(req: unknown, createOptions?: unknown) {
      rec.created.push(req);
      rec.createOptions.push(createOptions);
      return options.create ? options.create() : { grant: grant(), reused: false };
    },
    async get(id: string) {
      if (!options.get || options.get.id !== id) throw new Error("no such grant");
      return options.get;
    },
    async revoke(id: string) {
      rec.revoked.push(id);
      return grant({ status: "revoked" });
    },
    async token(id: string) {
      rec.fetchedAfterReady.push(rec.ready.length);
      return { authz_jwt: `jwt-for-${id}`, grant: grant({ id, status: "approved" }) };
    },
  } as unknown as GrantsClient;
  return { client, rec };
}

function deps(client: GrantsClient, rec: Recorder, wait: RequesterDeps["wait"]): Partial<RequesterDeps> {
  return {
    client: async () => client,
    wait,
    deliver: (fd, token) => rec.delivered.push({ fd, token }),
    ready: (fd) => rec.ready.push(fd),
    checkFd: () => {},
    hostname: () => "web1",
  };
}

async function failure(p: Promise<unknown>): Promise<CliError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CliError);
    return e as CliError;
  }
  throw new Error("expected a CliError");
}

describe("grantRequestFor", () => {
  it("binds the exact command, its hash, host, audience and run_as", () => {
    expect(grantRequestFor(request(["--reason", "r", "--as", "nobody", "--", "id", "-u"]), "web1")).toEqual({
      audience: "escapes",
      target_host: "web1",
      grant_type: "once",
      command: ["id", "-u"],
      cmd_hash: cmdHash(["id", "-u"]),
      run_as: "nobody",
      reason: "r",
    });
    expect(
      grantRequestFor(request(["--approval", "timed", "--duration", "2h", "--", "id"]), "h"),
    ).toMatchObject({
      grant_type: "timed",
      duration: 7200,
    });
  });
});

describe("requesterReason (the audit reason the requester reports to the shim)", () => {
  it("names the grant's fate, the failure kind, and nothing for pending", () => {
    expect(requesterReason(new CliError("x", { exitCode: 75 }))).toBeUndefined();
    expect(requesterReason(new CliError("x", { exitCode: 69 }))).toBe("idp_unreachable");
    expect(requesterReason(new CliError("x", { exitCode: 77 }))).toBe("not_permitted");
    expect(requesterReason(new CliError("x", { exitCode: 130 }))).toBe("interrupted");
    expect(requesterReason(new Error("boom"))).toBe("error");
    expect(requesterReason(new CliError("x", { exitCode: 78 }))).toBe("config");
    expect(requesterReason(new CliError("x", { exitCode: 2 }))).toBe("usage");
    expect(requesterReason(new CliError("x", { exitCode: 1 }))).toBe("error");
    expect(requesterReason(new CliError("x", { exitCode: 127 }))).toBe("error");
    // The shim adds the requester_ prefix itself: no code carries it twice.
    for (const r of Object.keys(REQUESTER_REASONS)) {
      expect(r).not.toMatch(/^requester_/);
      expect(r).toMatch(/^[a-z_]{1,64}$/);
    }
  });
});

describe("describeApprovers", () => {
  it("names the owner and the other approvers from userinfo", () => {
    expect(describeApprovers(ME, { kind: "agent", owner: "alice@x", approvers: ["bob@x", "alice@x"] })).toBe(
      "alice@x (owner) or bob@x",
    );
    expect(describeApprovers("carol@x", { kind: "human", approvers: [] })).toBe("carol@x (yourself)");
    expect(describeApprovers(ME, { kind: "agent", approvers: [] })).toBeUndefined();
    expect(describeApprovers(ME, "nope")).toBeUndefined();
  });
});

describe("grantMismatch (--grant ID must match the command)", () => {
  const req = request(["--", "id", "-u"]);
  it("accepts the same command, user, host and audience", () => {
    expect(grantMismatch(grant(), req, "web1")).toBeUndefined();
  });
  it("names what differs", () => {
    expect(grantMismatch(grant({}, { command: ["id"] }), req, "web1")).toContain("not");
    expect(grantMismatch(grant({}, { command: ["id -u"] }), request(["--", "id", "-u"]), "web1")).toContain(
      "id -u",
    );
    expect(grantMismatch(grant({}, { run_as: "nobody" }), req, "web1")).toContain("runs as nobody");
    expect(grantMismatch(grant({}, { target_host: "web2" }), req, "web1")).toContain("host web2");
    expect(grantMismatch(grant({}, { audience: "apes-cli" }), req, "web1")).toContain("audience");
    expect(grantMismatch(grant({ type: "delegation" }), req, "web1")).toContain("delegation");
  });
});

describe("runRequester", () => {
  it("waits for approval, then writes the AuthZ-JWT to the result fd only", async () => {
    const ctx = fakeContext();
    const { client, rec } = fakeClient();
    const code = await runRequester(ctx, request(["--reason", "r", "--", "id", "-u"]), {
      resultFd: 3,
      deps: deps(client, rec, async () => grant({ status: "approved", decided_by: "alice@example.com" })),
    });
    expect(code).toBe(0);
    expect(rec.delivered).toEqual([{ fd: 3, token: "jwt-for-g-1" }]);
    // The shim heard "approved" once, before the token fetch (so the verifier starts during it).
    expect(rec.ready).toEqual([3]);
    expect(rec.fetchedAfterReady).toEqual([1]);
    expect(ctx.stdout.text).toBe("");
    expect(ctx.stderr.text).not.toContain("jwt-for");
    expect(ctx.stderr.text).toContain("g-1");
    expect(ctx.stderr.text).toContain("apes grants approve g-1");
    expect(ctx.stderr.text).toContain("approved by alice@example.com");
  });

  it("uses a reused approved grant without waiting", async () => {
    const ctx = fakeContext();
    const { client, rec } = fakeClient({
      create: () => ({
        grant: grant(
          { status: "approved", decided_by: "alice@example.com", expires_at: 2e9 },
          { grant_type: "timed" },
        ),
        reused: true,
      }),
    });
    const code = await runRequester(
      ctx,
      request(["--approval", "timed", "--duration", "1h", "--", "id", "-u"]),
      {
        resultFd: 3,
        deps: deps(client, rec, async () => {
          throw new Error("must not wait");
        }),
      },
    );
    expect(code).toBe(0);
    expect(ctx.stderr.text).toContain("using timed grant g-1");
    expect(rec.delivered).toHaveLength(1);
  });

  it("--no-wait prints the grant id, how to continue, and ends with 75", async () => {
    const ctx = fakeContext();
    const { client, rec } = fakeClient();
    const e = await failure(
      runRequester(ctx, request(["--no-wait", "--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(client, rec, async () => grant()),
      }),
    );
    expect(e.exitCode).toBe(75);
    expect(ctx.stdout.text).toBe("g-1\n");
    expect(e.hint).toContain("apes --grant g-1 -- id -u");
    expect(rec.delivered).toEqual([]);
    expect(rec.ready).toEqual([]); // a pending exit starts no verifier
  });

  it("without the shim (no result fd) creates the grant and ends with 75", async () => {
    const ctx = fakeContext({ globals: { json: true } });
    const { client, rec } = fakeClient();
    const e = await failure(
      runRequester(ctx, request(["--no-wait", "--", "id", "-u"]), {
        deps: deps(client, rec, async () => grant()),
      }),
    );
    expect(e.exitCode).toBe(75);
    expect(JSON.parse(ctx.stdout.text)).toMatchObject({
      grant_id: "g-1",
      status: "pending",
      continue: "apes --grant g-1 -- id -u",
    });
  });

  it("ends with 77 when the grant is denied", async () => {
    const { client, rec } = fakeClient();
    const e = await failure(
      runRequester(fakeContext(), request(["--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(client, rec, async () => grant({ status: "denied", decided_by: "alice@example.com" })),
      }),
    );
    expect(e.exitCode).toBe(77);
    expect(e.message).toContain("denied by alice@example.com");
    // No token, only the reason for the shim's audit line; and no verifier started.
    expect(rec.delivered).toEqual([{ fd: 3, token: "grant_denied" }]);
    expect(rec.ready).toEqual([]);
  });

  it("Ctrl-C while waiting revokes the grant it created and ends with 130", async () => {
    const ctx = fakeContext();
    const { client, rec } = fakeClient();
    const controller = new AbortController();
    const e = await failure(
      runRequester(ctx, request(["--", "id", "-u"]), {
        resultFd: 3,
        signal: controller.signal,
        deps: deps(client, rec, async (_c, _cl, _id, o) => {
          controller.abort(new Error("interrupted"));
          o.signal?.throwIfAborted();
          return grant();
        }),
      }),
    );
    expect(e.exitCode).toBe(130);
    expect(rec.revoked).toEqual(["g-1"]);
    // Cancelled once, by the wait, which says so in the error main prints.
    expect(e.message).toBe("interrupted; grant g-1 cancelled");
    expect(rec.delivered).toEqual([{ fd: 3, token: "interrupted" }]);
  });

  it("Ctrl-C while waiting on a --grant grant keeps it and says how to continue", async () => {
    const { client, rec } = fakeClient({ get: grant() });
    const controller = new AbortController();
    const e = await failure(
      runRequester(fakeContext(), request(["--grant", "g-1", "--", "id", "-u"]), {
        resultFd: 3,
        signal: controller.signal,
        deps: deps(client, rec, async (_c, _cl, _id, o) => {
          controller.abort(new Error("interrupted"));
          o.signal?.throwIfAborted();
          return grant();
        }),
      }),
    );
    expect(e.exitCode).toBe(130);
    expect(rec.revoked).toEqual([]);
    expect(e.message).toBe("interrupted; grant g-1 is still pending");
    expect(e.hint).toContain("apes --grant g-1 -- id -u");
    expect(rec.delivered).toEqual([{ fd: 3, token: "interrupted" }]);
  });

  it("through the shim asks for the token in the reuse answer and delivers it without a token request", async () => {
    const { client, rec } = fakeClient({
      create: () => ({ grant: grant({ status: "approved" }), reused: true, authz_jwt: "folded.jwt.sig" }),
    });
    const code = await runRequester(fakeContext(), request(["--", "id", "-u"]), {
      resultFd: 3,
      deps: deps(client, rec, async () => grant()),
    });
    expect(code).toBe(0);
    expect(rec.createOptions).toEqual([{ authzJwt: true }]);
    expect(rec.fetchedAfterReady).toEqual([]); // no second round trip
    expect(rec.ready).toEqual([3]);
    expect(rec.delivered).toEqual([{ fd: 3, token: "folded.jwt.sig" }]);
    // An IdP that does not fold it (no authz_jwt): the token endpoint, after ready, as before.
    const old = fakeClient({ create: () => ({ grant: grant({ status: "approved" }), reused: true }) });
    await runRequester(fakeContext(), request(["--", "id", "-u"]), {
      resultFd: 3,
      deps: deps(old.client, old.rec, async () => grant()),
    });
    expect(old.rec.fetchedAfterReady).toEqual([1]);
    expect(old.rec.delivered).toEqual([{ fd: 3, token: "jwt-for-g-1" }]);
  });

  it("without the shim does not ask for a token in the create answer", async () => {
    const { client, rec } = fakeClient();
    await failure(
      runRequester(fakeContext(), request(["--no-wait", "--", "id", "-u"]), {
        deps: deps(client, rec, async () => grant()),
      }),
    );
    expect(rec.createOptions).toEqual([{ authzJwt: false }]);
  });

  it("an interrupt that arrives while an approved grant is fetched delivers no token", async () => {
    const { client, rec } = fakeClient({
      create: () => ({ grant: grant({ status: "approved" }), reused: true }),
    });
    const controller = new AbortController();
    controller.abort(new Error("interrupted"));
    const e = await failure(
      runRequester(fakeContext(), request(["--", "id", "-u"]), {
        resultFd: 3,
        signal: controller.signal,
        deps: deps(client, rec, async () => grant()),
      }),
    );
    expect(e.exitCode).toBe(130);
    expect(rec.delivered).toEqual([{ fd: 3, token: "interrupted" }]);
  });

  it("a failure after creating the grant (the IdP fails the wait) revokes it", async () => {
    const ctx = fakeContext();
    const { client, rec } = fakeClient();
    const e = await failure(
      runRequester(ctx, request(["--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(client, rec, async () => {
          throw new CliError("the IdP is unreachable", { exitCode: 69 });
        }),
      }),
    );
    expect(e.exitCode).toBe(69);
    expect(rec.revoked).toEqual(["g-1"]);
    expect(ctx.stderr.text).toContain("failed; grant g-1 cancelled");
    expect(rec.delivered).toEqual([{ fd: 3, token: "idp_unreachable" }]);
  });

  it("a failure while fetching an approved grant's token revokes it too, and a reused grant is left alone", async () => {
    const created = fakeClient();
    created.client.token = async () => {
      throw new Error("socket hang up");
    };
    await expect(
      runRequester(fakeContext(), request(["--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(created.client, created.rec, async () => grant({ status: "approved" })),
      }),
    ).rejects.toThrow("socket hang up");
    expect(created.rec.revoked).toEqual(["g-1"]);
    const reused = fakeClient({ create: () => ({ grant: grant({ status: "approved" }), reused: true }) });
    reused.client.token = created.client.token;
    await expect(
      runRequester(fakeContext(), request(["--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(reused.client, reused.rec, async () => grant()),
      }),
    ).rejects.toThrow("socket hang up");
    expect(reused.rec.revoked).toEqual([]);
  });

  it("a stderr that broke (the abort carries a CliError) ends with that error and revokes the grant", async () => {
    const { client, rec } = fakeClient();
    const controller = new AbortController();
    const broken = new CliError("cannot write progress: EPIPE", { exitCode: 1 });
    const e = await failure(
      runRequester(fakeContext(), request(["--", "id", "-u"]), {
        resultFd: 3,
        signal: controller.signal,
        deps: deps(client, rec, async (_c, _cl, _id, o) => {
          controller.abort(broken);
          o.signal?.throwIfAborted();
          return grant();
        }),
      }),
    );
    expect(e).toBe(broken);
    expect(rec.revoked).toEqual(["g-1"]);
  });

  it("a timeout ends with 75 and says how to continue", async () => {
    const { client, rec } = fakeClient();
    const e = await failure(
      runRequester(fakeContext(), request(["--timeout", "1s", "--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(client, rec, async () => {
          throw new CliError("grant g-1 is still pending after 1s", { exitCode: 75 });
        }),
      }),
    );
    expect(e.exitCode).toBe(75);
    expect(e.hint).toContain("apes --grant g-1 -- id -u");
    expect(rec.revoked).toEqual([]);
    expect(rec.delivered).toEqual([]);
  });

  it("--grant continues a matching grant, and refuses one for another command", async () => {
    const ok = fakeClient({ get: grant({ status: "approved", decided_by: "alice@example.com" }) });
    expect(
      await runRequester(fakeContext(), request(["--grant", "g-1", "--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(ok.client, ok.rec, async () => grant()),
      }),
    ).toBe(0);
    expect(ok.rec.created).toEqual([]);
    const other = fakeClient({ get: grant({ status: "approved" }, { command: ["id"] }) });
    const e = await failure(
      runRequester(fakeContext(), request(["--grant", "g-1", "--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(other.client, other.rec, async () => grant()),
      }),
    );
    expect(e.exitCode).toBe(77);
    expect(other.rec.delivered).toEqual([{ fd: 3, token: "grant_mismatch" }]);
  });

  it("--grant refuses someone else's grant", async () => {
    const f = fakeClient({ get: grant({ status: "approved" }, { requester: "other@example.com" }) });
    const e = await failure(
      runRequester(fakeContext(), request(["--grant", "g-1", "--", "id", "-u"]), {
        resultFd: 3,
        deps: deps(f.client, f.rec, async () => grant()),
      }),
    );
    expect(e.message).toContain("other@example.com");
  });

  it("an approved grant without the shim ends with 78 and says how to install it", async () => {
    const f = fakeClient({ get: grant({ status: "approved" }) });
    const e = await failure(
      runRequester(fakeContext(), request(["--grant", "g-1", "--no-wait", "--", "id", "-u"]), {
        deps: deps(f.client, f.rec, async () => grant()),
      }),
    );
    expect(e.exitCode).toBe(78);
    expect(e.hint).toContain("sudo make install");
  });

  it("prints timing lines with APES_TIMING=1", async () => {
    const ctx = fakeContext({ env: { APES_TIMING: "1" } });
    const { client, rec } = fakeClient({
      create: () => ({ grant: grant({ status: "approved" }), reused: true }),
    });
    await runRequester(ctx, request(["--", "id", "-u"]), {
      resultFd: 3,
      deps: deps(client, rec, async () => grant()),
    });
    expect(ctx.stderr.text).toMatch(/^apes-timing: requester start [\d.]+$/m);
    expect(ctx.stderr.text).toMatch(/^apes-timing: requester token [\d.]+$/m);
    expect(ctx.stderr.text).toMatch(/^apes-timing: requester total [\d.]+$/m);
  });
});

describe("canonicalCommand", () => {
  const realpath = (p: string) => {
    const known: Record<string, string> = {
      ".": "/home/me",
      "./bin": "/opt/tools",
      "/": "/",
      "/bin": "/usr/bin",
    };
    if (known[p]) return known[p];
    throw Object.assign(new Error(`ENOENT: ${p}`), { code: "ENOENT" });
  };

  it("makes a program's directory canonical, keeps its name, and leaves bare names and the arguments alone", () => {
    expect(canonicalCommand(["./x.sh", "./arg"], realpath)).toEqual(["/home/me/x.sh", "./arg"]);
    expect(canonicalCommand(["./bin/tool"], realpath)).toEqual(["/opt/tools/tool"]);
    expect(canonicalCommand(["/bin/sh"], realpath)).toEqual(["/usr/bin/sh"]);
    expect(canonicalCommand(["/init"], realpath)).toEqual(["/init"]);
    expect(canonicalCommand(["id", "-u"], realpath)).toEqual(["id", "-u"]);
  });

  it("a directory that does not resolve is an error (127), a path without a file name one too (126)", () => {
    const code = (argv: string[]) => {
      try {
        canonicalCommand(argv, realpath);
      } catch (e) {
        return (e as CliError).exitCode;
      }
      return undefined;
    };
    expect(code(["./gone/x"])).toBe(127);
    expect(code(["./bin/"])).toBe(126);
    expect(code(["./bin/.."])).toBe(126);
  });
});
