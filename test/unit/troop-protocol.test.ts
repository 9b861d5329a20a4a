import { describe, expect, it } from "vitest";
import { actorOf, chainOf, mayCommand, revokedBy } from "../../control/actors.ts";
import { closeReason } from "../../control/hub.ts";
import { canonicalSubmission } from "../../control/routes.ts";
import {
  MAX_FRAME_BYTES,
  nextIntentState,
  parseIntentSubmission,
  parseNestFrame,
  parseServerFrame,
} from "../../protocol/troop.ts";

const spawn = {
  id: "i-1",
  nest: "nest@example.com",
  kind: "spawn",
  agent: "worker",
  spec: { owner: "alice@example.com", argv: ["/usr/bin/env", "true"], env: ["PATH"], secrets: ["API_KEY"] },
};

describe("protocol/troop.ts parsers refuse what they do not know", () => {
  it("accepts a spawn and a stop; refuses every malformed submission", () => {
    expect(parseIntentSubmission(spawn).ok).toBe(true);
    expect(parseIntentSubmission({ id: "s", nest: "n@x", kind: "stop", agent: "w" }).ok).toBe(true);
    const bad: unknown[] = [
      null,
      [],
      "x",
      { ...spawn, extra: 1 },
      { ...spawn, id: "" },
      { ...spawn, id: "a b" },
      { ...spawn, id: "x".repeat(129) },
      { ...spawn, nest: undefined },
      { ...spawn, nest: "not-an-identity" },
      { ...spawn, kind: "exec" },
      { ...spawn, agent: "Root" },
      { ...spawn, agent: "a".repeat(40) },
      { ...spawn, spec: undefined },
      { ...spawn, spec: { ...spawn.spec, argv: [] } },
      { ...spawn, spec: { ...spawn.spec, argv: ["relative"] } },
      { ...spawn, spec: { ...spawn.spec, argv: ["/bin/x", "a\0b"] } },
      { ...spawn, spec: { ...spawn.spec, env: ["KEY=value"] } },
      { ...spawn, spec: { ...spawn.spec, secrets: ["a secret with spaces"] } },
      { ...spawn, spec: { ...spawn.spec, secrets: ["k=v"] } },
      { ...spawn, spec: { ...spawn.spec, values: { K: "v" } } },
      { ...spawn, spec: { ...spawn.spec, owner: "nobody" } },
      { id: "s", nest: "n@x", kind: "stop", agent: "w", spec: spawn.spec },
    ];
    for (const b of bad) expect(parseIntentSubmission(b).ok, JSON.stringify(b)).toBe(false);
  });

  it("nest frames: valid ones parse, anything else is refused with a reason", () => {
    expect(parseNestFrame('{"type":"ack","intent_id":"i-1"}')).toEqual({
      ok: true,
      value: { type: "ack", intent_id: "i-1" },
    });
    expect(parseNestFrame('{"type":"result","intent_id":"i","state":"done","detail":"ok"}').ok).toBe(true);
    expect(parseNestFrame('{"type":"status","version":"1","agents":[]}').ok).toBe(true);
    const bad = [
      "",
      "{",
      "[]",
      "1",
      '{"type":"hello"}',
      '{"type":"ack"}',
      '{"type":"ack","intent_id":"i","x":1}',
      '{"type":"ack","intent_id":"a b"}',
      '{"type":"result","intent_id":"i","state":"queued"}',
      '{"type":"result","intent_id":"i","state":"done","detail":"\\u001b[2J"}',
      `{"type":"result","intent_id":"i","state":"done","detail":"${"x".repeat(2000)}"}`,
      '{"type":"reauth","token":""}',
      '{"type":"status","version":"1","agents":[{"name":"w","state":"zombie","restarts":0,"since":1}]}',
      '{"type":"status","version":"1","agents":[{"name":"w","state":"running","pid":0,"restarts":0,"since":1}]}',
      `{"type":"ack","intent_id":"i","pad":"${"x".repeat(MAX_FRAME_BYTES)}"}`,
    ];
    for (const b of bad) {
      const r = parseNestFrame(b);
      expect(r.ok, b.slice(0, 80)).toBe(false);
      if (!r.ok) expect(r.reason.length).toBeGreaterThan(0);
    }
  });

  it("server frames are checked on the nest's side too", () => {
    expect(
      parseServerFrame('{"type":"hello","nest":"n@x","server_time":1,"ping_interval_s":20,"reauth_by":5}').ok,
    ).toBe(true);
    for (const b of [
      '{"type":"hello","nest":"n","server_time":1,"ping_interval_s":20,"reauth_by":5}',
      '{"type":"intent","intent":{"id":"i"}}',
      '{"type":"reauth_ok","reauth_by":-1}',
      '{"type":"error","code":"x"}',
      '{"type":"welcome"}',
    ])
      expect(parseServerFrame(b).ok, b).toBe(false);
  });

  it("the intent state rule: forward only, results from the nest only after delivery", () => {
    expect(nextIntentState("queued", "delivered")).toBe("delivered");
    expect(nextIntentState("delivered", "ack")).toBe("acked");
    expect(nextIntentState("acked", "running")).toBe("running");
    expect(nextIntentState("running", "done")).toBe("done");
    expect(nextIntentState("queued", "done")).toBeUndefined();
    expect(nextIntentState("done", "failed")).toBeUndefined();
    expect(nextIntentState("done", "ack")).toBeUndefined();
    expect(nextIntentState("failed", "running")).toBeUndefined();
  });
});

