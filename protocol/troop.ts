/**
 * The control-plane protocol between the troop (`apes troop serve`, control/) and a Nest
 * (`apes daemon run`, nest/): the message types and their validation, in one place for both sides.
 * The contract in prose is docs/control-plane.md; this file is its executable form. Every parser
 * here takes untrusted input (a WebSocket frame, an HTTP body) and either returns a typed value or
 * a reason; none throws.
 */
import { hasUnsafeChars } from "./display.ts";
import { canonicalIdentity, isUnixUser } from "./names.ts";

/** The WebSocket subprotocol a nest offers and the troop selects. */
export const TROOP_SUBPROTOCOL = "apes-troop.v1";
/** Path of the nest WebSocket on the troop. No query string is accepted there. */
export const NEST_SOCKET_PATH = "/v1/nest/socket";
/** Largest frame (and REST body) either side accepts, in bytes. */
export const MAX_FRAME_BYTES = 64 * 1024;

/** Close codes the troop uses (4000-4999 is the application range of RFC 6455). */
export const CLOSE = {
  /** The re-authentication deadline (token exp) passed without a fresh token. */
  tokenExpired: 4001,
  /** The nest identity or its delegation was revoked or disabled at the IdP. */
  revoked: 4003,
  /** Another live connection holds this nest id (no silent takeover). */
  duplicate: 4009,
  /** A frame that is not valid JSON, too big, of an unknown type, or not allowed now. */
  badFrame: 4400,
  /** A fresh token in a reauth frame did not verify or names someone else. */
  reauthRefused: 4401,
  /** No pong within the deadline. */
  pingTimeout: 4408,
  /** The troop is shutting down; reconnect with backoff. */
  goingAway: 1001,
} as const;

export const INTENT_KINDS = ["spawn", "stop", "restart", "pause", "resume", "remove"] as const;
export type IntentKind = (typeof INTENT_KINDS)[number];

/** Intent states on the troop: queued -> delivered -> acked -> running | done | failed. */
export const INTENT_STATES = ["queued", "delivered", "acked", "running", "done", "failed"] as const;
export type IntentState = (typeof INTENT_STATES)[number];
/** The states a nest may report in a result frame. */
export const RESULT_STATES = ["running", "done", "failed"] as const;
export type ResultState = (typeof RESULT_STATES)[number];

/** Agent states a nest reports in status frames. */
export const AGENT_STATES = ["starting", "running", "paused", "backoff", "failed", "stopped"] as const;
export type AgentState = (typeof AGENT_STATES)[number];

/** Intent ids are chosen by the submitter (idempotency): same charset as grant ids. */
export const INTENT_ID = /^[A-Za-z0-9._~:-]{1,128}$/;
/** Agent names: they become the agent's Unix user name, so the Unix rule applies, lower case, no `$`. */
export const AGENT_NAME = /^[a-z_][a-z0-9_-]{0,30}$/;
/** Environment variable names a spawn may pass through (an allow-list, never values). */
export const ENV_NAME = /^[A-Z_][A-Z0-9_]{0,63}$/;
/** Secret names the nest resolves from its own root-owned store: secrets never travel in an intent. */
export const SECRET_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

const MAX_ARGV = 64;
const MAX_ARG_BYTES = 4096;
const MAX_LIST = 32;
const MAX_DETAIL = 1024;

/** What a spawn intent asks for. */
export interface SpawnSpec {
  /** The human the new agent identity belongs to (normalised identity). */
  owner: string;
  /** The agent's program, run as the agent's own Unix user. */
  argv: string[];
  /** Names of environment variables the nest passes from its own allow-listed environment. */
  env: string[];
  /** Names of secrets the nest resolves from its own store and hands to the agent. */
  secrets: string[];
}

/** An intent as submitted (REST body of POST /v1/intents). */
export interface IntentSubmission {
  id: string;
  nest: string;
  kind: IntentKind;
  agent: string;
  spec?: SpawnSpec;
}

/** An intent as the troop stores and delivers it. */
export interface Intent extends IntentSubmission {
  /** Position in this nest's order, assigned by the troop: delivered strictly increasing. */
  seq: number;
  /** Who submitted it (token sub). */
  submitted_by: string;
  /** For a delegated submitter: the delegate that acted for `submitted_by`. */
  submitted_via?: string;
  created_at: number;
}

export interface AgentStatus {
  name: string;
  state: AgentState;
  pid?: number;
  restarts: number;
  since: number;
}

/** Frames the troop sends to a nest. */
export type ServerFrame =
  | { type: "hello"; nest: string; server_time: number; ping_interval_s: number; reauth_by: number }
  | { type: "intent"; intent: Intent }
  | { type: "reauth_ok"; reauth_by: number }
  | { type: "error"; code: string; detail: string };

/** Frames a nest sends to the troop (on the socket, or POSTed to the fallback REST route). */
export type NestFrame =
  | { type: "reauth"; token: string }
  | { type: "ack"; intent_id: string }
  | { type: "result"; intent_id: string; state: ResultState; detail?: string }
  | { type: "status"; version: string; agents: AgentStatus[] };

