import type { DatabaseSync } from "node:sqlite";
import { canonicalIdentity } from "../../../protocol/names.ts";
import { type Migration, migrate as runMigrations } from "../../../server/sqlite.ts";

/** The SQLite schema as numbered migrations (server/sqlite.ts): append only. */

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    what: "users, approvers, signing keys, spent challenges, used jtis, grants",
    sql: `
  CREATE TABLE users (
    email TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('human', 'agent')),
    owner TEXT,
    admin INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    public_key TEXT,
    fingerprint TEXT,
    name TEXT,
    created_at INTEGER NOT NULL
  );
  CREATE INDEX users_owner ON users(owner) WHERE owner IS NOT NULL;
  CREATE TABLE approvers (
    subject TEXT NOT NULL,
    approver TEXT NOT NULL,
    PRIMARY KEY (subject, approver)
  ) WITHOUT ROWID;
  CREATE INDEX approvers_by_approver ON approvers(approver, subject);
  CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    private_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    max_exp INTEGER NOT NULL DEFAULT 0
  );
  CREATE TABLE challenges (
    challenge TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    expires_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE used_jtis (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE grants (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    requester TEXT NOT NULL,
    status TEXT NOT NULL,
    grant_type TEXT NOT NULL,
    request TEXT NOT NULL,
    match_key TEXT,
    delegator TEXT,
    delegate TEXT,
    decided_by TEXT,
    created_at INTEGER NOT NULL,
    decided_at INTEGER,
    expires_at INTEGER,
    used_at INTEGER,
    version INTEGER NOT NULL DEFAULT 1
  );
  CREATE INDEX grants_by_status ON grants(status, seq);
  CREATE INDEX grants_by_requester ON grants(requester, seq);
  CREATE INDEX grants_by_requester_status ON grants(requester, status, seq);
  CREATE INDEX grants_by_delegator ON grants(delegator, seq) WHERE delegator IS NOT NULL;
  CREATE INDEX grants_by_delegate ON grants(delegate, seq) WHERE delegate IS NOT NULL;
  CREATE INDEX grants_reuse ON grants(requester, match_key) WHERE status = 'approved' AND grant_type <> 'once';
  CREATE INDEX grants_expiring ON grants(expires_at) WHERE status = 'approved' AND expires_at IS NOT NULL;
  `,
  },
  {
    version: 2,
    what: "spent challenges by subject",
    sql: `
  CREATE INDEX challenges_by_subject ON challenges(subject, expires_at);
  `,
  },
  {
    // NULL: the principal itself. Not on the wire: the grant schema has no field for it.
    version: 3,
    what: "who acted, when a grant was created or decided with a delegated token (act.sub)",
    sql: `
  ALTER TABLE grants ADD COLUMN created_act TEXT;
  ALTER TABLE grants ADD COLUMN decided_act TEXT;
  `,
  },
  {
    version: 4,
    what: "passkeys, invites and browser sessions (idp/web/)",
    sql: `
  CREATE TABLE passkeys (
    credential_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    public_key TEXT NOT NULL,
    counter INTEGER NOT NULL,
    transports TEXT NOT NULL,
    device_type TEXT NOT NULL,
    backed_up INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
  );
  CREATE INDEX passkeys_by_email ON passkeys(email, created_at);
  CREATE TABLE invites (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
  );
  CREATE INDEX invites_expiring ON invites(expires_at);
  CREATE TABLE web_sessions (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
  );
  CREATE INDEX web_sessions_by_email ON web_sessions(email);
  CREATE INDEX web_sessions_expiring ON web_sessions(expires_at);
  `,
  },
  {
    // Read by SPs (the troop) to close live connections of a disabled identity or revoked delegation.
    version: 5,
    what: "revocation feed: identities disabled and delegations revoked, in order",
    sql: `
  CREATE TABLE revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'delegation')),
    subject TEXT NOT NULL,
    at INTEGER NOT NULL
  );
  CREATE INDEX revocations_at ON revocations(at);
  `,
  },
  {
    // NULL: not approved (or approved before proofs existed). See protocol/approval.ts.
    version: 6,
    what: "the proof an approval came with (ed25519, webauthn, or bearer in the opt-in old-client mode)",
    sql: `
  ALTER TABLE grants ADD COLUMN approval_proof TEXT;
  `,
  },
  {
    // Secrets (codes, refresh tokens, device codes) only as SHA-256 hashes.
    version: 7,
    what: "OAuth: registered clients, authorization codes, refresh tokens and their families, device codes",
    sql: `
  CREATE TABLE oauth_clients (
    id TEXT PRIMARY KEY,
    redirect_uris TEXT NOT NULL,
    created_at INTEGER NOT NULL
  );
  CREATE TABLE oauth_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    nonce TEXT NOT NULL,
    sub TEXT NOT NULL,
    family_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
  );
  CREATE INDEX oauth_codes_expiring ON oauth_codes(expires_at);
  CREATE TABLE refresh_families (
    family_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
  );
  CREATE INDEX refresh_families_by_sub ON refresh_families(sub);
  CREATE INDEX refresh_families_expiring ON refresh_families(expires_at);
  CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL REFERENCES refresh_families(family_id),
    client_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    act TEXT NOT NULL CHECK (act IN ('human', 'agent')),
    acting_party TEXT,
    delegation_grant TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
  );
  CREATE INDEX refresh_tokens_by_family ON refresh_tokens(family_id);
  CREATE INDEX refresh_tokens_expiring ON refresh_tokens(expires_at);
  CREATE TABLE device_codes (
    device_hash TEXT PRIMARY KEY,
    user_code TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'used')),
    sub TEXT,
    poll_interval INTEGER NOT NULL,
    last_poll_at INTEGER,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    decided_at INTEGER
  );
  CREATE INDEX device_codes_expiring ON device_codes(expires_at);
  `,
  },
  {
    version: 8,
    what: "notification subscriptions and the outbox",
    sql: `
  CREATE TABLE notify_subscriptions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    channel TEXT NOT NULL CHECK (channel IN ('webhook', 'ntfy', 'email', 'webpush')),
    target TEXT NOT NULL,
    secret TEXT,
    events TEXT NOT NULL,
    created_at INTEGER NOT NULL
  );
  CREATE INDEX notify_subscriptions_by_owner ON notify_subscriptions(owner, created_at);
  CREATE TABLE notify_outbox (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    subscription_id TEXT NOT NULL,
    grant_id TEXT,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at_ms INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER
  );
  CREATE INDEX notify_outbox_due ON notify_outbox(due_at_ms) WHERE status = 'pending';
  CREATE INDEX notify_outbox_by_status ON notify_outbox(status, id);
  CREATE INDEX notify_outbox_by_subscription ON notify_outbox(subscription_id, id);
  `,
  },
  {
    // The approval pages' history: a person's decisions, newest first, one index range per page.
    version: 9,
    what: "grants by who decided them",
    sql: `
  CREATE INDEX grants_by_decider ON grants(decided_by, seq) WHERE decided_by IS NOT NULL;
  `,
  },
  {
    // Every status change moved a grant in grants_by_status (two more pages written a change); an
    // admin's status list now merges the per-requester scans (SqliteStore.statusPage). The
    // delegations' own index costs a command grant nothing and spares a scan of every grant for
    // an admin's list of delegations.
    version: 10,
    what: "no index on the status alone; delegations by seq",
    sql: `
  DROP INDEX grants_by_status;
  CREATE INDEX grants_delegations ON grants(seq) WHERE type = 'delegation';
  `,
  },
  {
    // What each worker keeps in memory (users, subscriptions, keys) changes rarely; grants change
    // at every request of every worker. data_version moves at any other connection's commit, these
    // counters only when their kind changed (SqliteStore.changeMarker(kind)).
    version: 11,
    what: "a change counter for each kind of data the server keeps in memory",
    sql: `
  CREATE TABLE change_counters (kind TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
  INSERT INTO change_counters (kind, n) VALUES ('users', 0), ('subscriptions', 0), ('keys', 0);
  CREATE TRIGGER users_insert_counted AFTER INSERT ON users BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'users'; END;
  CREATE TRIGGER users_update_counted AFTER UPDATE ON users BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'users'; END;
  CREATE TRIGGER users_delete_counted AFTER DELETE ON users BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'users'; END;
  CREATE TRIGGER approvers_insert_counted AFTER INSERT ON approvers BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'users'; END;
  CREATE TRIGGER approvers_update_counted AFTER UPDATE ON approvers BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'users'; END;
  CREATE TRIGGER approvers_delete_counted AFTER DELETE ON approvers BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'users'; END;
  CREATE TRIGGER notify_subscriptions_insert_counted AFTER INSERT ON notify_subscriptions BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'subscriptions'; END;
  CREATE TRIGGER notify_subscriptions_update_counted AFTER UPDATE ON notify_subscriptions BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'subscriptions'; END;
  CREATE TRIGGER notify_subscriptions_delete_counted AFTER DELETE ON notify_subscriptions BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'subscriptions'; END;
  CREATE TRIGGER signing_keys_insert_counted AFTER INSERT ON signing_keys BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'keys'; END;
  CREATE TRIGGER signing_keys_update_counted AFTER UPDATE ON signing_keys BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'keys'; END;
  CREATE TRIGGER signing_keys_delete_counted AFTER DELETE ON signing_keys BEGIN UPDATE change_counters SET n = n + 1 WHERE kind = 'keys'; END;
  `,
  },
];

