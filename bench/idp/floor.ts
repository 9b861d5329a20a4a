// The IdP's floor for bench-idp: a bare node:http server that does, per grant lifecycle, the work
// the IdP cannot avoid and nothing else — one Ed25519 verification (the approval proof), one
// Ed25519 signature (the AuthZ-JWT), one INSERT and two conditional UPDATEs in WAL SQLite with
// synchronous=NORMAL and the same group commit (one transaction per event-loop turn, no reply
// before its COMMIT), JSON bodies in and out. No routing table, authentication, validation,
// rate limits, logging or events. Started by bench/idp/run.ts; prints its URL on stdout.
//   node bench/idp/floor.ts --data=DIR --seed=N --approver-key=<base64 SPKI DER> [--schema=apes --requesters=N] [--crypto=pool]
// --schema=bare (the default): a grants table of id, status and request, no other index.
// --schema=apes: the IdP's own schema (its migrations, every index of the grants table), the same
// columns written by the same three statements (without RETURNING), the seed spread over
// --requesters as bench/idp/run.ts spreads its own: the same SQLite writes, index upkeep included.
import { createPublicKey, generateKeyPairSync, randomUUID, sign, verify } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { startCheckpointer } from "../../idp/store/sqlite/checkpointer.ts";
import { migrate } from "../../idp/store/sqlite/migrations.ts";
import { ed25519Sign, ed25519Verify, requestEnded, requestStarted } from "../../server/offload.ts";
import { benchArgs } from "../common.mjs";

const args = benchArgs();
const db = new DatabaseSync(join(args.get("data")!, "floor.sqlite"));
db.exec("PRAGMA journal_mode = WAL");
db.exec("PRAGMA synchronous = NORMAL");
db.exec("PRAGMA cache_size = -65536");
db.exec("PRAGMA mmap_size = 268435456");
const APES_SCHEMA = args.get("schema") === "apes";
const REQUESTERS = Number(args.get("requesters") ?? 50);
if (APES_SCHEMA) migrate(db);
else {
  db.exec(
    "CREATE TABLE IF NOT EXISTS grants (id TEXT PRIMARY KEY, status TEXT NOT NULL, request TEXT NOT NULL)",
  );
}
// The same number of stored grants as the IdP's store, so the b-trees have the same depth.
const seed = Number(args.get("seed") ?? 0);
db.exec("BEGIN");
const SEED_STATUSES = ["used", "used", "used", "denied", "revoked", "expired", "pending"];
const seedRow = APES_SCHEMA
  ? db.prepare(
      "INSERT INTO grants (id, type, requester, status, grant_type, request, created_at) VALUES (?, 'command', ?, ?, 'once', ?, 1)",
    )
  : db.prepare("INSERT INTO grants (id, status, request) VALUES (?, 'used', ?)");
for (let i = 0; i < seed; i++) {
  const request = `{"command":["seed","${i}"]}`;
  if (APES_SCHEMA) seedRow.run(randomUUID(), `agent${i % REQUESTERS}`, SEED_STATUSES[i % 7]!, request);
  else seedRow.run(randomUUID(), request);
}
db.exec("COMMIT");
// Checkpoints off the event loop, once a second, as the IdP does.
db.exec("PRAGMA wal_autocheckpoint = 0");
const stopCheckpointer = startCheckpointer(
  join(args.get("data")!, "floor.sqlite"),
  1000,
  () => db.exec("PRAGMA wal_checkpoint(PASSIVE)"),
  () => {},
);

const approver = createPublicKey({
  key: Buffer.from(args.get("approver-key")!, "base64"),
  format: "der",
  type: "spki",
});
const signing = generateKeyPairSync("ed25519").privateKey;
// --crypto=pool: signatures made and checked as the IdP does them (server/offload.ts: on libuv's
// thread pool while other requests are in flight); inline (the default): on the event loop, the
// floor the issue names.
const IN_POOL = args.get("crypto") === "pool";
const nowSec = () => Math.floor(Date.now() / 1000);
/** The three writes of a lifecycle, as the chosen schema takes them. */
const writes = APES_SCHEMA
  ? (() => {
      const insert = db.prepare(
        "INSERT INTO grants (id, type, requester, status, grant_type, request, created_at) VALUES (?, 'command', ?, 'pending', 'once', ?, ?)",
      );
      const approve = db.prepare(
        "UPDATE grants SET status = 'approved', version = version + 1, decided_by = 'alice@bench.test', decided_at = ? WHERE id = ? AND status = 'pending'",
      );
      const consume = db.prepare(
        "UPDATE grants SET status = 'used', version = version + 1, used_at = ? WHERE id = ? AND status = 'approved'",
      );
      return {
        insert: (id: string, request: string, requester: string) =>
          insert.run(id, requester, request, nowSec()),
        approve: (id: string) => approve.run(nowSec(), id),
        consume: (id: string) => consume.run(nowSec(), id),
      };
    })()
  : (() => {
      const insert = db.prepare("INSERT INTO grants (id, status, request) VALUES (?, 'pending', ?)");
      const approve = db.prepare("UPDATE grants SET status = 'approved' WHERE id = ? AND status = 'pending'");
      const consume = db.prepare("UPDATE grants SET status = 'used' WHERE id = ? AND status = 'approved'");
      return {
        insert: (id: string, request: string) => insert.run(id, request),
        approve: (id: string) => approve.run(id),
        consume: (id: string) => consume.run(id),
      };
    })();
