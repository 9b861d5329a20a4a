import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadUserConfig, parseUserConfig } from "../../cli/config.ts";
import { CliError } from "../../cli/errors.ts";
import { ExitCode } from "../../cli/exit-codes.ts";

describe("config: ca_file", () => {
  it("reads ca_file and lets APES_CA_FILE win", async () => {
    const dir = mkdtempSync(join(tmpdir(), "apes-cfg-"));
    try {
      writeFileSync(join(dir, "config.toml"), 'ca_file = "/etc/apes/ca.pem"\n');
      expect((await loadUserConfig(dir, {})).caFile).toBe("/etc/apes/ca.pem");
      expect((await loadUserConfig(dir, { APES_CA_FILE: "/tmp/other.pem" })).caFile).toBe("/tmp/other.pem");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("rejects a ca_file that is not a path", async () => {
    for (const text of ["ca_file = 3", 'ca_file = ""']) {
      const e = await parseUserConfig(text, "/x/config.toml").catch((x) => x);
      expect(e).toBeInstanceOf(CliError);
      expect(e.exitCode).toBe(ExitCode.CONFIG);
      expect(e.message).toContain('"ca_file" must be a path to a PEM file');
    }
  });
});