/** Brings the database to the newest version (and re-keys users stored before normalisation). */
export function migrate(db: DatabaseSync, migrations: readonly Migration[] = MIGRATIONS): void {
  runMigrations(db, migrations, () => normalizeStoredUsers(db));
}

/**
 * Re-keys users stored before identities were normalised (protocol/names.ts), e.g. a decomposed
 * "café", so lookups (which normalise) find them. Idempotent, so it runs at every open, not as a
 * numbered migration; only names not already in stored form (non-ASCII or upper case) are read.
 * A name the rules refuse, or whose normal form is taken, is left as it is: no lookup finds it.
 */
function normalizeStoredUsers(db: DatabaseSync): void {
  const rows = db
    .prepare("SELECT email FROM users WHERE email GLOB '*[^ -~]*' OR email GLOB '*[A-Z]*'")
    .all() as { email: string }[];
  for (const { email } of rows) {
    const identity = canonicalIdentity(email);
    if (identity === undefined || identity === email) continue;
    if (db.prepare("SELECT 1 FROM users WHERE email = ?").get(identity)) continue;
    db.prepare("UPDATE users SET email = ? WHERE email = ?").run(identity, email);
    db.prepare("UPDATE users SET owner = ? WHERE owner = ?").run(identity, email);
    db.prepare("UPDATE approvers SET subject = ? WHERE subject = ?").run(identity, email);
    db.prepare("UPDATE approvers SET approver = ? WHERE approver = ?").run(identity, email);
  }
}