describe("control/actors.ts: who a token names", () => {
  const base = {
    sub: "bot@example.com",
    rev: ["A".repeat(22)],
    iat: 1,
    exp: 2,
    approvers: ["bob@example.com"],
  };
  it("human and agent are equal; delegated is the delegate acting for the delegator", () => {
    const agent = actorOf({ ...base, act: "agent", owner: "alice@example.com" });
    expect(agent).toMatchObject({
      ok: true,
      actor: {
        holder: "bot@example.com",
        kind: "agent",
        commanders: ["alice@example.com", "bob@example.com"],
      },
    });
    const human = actorOf({ ...base, sub: "carol@example.com", act: "human", approvers: [] });
    expect(human).toMatchObject({
      ok: true,
      actor: { holder: "carol@example.com", commanders: ["carol@example.com"] },
    });
    const d = actorOf({ ...base, sub: "alice@example.com", act: { sub: "bot@example.com" } });
    expect(d.ok && d.actor).toMatchObject({
      holder: "bot@example.com",
      actingFor: "alice@example.com",
      principal: "alice@example.com",
    });
    if (d.ok) expect(chainOf(d.actor)).toEqual({ by: "alice@example.com", via: "bot@example.com" });
    if (agent.ok) {
      expect(mayCommand(agent.actor, { id: "x@example.com", commanders: ["bot@example.com"] })).toBe(true);
      expect(mayCommand(agent.actor, { id: "x@example.com", commanders: ["alice@example.com"] })).toBe(false);
    }
  });

  it("refuses unknown actors and tokens without revocation handles", () => {
    for (const act of [
      undefined,
      "root",
      "service",
      1,
      [],
      {},
      { sub: 1 },
      { sub: "bot@example.com" },
      { sub: "x@y", extra: 1 },
    ]) {
      expect(actorOf({ ...base, act }).ok, JSON.stringify(act)).toBe(false);
    }
    for (const rev of [undefined, [], ["short"], "A".repeat(22), Array(9).fill("A".repeat(22))]) {
      expect(actorOf({ ...base, act: "agent", rev }).ok, JSON.stringify(rev)).toBe(false);
    }
    expect(actorOf({ ...base, act: "agent", sub: "not an identity" }).ok).toBe(false);
    expect(actorOf({ ...base, act: "agent", owner: "nobody" }).ok).toBe(false);
    expect(actorOf({ ...base, act: "agent", approvers: ["x"] }).ok).toBe(false);
  });

  it("the same intent is the same whatever the key order; another body differs", () => {
    const a = parseIntentSubmission(spawn);
    const b = parseIntentSubmission({
      spec: { ...spawn.spec },
      agent: "worker",
      kind: "spawn",
      nest: spawn.nest,
      id: "i-1",
    });
    const c = parseIntentSubmission({ ...spawn, agent: "other" });
    if (!a.ok || !b.ok || !c.ok) throw new Error("parse");
    expect(canonicalSubmission(a.value)).toBe(canonicalSubmission(b.value));
    expect(canonicalSubmission(a.value)).not.toBe(canonicalSubmission(c.value));
  });
});

describe("control/hub.ts closeReason", () => {
  it("fits RFC 6455's 123 bytes, cut on a character boundary", () => {
    expect(closeReason("short")).toBe("short");
    const long = closeReason("é".repeat(100));
    expect(Buffer.byteLength(long)).toBeLessThanOrEqual(123);
    expect(long).toBe("é".repeat(61));
    expect(Buffer.byteLength(closeReason("x".repeat(500)))).toBe(123);
  });
});

describe("control/actors.ts revokedBy", () => {
  it("an event at or after a token's issue ends it; a later token is untouched; other handles are not", () => {
    const events = new Map([["h1", 100]]);
    expect(revokedBy(events, ["h1"], 99)).toBe(true);
    expect(revokedBy(events, ["h1"], 100)).toBe(true);
    expect(revokedBy(events, ["h1"], 101)).toBe(false);
    expect(revokedBy(events, ["h0", "h1"], 50)).toBe(true);
    expect(revokedBy(events, ["h2"], 50)).toBe(false);
  });
});