export type Parsed<T> = { ok: true; value: T } | { ok: false; reason: string };

const fail = (reason: string): { ok: false; reason: string } => ({ ok: false, reason });

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function onlyKeys(o: Record<string, unknown>, allowed: readonly string[]): string | undefined {
  for (const k of Object.keys(o))
    if (!allowed.includes(k)) return `unknown field ${JSON.stringify(k).slice(0, 40)}`;
  return undefined;
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function boundedText(v: unknown, max: number): v is string {
  return typeof v === "string" && Buffer.byteLength(v) <= max && !hasUnsafeChars(v);
}

/** Parses JSON text bounded by MAX_FRAME_BYTES; frames are objects with a string `type`. */
function parseJsonObject(text: string): Parsed<Record<string, unknown>> {
  if (Buffer.byteLength(text) > MAX_FRAME_BYTES) return fail("frame too large");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return fail("frame is not JSON");
  }
  if (!isRecord(value)) return fail("frame is not an object");
  return { ok: true, value };
}

export function parseSpawnSpec(v: unknown): Parsed<SpawnSpec> {
  if (!isRecord(v)) return fail("spec must be an object");
  const extra = onlyKeys(v, ["owner", "argv", "env", "secrets"]);
  if (extra) return fail(`spec: ${extra}`);
  const owner = canonicalIdentity(v.owner);
  if (!owner) return fail("spec.owner must be an identity");
  const argv = v.argv;
  if (!Array.isArray(argv) || argv.length === 0 || argv.length > MAX_ARGV)
    return fail(`spec.argv must hold 1-${MAX_ARGV} strings`);
  for (const a of argv) {
    if (typeof a !== "string" || Buffer.byteLength(a) > MAX_ARG_BYTES || a.includes("\0"))
      return fail("spec.argv holds an invalid argument");
  }
  if (!(argv[0] as string).startsWith("/")) return fail("spec.argv[0] must be an absolute path");
  const env = v.env ?? [];
  if (
    !Array.isArray(env) ||
    env.length > MAX_LIST ||
    !env.every((e) => typeof e === "string" && ENV_NAME.test(e))
  ) {
    return fail("spec.env must be a list of environment variable names");
  }
  const secrets = v.secrets ?? [];
  if (
    !Array.isArray(secrets) ||
    secrets.length > MAX_LIST ||
    !secrets.every((s) => typeof s === "string" && SECRET_NAME.test(s))
  ) {
    return fail("spec.secrets must be a list of secret names");
  }
  return {
    ok: true,
    value: { owner, argv: argv as string[], env: env as string[], secrets: secrets as string[] },
  };
}

/** Validates a submitted intent (REST body). A spawn needs a spec; every other kind must not have one. */
export function parseIntentSubmission(v: unknown): Parsed<IntentSubmission> {
  if (!isRecord(v)) return fail("intent must be an object");
  const extra = onlyKeys(v, ["id", "nest", "kind", "agent", "spec"]);
  if (extra) return fail(extra);
  if (typeof v.id !== "string" || !INTENT_ID.test(v.id)) return fail("id must match [A-Za-z0-9._~:-]{1,128}");
  const nest = canonicalIdentity(v.nest);
  if (!nest) return fail("nest must name the nest's identity");
  if (typeof v.kind !== "string" || !(INTENT_KINDS as readonly string[]).includes(v.kind)) {
    return fail(`kind must be one of ${INTENT_KINDS.join(", ")}`);
  }
  const kind = v.kind as IntentKind;
  if (typeof v.agent !== "string" || !AGENT_NAME.test(v.agent) || !isUnixUser(v.agent))
    return fail("agent must be a lower-case Unix user name");
  if (kind === "spawn") {
    const spec = parseSpawnSpec(v.spec);
    if (!spec.ok) return spec;
    return { ok: true, value: { id: v.id, nest, kind, agent: v.agent, spec: spec.value } };
  }
  if (v.spec !== undefined) return fail(`a ${kind} intent takes no spec`);
  return { ok: true, value: { id: v.id, nest, kind, agent: v.agent } };
}

function parseIntent(v: unknown): Parsed<Intent> {
  if (!isRecord(v)) return fail("intent must be an object");
  const { seq, submitted_by, submitted_via, created_at, ...submission } = v;
  const base = parseIntentSubmission(submission);
  if (!base.ok) return base;
  if (!isCount(seq) || !isCount(created_at)) return fail("intent seq and created_at must be counts");
  const by = canonicalIdentity(submitted_by);
  if (!by) return fail("intent submitted_by must be an identity");
  const intent: Intent = { ...base.value, seq, submitted_by: by, created_at };
  if (submitted_via !== undefined) {
    const via = canonicalIdentity(submitted_via);
    if (!via) return fail("intent submitted_via must be an identity");
    intent.submitted_via = via;
  }
  return { ok: true, value: intent };
}

