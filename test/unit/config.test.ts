import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defaultConfig, loadUserConfig, parseDuration, parseUserConfig } from "../../cli/config.ts";
import { CliError } from "../../cli/errors.ts";
import { ExitCode } from "../../cli/exit-codes.ts";

const F = "/x/config.toml";

async function configErrorOf(text: string): Promise<CliError> {
  try {
    await parseUserConfig(text, F);
  } catch (e) {
    expect(e).toBeInstanceOf(CliError);
    expect((e as CliError).exitCode).toBe(ExitCode.CONFIG);
    return e as CliError;
  }
  throw new Error("expected a config error");
}

describe("parseUserConfig", () => {
  it("reads every key", async () => {
    const c = await parseUserConfig(
      `idp = "https://id.example.com"
allow_raw_login_signature = true
idp_endpoint_origins = ["https://api.example.com"]
keep_warm = "2m"
[dns]
servers = ["127.0.0.1:5353", "[::1]:53"]
doh_url = "https://dns.example/resolve"
allow_loopback_http = true
timeout = "1500ms"
`,
      F,
    );
    expect(c).toEqual({
      idp: "https://id.example.com",
      dns: {
        servers: ["127.0.0.1:5353", "[::1]:53"],
        dohUrl: "https://dns.example/resolve",
        allowLoopbackHttp: true,
        timeoutMs: 1500,
      },
      allowRawLoginSignature: true,
      idpEndpointOrigins: ["https://api.example.com"],
      keepWarmMs: 120_000,
      source: F,
    });
  });

  it("an empty file gives the defaults", async () => {
    expect(await parseUserConfig("", F)).toEqual({ ...defaultConfig(), source: F });
    expect(defaultConfig().dns).toEqual({ allowLoopbackHttp: false, timeoutMs: 5000 });
    expect(defaultConfig().allowRawLoginSignature).toBe(false);
  });

  it.each([
    ['idq = "https://typo.example"', 'unknown key "idq"'],
    ['[dns]\nserver = ["1.1.1.1"]', 'unknown key "dns.server"'],
    ["[other]\nx = 1", 'unknown key "other"'],
  ])("rejects unknown keys: %j", async (text, message) => {
    expect((await configErrorOf(text)).message).toContain(message);
  });

  it.each([
    ["idp = 42", '"idp" must be an http(s) URL'],
    ['idp = "id.example.com"', '"idp" must be an http(s) URL'],
    ['dns = "8.8.8.8"', '"dns" must be a table'],
    ['[dns]\nservers = "1.1.1.1"', '"dns.servers" must be an array'],
    ["[dns]\nservers = [1]", '"dns.servers" must be an array'],
    ['[dns]\nservers = [""]', '"dns.servers" must be an array'],
    ['[dns]\ndoh_url = "ftp://x"', '"dns.doh_url" must be an http(s) URL'],
    ['[dns]\nallow_loopback_http = "yes"', '"dns.allow_loopback_http" must be true or false'],
    ['allow_raw_login_signature = "yes"', '"allow_raw_login_signature" must be true or false'],
    ["[dns]\ntimeout = 5", '"dns.timeout" must be a duration'],
    ['[dns]\ntimeout = "5 parsecs"', '"dns.timeout" must be a duration'],
  ])("rejects wrong types: %j", async (text, message) => {
    expect((await configErrorOf(text)).message).toContain(message);
  });

  it("reports TOML syntax errors with the file and a hint", async () => {
    const e = await configErrorOf('idp = "unterminated');
    expect(e.message).toContain(F);
    expect(e.hint).toContain("fix the TOML syntax");
  });
});

describe("parseDuration", () => {
  it.each([
    ["90", 90_000],
    ["30s", 30_000],
    ["5m", 300_000],
    ["1h", 3_600_000],
    ["2d", 172_800_000],
    ["1h30m", 5_400_000],
    ["250ms", 250],
    [" 10s ", 10_000],
    ["0", 0],
  ])("%j -> %i ms", (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });
  it.each(["", "s", "5 s", "5x", "-5s", "1.5h", "5s!", "m5"])("rejects %j", (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });
});

describe("loadUserConfig", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "apes-config-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("uses the defaults when the file does not exist", async () => {
    expect(await loadUserConfig(join(dir, "missing"), {})).toEqual(defaultConfig());
  });

  it("lets the environment win over the file", async () => {
    const d = join(dir, "env");
    await mkdir(d);
    await writeFile(join(d, "config.toml"), 'idp = "https://file.example"\n[dns]\nservers = ["1.1.1.1"]\n');
    const c = await loadUserConfig(d, {
      APES_IDP: "https://env.example",
      APES_DNS_SERVERS: "127.0.0.1:5353, [::1]:53",
      APES_DOH_URL: "http://127.0.0.1:8053/resolve",
      APES_ALLOW_LOOPBACK_HTTP: "1",
    });
    expect(c.idp).toBe("https://env.example");
    expect(c.dns).toMatchObject({
      servers: ["127.0.0.1:5353", "[::1]:53"],
      dohUrl: "http://127.0.0.1:8053/resolve",
      allowLoopbackHttp: true,
    });
    expect(c.source).toBe(join(d, "config.toml"));
    const fileOnly = await loadUserConfig(d, { APES_ALLOW_LOOPBACK_HTTP: "true" });
    expect(fileOnly.idp).toBe("https://file.example");
    expect(fileOnly.dns.allowLoopbackHttp).toBe(false); // only "1" enables it
  });

  it("a file that cannot be read is a config error", async () => {
    const d = join(dir, "unreadable");
    await mkdir(join(d, "config.toml"), { recursive: true }); // a directory: EISDIR
    await expect(loadUserConfig(d, {})).rejects.toMatchObject({ exitCode: ExitCode.CONFIG });
  });
});
