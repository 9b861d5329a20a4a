import { describe, expect, it } from "vitest";
import { ExitCode } from "../../cli/exit-codes.ts";
import { waitAndReport } from "../../cli/grants/await-decision.ts";
import type { GrantFetch, GrantsClient } from "../../client/grants.ts";
import { Capture, fakeContext } from "../helpers/fake-context.ts";
import { sampleGrant } from "../helpers/grants.ts";

const pending = sampleGrant({ id: "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d" });

/** A client whose grant is pending on the first read and approved on every later one. */
function approvingClient(revoked: string[]): GrantsClient {
  let reads = 0;
  const fetch = async (): Promise<GrantFetch> => {
    const grant = reads++ === 0 ? pending : { ...pending, status: "approved" as const };
    return { grant, etag: `"${reads}"`, notModified: false, waitApplied: false };
  };
  const revoke = async (id: string) => {
    revoked.push(id);
    return { ...pending, status: "revoked" as const };
  };
  return { fetch, revoke } as unknown as GrantsClient;
}

/** stderr that delivers a SIGINT the moment the waiting line appears, as a quick Ctrl-C would. */
class InterruptOnWaitingLine extends Capture {
  override write(chunk: string) {
    super.write(chunk);
    if (chunk.includes("waiting for a decision")) process.emit("SIGINT", "SIGINT");
    return true;
  }
}

describe("grants request --wait and Ctrl-C", () => {
  it("a SIGINT right after the waiting line reaches the cancel path (handler installed first)", async () => {
    const stderr = new InterruptOnWaitingLine();
    const ctx = fakeContext({ env: { APES_NO_PUSH: "1", APES_POLL_INTERVAL_MS: "100" }, stderr });
    const revoked: string[] = [];
    const before = process.listenerCount("SIGINT");
    const e = await waitAndReport(ctx, approvingClient(revoked), pending.id, undefined, pending, true).then(
      () => undefined,
      (x: { exitCode?: number; message?: string }) => x,
    );
    expect(e?.exitCode, stderr.text).toBe(ExitCode.INTERRUPTED);
    expect(e?.message).toContain(`grant ${pending.id} cancelled`);
    expect(revoked).toEqual([pending.id]);
    expect(process.listenerCount("SIGINT")).toBe(before);
  });
});