const issued = new Map<string, string>();

// Group commit, as the IdP's store: the first write of a turn opens the transaction, the next turn
// commits it and only then are that turn's replies sent.
let batch: (() => void)[] | undefined;
function write(run: () => void, reply: () => void): void {
  if (!batch) {
    db.exec("BEGIN IMMEDIATE");
    batch = [];
    setImmediate(() => {
      const b = batch!;
      batch = undefined;
      db.exec("COMMIT");
      for (const r of b) r();
    });
  }
  run();
  batch.push(reply);
}

const b64url = (s: string) => Buffer.from(s).toString("base64url");
const HEADER = b64url(JSON.stringify({ alg: "EdDSA", typ: "JWT", kid: "floor" }));

function send(res: ServerResponse, status: number, body: unknown): void {
  if (IN_POOL) requestEnded();
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function handle(req: IncomingMessage, res: ServerResponse, raw: string): void {
  const body = raw ? JSON.parse(raw) : {};
  const parts = req.url!.split("/"); // "", "grants", id?, action?
  const id = parts[2];
  const action = parts[3];
  if (!id) {
    const grantId = randomUUID();
    const request = JSON.stringify(body);
    write(
      () => writes.insert(grantId, request, String(body.requester ?? "agent0")),
      () => send(res, 201, { id: grantId, status: "pending", request: body }),
    );
  } else if (action === "approve") {
    const proven = (ok: boolean) => {
      if (!ok) {
        send(res, 403, { error: "bad proof" });
        return;
      }
      let changes = 0;
      write(
        () => {
          changes = Number(writes.approve(id).changes);
        },
        () => send(res, changes ? 200 : 409, { id, status: "approved" }),
      );
    };
    const signed = Buffer.from(`approve:${id}`);
    const signature = Buffer.from(body.signature, "base64");
    if (IN_POOL) ed25519Verify(signed, approver, signature).then(proven);
    else proven(verify(null, signed, approver, signature));
  } else if (action === "token") {
    const iat = Math.floor(Date.now() / 1000);
    const payload = b64url(JSON.stringify({ grant_id: id, iat, exp: iat + 300, jti: randomUUID() }));
    const input = `${HEADER}.${payload}`;
    const issue = (signature: Buffer) => {
      const jwt = `${input}.${signature.toString("base64url")}`;
      issued.set(jwt, id);
      send(res, 200, { authz_jwt: jwt });
    };
    if (IN_POOL) ed25519Sign(Buffer.from(input), signing).then(issue);
    else issue(sign(null, Buffer.from(input), signing));
  } else if (action === "consume") {
    const token = (req.headers.authorization ?? "").slice(7);
    if (issued.get(token) !== id) {
      send(res, 401, { error: "unknown token" });
      return;
    }
    let changes = 0;
    write(
      () => {
        changes = Number(writes.consume(id).changes);
      },
      () => {
        issued.delete(token);
        send(res, changes ? 200 : 409, { status: changes ? "consumed" : "used", grant_id: id });
      },
    );
  } else send(res, 404, {});
}

const server = createServer((req, res) => {
  // Counted as the IdP's pipeline counts them: the offload only while other requests are in flight.
  if (IN_POOL) requestStarted();
  let raw = "";
  req.setEncoding("utf8");
  req.on("data", (c: string) => {
    raw += c;
  });
  req.on("end", () => handle(req, res, raw));
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => {
  const a = server.address();
  if (a && typeof a === "object") process.stdout.write(`http://127.0.0.1:${a.port}\n`);
});
process.on("SIGTERM", async () => {
  server.close();
  server.closeAllConnections();
  await stopCheckpointer();
  db.close();
  process.exit(0);
});
