import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyWebhook } from "../../protocol/webhook.ts";
import { addUser, apesBin, type IdpHandle, startIdp } from "../helpers/idp.ts";
import { type HttpReceiver, httpReceiver } from "../helpers/receivers.ts";
import { type CliUser, cliUser } from "./cli-helpers.ts";

// The approver's commands on the real binary: `apes notify add|list|test|remove` against the real
// IdP and a real receiver, and `apes grants watch` as JSON lines and in a real terminal (tmux).

let idp: IdpHandle;
let alice: CliUser; // human, owns bot: the approver
let bot: CliUser; // agent: the requester
let hook: HttpReceiver;
let dir: string;
let socket: string;

function tmux(...args: string[]): string {
  return execFileSync("tmux", ["-S", socket, ...args], { encoding: "utf8", timeout: 10_000 });
}

async function until<T>(what: string, check: () => T | undefined, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "apes-notify-cli-"));
  socket = join(dir, "tmux.sock");
  tmux("new-session", "-d", "-s", "keep", "sleep", "600");
  hook = await httpReceiver();
  writeFileSync(join(dir, "idp.toml"), "[notify]\nallow_local_targets = true\n");
  idp = await startIdp({ extraArgs: ["--config", join(dir, "idp.toml")] });
  alice = cliUser("alice@example.com", idp.url);
  bot = cliUser("bot@example.com", idp.url);
  await addUser(idp.dataDir, alice.email, { publicKey: alice.publicLine });
  await addUser(idp.dataDir, bot.email, { agent: true, owner: alice.email, publicKey: bot.publicLine });
  for (const u of [alice, bot]) {
    const r = await u.run(["login", u.email]);
    if (r.code !== 0) throw new Error(`login ${u.email}: ${r.stderr}`);
  }
});

