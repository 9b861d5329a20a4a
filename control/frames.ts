import type { NestFrame } from "../protocol/troop.ts";
import { type Actor, chainOf } from "./actors.ts";
import type { Troop } from "./context.ts";

/**
 * What the troop does with a frame from a nest, the same on the socket and on the REST fallback
 * (POST /v1/nest/frames). `nest` is the authenticated nest id: an ack or result for an intent
 * addressed to another nest is refused and audited, never applied. Reauth is the socket's own.
 */
export type FrameOutcome = { ok: true } | { ok: false; code: string; detail: string };

export async function applyNestFrame(
  troop: Troop,
  nest: string,
  actor: Actor,
  frame: Exclude<NestFrame, { type: "reauth" }>,
  channel: "socket" | "rest",
): Promise<FrameOutcome> {
  const now = troop.now();
  const chain = { ...chainOf(actor), nest, channel };
  if (frame.type === "status") {
    await troop.store.nestStatus(nest, frame.version, frame.agents, now);
    troop.audit.write("frame", {
      ...chain,
      type: "status",
      version: frame.version,
      agents: frame.agents.length,
    });
    return { ok: true };
  }
  const event = frame.type === "ack" ? "ack" : frame.state;
  const detail = frame.type === "result" ? frame.detail : undefined;
  const r = await troop.store.applyEvent(frame.intent_id, nest, event, detail, now);
  if (!r.ok) {
    troop.audit.write("frame.refused", {
      ...chain,
      type: frame.type,
      intent: frame.intent_id,
      report: event,
      reason: r.reason,
      ...(r.reason === "not_addressed" && r.stored ? { addressed_to: r.stored.intent.nest } : {}),
    });
    const detailText =
      r.reason === "invalid_transition"
        ? `intent ${frame.intent_id} is ${r.stored?.state}: ${event} does not apply`
        : `no intent ${frame.intent_id} addressed to this nest`;
    return {
      ok: false,
      code: r.reason === "invalid_transition" ? "invalid_transition" : "not_addressed",
      detail: detailText,
    };
  }
  troop.audit.write("frame", {
    ...chain,
    type: frame.type,
    intent: frame.intent_id,
    state: r.stored.state,
    changed: r.changed,
    for: r.stored.intent.submitted_by,
    ...(detail !== undefined ? { detail_bytes: Buffer.byteLength(detail) } : {}),
  });
  return { ok: true };
}