function parseAgentStatus(v: unknown): Parsed<AgentStatus> {
  if (!isRecord(v)) return fail("agent status must be an object");
  const extra = onlyKeys(v, ["name", "state", "pid", "restarts", "since"]);
  if (extra) return fail(extra);
  if (typeof v.name !== "string" || !AGENT_NAME.test(v.name)) return fail("agent name invalid");
  if (typeof v.state !== "string" || !(AGENT_STATES as readonly string[]).includes(v.state))
    return fail("agent state invalid");
  if (v.pid !== undefined && !(isCount(v.pid) && v.pid > 0)) return fail("agent pid invalid");
  if (!isCount(v.restarts) || !isCount(v.since)) return fail("agent restarts and since must be counts");
  const status: AgentStatus = {
    name: v.name,
    state: v.state as AgentState,
    restarts: v.restarts,
    since: v.since,
  };
  if (v.pid !== undefined) status.pid = v.pid as number;
  return { ok: true, value: status };
}

/** Parses a frame from a nest (untrusted). */
export function parseNestFrame(text: string): Parsed<NestFrame> {
  const obj = parseJsonObject(text);
  if (!obj.ok) return obj;
  const f = obj.value;
  switch (f.type) {
    case "reauth": {
      const extra = onlyKeys(f, ["type", "token"]);
      if (extra) return fail(extra);
      if (typeof f.token !== "string" || f.token.length === 0 || f.token.length > 8192)
        return fail("reauth token invalid");
      return { ok: true, value: { type: "reauth", token: f.token } };
    }
    case "ack": {
      const extra = onlyKeys(f, ["type", "intent_id"]);
      if (extra) return fail(extra);
      if (typeof f.intent_id !== "string" || !INTENT_ID.test(f.intent_id))
        return fail("ack intent_id invalid");
      return { ok: true, value: { type: "ack", intent_id: f.intent_id } };
    }
    case "result": {
      const extra = onlyKeys(f, ["type", "intent_id", "state", "detail"]);
      if (extra) return fail(extra);
      if (typeof f.intent_id !== "string" || !INTENT_ID.test(f.intent_id))
        return fail("result intent_id invalid");
      if (typeof f.state !== "string" || !(RESULT_STATES as readonly string[]).includes(f.state))
        return fail("result state invalid");
      if (f.detail !== undefined && !boundedText(f.detail, MAX_DETAIL)) return fail("result detail invalid");
      const frame: NestFrame = { type: "result", intent_id: f.intent_id, state: f.state as ResultState };
      if (f.detail !== undefined) frame.detail = f.detail as string;
      return { ok: true, value: frame };
    }
    case "status": {
      const extra = onlyKeys(f, ["type", "version", "agents"]);
      if (extra) return fail(extra);
      if (!boundedText(f.version, 64)) return fail("status version invalid");
      if (!Array.isArray(f.agents) || f.agents.length > 1024) return fail("status agents must be a list");
      const agents: AgentStatus[] = [];
      for (const a of f.agents) {
        const s = parseAgentStatus(a);
        if (!s.ok) return s;
        agents.push(s.value);
      }
      return { ok: true, value: { type: "status", version: f.version as string, agents } };
    }
    default:
      return fail("unknown frame type");
  }
}

/** Parses a frame from the troop (untrusted on the nest's side too). */
export function parseServerFrame(text: string): Parsed<ServerFrame> {
  const obj = parseJsonObject(text);
  if (!obj.ok) return obj;
  const f = obj.value;
  switch (f.type) {
    case "hello": {
      const nest = canonicalIdentity(f.nest);
      if (!nest || !isCount(f.server_time) || !isCount(f.ping_interval_s) || !isCount(f.reauth_by))
        return fail("hello invalid");
      return {
        ok: true,
        value: {
          type: "hello",
          nest,
          server_time: f.server_time,
          ping_interval_s: f.ping_interval_s,
          reauth_by: f.reauth_by,
        },
      };
    }
    case "intent": {
      const intent = parseIntent(f.intent);
      if (!intent.ok) return intent;
      return { ok: true, value: { type: "intent", intent: intent.value } };
    }
    case "reauth_ok":
      if (!isCount(f.reauth_by)) return fail("reauth_ok invalid");
      return { ok: true, value: { type: "reauth_ok", reauth_by: f.reauth_by } };
    case "error":
      if (!boundedText(f.code, 64) || !boundedText(f.detail, MAX_DETAIL)) return fail("error frame invalid");
      return { ok: true, value: { type: "error", code: f.code as string, detail: f.detail as string } };
    default:
      return fail("unknown frame type");
  }
}

/** The intent state machine's one rule: which state a report moves an intent to, or undefined. */
export function nextIntentState(
  current: IntentState,
  event: "delivered" | "ack" | ResultState,
): IntentState | undefined {
  switch (event) {
    case "delivered":
      return current === "queued" ? "delivered" : undefined;
    case "ack":
      return current === "queued" || current === "delivered" ? "acked" : undefined;
    case "running":
      return current === "delivered" || current === "acked" ? "running" : undefined;
    case "done":
    case "failed":
      return current === "delivered" || current === "acked" || current === "running" ? event : undefined;
  }
}