afterAll(async () => {
  try {
    tmux("kill-server");
  } catch {
    // already gone
  }
  await idp?.stop();
  await hook?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function request(argv: string[]): Promise<string> {
  const r = await bot.run(["grants", "request", "--host", "web1", "--reason", "cleanup", "--", ...argv]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.trim();
}

describe("apes notify", () => {
  it("add, list --json, test, remove a webhook", async () => {
    const add = await alice.run([
      "--json",
      "notify",
      "add",
      "webhook",
      `${hook.url}/cli`,
      "--events",
      "pending",
    ]);
    expect(add.code, add.stderr).toBe(0);
    const sub = JSON.parse(add.stdout);
    expect(sub).toMatchObject({ channel: "webhook", target: `${hook.url}/cli`, events: ["pending"] });
    expect(sub.secret).toMatch(/^whsec_/);

    const list = await alice.run(["--json", "notify", "list"]);
    expect(list.code, list.stderr).toBe(0);
    const subs = JSON.parse(list.stdout);
    expect(subs).toEqual([
      {
        id: sub.id,
        channel: "webhook",
        target: `${hook.url}/cli`,
        events: ["pending"],
        created_at: sub.created_at,
      },
    ]);

    const test = await alice.run(["notify", "test", sub.id]);
    expect(test.code, test.stderr).toBe(0);
    const [got] = await hook.waitFor(1);
    expect(got!.path).toBe("/cli");
    expect(JSON.parse(got!.body.toString("utf8"))).toMatchObject({ type: "test" });
    expect(
      verifyWebhook(
        sub.secret,
        got!.headers as Record<string, string>,
        got!.body,
        Math.floor(Date.now() / 1000),
      ).ok,
    ).toBe(true);

    // The human form shows it too (and never the secret again).
    const human = await alice.run(["notify", "list"]);
    expect(human.stdout).toContain(sub.id);
    expect(human.stdout).not.toContain(sub.secret);
    expect(human.stdout).toContain("channels this IdP offers: webhook");

    const rm = await alice.run(["notify", "remove", sub.id]);
    expect(rm.code, rm.stderr).toBe(0);
    expect(JSON.parse((await alice.run(["--json", "notify", "list"])).stdout)).toEqual([]);
    expect((await alice.run(["notify", "remove", sub.id])).code).not.toBe(0);
  });

  it("refuses what the IdP refuses, and bad arguments before asking", async () => {
    const plain = await alice.run(["notify", "add", "webhook", "http://hooks.example.com/x"]);
    expect(plain.code).not.toBe(0);
    expect(plain.stderr).toContain("https");
    const ntfy = await alice.run(["notify", "add", "ntfy", "topic"]);
    expect(ntfy.code).not.toBe(0);
    expect(ntfy.stderr).toContain("does not offer the ntfy channel");
    expect((await alice.run(["notify", "add", "pager", "x"])).code).toBe(2);
    expect(
      (await alice.run(["notify", "add", "webhook", "https://h.example/x", "--events", "all"])).code,
    ).toBe(2);
    expect((await alice.run(["notify", "remove", "not-an-id"])).code).toBe(2);
  });
});

describe("apes grants watch", () => {
  it("--json: one line per pending grant as it arrives and per decision; SIGINT exits 0", async () => {
    const already = await request(["ls", "/srv"]);
    const p: ChildProcess = spawn(apesBin(), ["--json", "grants", "watch"], {
      env: alice.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    p.stdout!.on("data", (c: Buffer) => (out += c.toString("utf8")));
    p.stderr!.on("data", (c: Buffer) => (err += c.toString("utf8")));
    const exited = new Promise<number | null>((r) => p.once("exit", (code) => r(code)));
    const lines = () =>
      out
        .split("\n")
        .filter(Boolean)
        .map(
          (l) =>
            JSON.parse(l) as { event: string; grant: { id: string; status: string; decided_by?: string } },
        );
    try {
      await until("the waiting grant", () => lines().some((l) => l.grant.id === already));
      const fresh = await request(["systemctl", "restart", "nginx"]);
      await until("the new grant", () => lines().some((l) => l.grant.id === fresh));
      expect((await alice.run(["grants", "approve", fresh])).code).toBe(0);
      await until("the decision", () => lines().some((l) => l.event === "decided" && l.grant.id === fresh));
      expect((await alice.run(["grants", "deny", already])).code).toBe(0);
      await until("the denial", () => lines().some((l) => l.event === "decided" && l.grant.id === already));
      expect(lines().map((l) => [l.event, l.grant.id, l.grant.status])).toEqual([
        ["pending", already, "pending"],
        ["pending", fresh, "pending"],
        ["decided", fresh, "approved"],
        ["decided", already, "denied"],
      ]);
      expect(lines()[2]!.grant.decided_by).toBe(alice.email);
    } finally {
      p.kill("SIGINT");
    }
    expect(await exited, err).toBe(0);
  });

  it("in a terminal: escaped commands with the warning mark, Ctrl-C ends it (exit 0)", async () => {
    const script = join(dir, "watch.sh");
    const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    const env = Object.entries(alice.env).map(([k, v]) => q(`${k}=${v}`));
    writeFileSync(
      script,
      // The shell survives the Ctrl-C (a trap: the child does not inherit it) to report the exit status.
      `trap : INT\nenv -i TERM=screen ${env.join(" ")} ${q(apesBin())} grants watch\necho "__END__ $?"\nexec sleep 600\n`,
    );
    tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", "w", "sh", script);
    const screen = () => tmux("capture-pane", "-p", "-J", "-t", "w");
    try {
      await until("the watch to start", () => screen().includes("watching for grants"));
      const id = await request(["sh", "-c", "rm -rf /srv\x1b[2K\rls -l /srv"]);
      const shown = String.raw`sh -c $'rm -rf /srv\x1b[2K\rls -l /srv'`;
      await until("the grant on screen", () => screen().includes(id));
      const line = screen()
        .split("\n")
        .find((l) => l.includes(id))!;
      expect(line).toMatch(/^\d\d:\d\d:\d\d pending {2}/);
      expect(line).toContain(`bot@example.com on web1: [!] ${shown} (reason: cleanup)`);
      expect((await alice.run(["grants", "deny", id])).code).toBe(0);
      await until("the decision on screen", () =>
        screen()
          .split("\n")
          .some((l) => l.includes(id) && l.includes("denied")),
      );
      expect(screen()).toMatch(new RegExp(`denied +${id} bot@example.com on web1 by alice@example.com`));
      tmux("send-keys", "-t", "w", "C-c");
      const end = await until("the exit", () => /__END__ (\d+)/.exec(screen()) ?? undefined);
      expect(end[1]).toBe("0");
    } finally {
      try {
        tmux("kill-session", "-t", "w");
      } catch {
        // ended already
      }
    }
  });

  it("--interactive asks per grant (a approves, d denies, Enter skips); --desktop calls notify-send", async () => {
    // notify-send as a desktop has it: here a script on PATH that records its argv.
    const bin = join(dir, "bin");
    const record = join(dir, "notify-send.args");
    mkdirSync(bin, { recursive: true });
    writeFileSync(
      join(bin, "notify-send"),
      `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a"; done >> ${record}\n`,
      { mode: 0o755 },
    );
    const script = join(dir, "interactive.sh");
    const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    const env = Object.entries({ ...alice.env, PATH: `${bin}:${alice.env.PATH}` }).map(([k, v]) =>
      q(`${k}=${v}`),
    );
    writeFileSync(
      script,
      `trap : INT\nenv -i TERM=screen ${env.join(" ")} ${q(apesBin())} grants watch --interactive --desktop\necho "__END__ $?"\nexec sleep 600\n`,
    );
    tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", "i", "sh", script);
    const screen = () => tmux("capture-pane", "-p", "-J", "-t", "i");
    try {
      await until("the watch to start", () => screen().includes("watching for grants"));
      const first = await request(["systemctl", "reload", "nginx"]);
      await until("the question", () => screen().includes(`${first}: approve, deny or skip? [a/d/S]`));
      tmux("send-keys", "-t", "i", "a", "Enter");
      await until("the approval", () => screen().includes(`approved ${first}`));
      const second = await request(["rm", "-rf", "/var/cache/x"]);
      await until("the second question", () => screen().includes(`${second}: approve, deny or skip?`));
      tmux("send-keys", "-t", "i", "Enter"); // skip: stays pending
      const third = await request(["reboot"]);
      await until("the third question", () => screen().includes(`${third}: approve, deny or skip?`));
      tmux("send-keys", "-t", "i", "d", "Enter");
      await until("the denial", () => screen().includes(`denied ${third}`));
      const status = async (id: string) =>
        JSON.parse((await alice.run(["--json", "grants", "show", id])).stdout).status;
      expect([await status(first), await status(second), await status(third)]).toEqual([
        "approved",
        "pending",
        "denied",
      ]);
      const args = readFileSync(record, "utf8");
      expect(args).toContain(
        "apes: bot@example.com asks for approval on web1\nsystemctl reload nginx\nreason: cleanup\n",
      );
      tmux("send-keys", "-t", "i", "C-c");
      const end = await until("the exit", () => /__END__ (\d+)/.exec(screen()) ?? undefined);
      expect(end[1]).toBe("0");
      expect((await alice.run(["grants", "deny", second])).code).toBe(0);
    } finally {
      try {
        tmux("kill-session", "-t", "i");
      } catch {
        // ended already
      }
    }
  });

  it("--interactive refuses without a terminal", async () => {
    const r = await alice.run(["grants", "watch", "--interactive"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--interactive needs a terminal");
  });
});
