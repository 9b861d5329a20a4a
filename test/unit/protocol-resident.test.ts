import { chmodSync, mkdtempSync, rmSync, unlinkSync, utimesSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  FrameError,
  FrameReader,
  type Resident,
  ResidentError,
  serveResident,
} from "../../protocol/resident.ts";

const dirs: string[] = [];
const servers: Resident[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close("test_end");
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "apes-resident-"));
  dirs.push(d);
  return d;
}

/** Sends one line and returns everything the server answers until it closes. */
function ask(path: string, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = createConnection(path);
    let got = "";
    c.on("connect", () => c.write(line));
    c.on("data", (d) => {
      got += d.toString();
    });
    c.on("close", () => resolve(got));
    // A connection closed at once (over the limit) may fail the write: it still answered nothing.
    c.on("error", (e: NodeJS.ErrnoException) =>
      e.code === "EPIPE" || e.code === "ECONNRESET" ? resolve(got) : reject(e),
    );
  });
}

async function echoServer(path: string, extra: { idleMs?: number; executable?: string; max?: number } = {}) {
  const s = await serveResident({
    socketPath: path,
    idleMs: extra.idleMs ?? 60_000,
    maxConnections: extra.max ?? 8,
    checkEveryMs: 50,
    executable: extra.executable,
    onConnection: async (socket: Socket) => {
      const r = new FrameReader(socket);
      const line = await r.readLine(100, performance.now() + 2000);
      socket.end(`echo ${line}\n`);
      await new Promise((res) => socket.on("close", res));
    },
  });
  servers.push(s);
  return s;
}

describe("serveResident", () => {
  it("serves connections on a socket in a directory it makes 0700", async () => {
    const path = join(tempDir(), "run", "r.sock");
    await echoServer(path);
    expect(await ask(path, "hello\n")).toBe("ready\necho hello\n");
    const { statSync } = await import("node:fs");
    expect(statSync(join(path, "..")).mode & 0o777).toBe(0o700);
  });

  it("refuses a directory open to others, and one that is a symlink", async () => {
    const d = join(tempDir(), "open");
    const { mkdirSync, symlinkSync } = await import("node:fs");
    mkdirSync(d, { mode: 0o700 });
    chmodSync(d, 0o755);
    await expect(echoServer(join(d, "r.sock"))).rejects.toMatchObject({ code: "unsafe_directory" });
    const link = join(tempDir(), "link");
    chmodSync(d, 0o700);
    symlinkSync(d, link);
    await expect(echoServer(join(link, "r.sock"))).rejects.toBeInstanceOf(ResidentError);
  });

  it("refuses to start beside a live server, and replaces a stale socket file", async () => {
    const path = join(tempDir(), "r.sock");
    const first = await echoServer(path);
    await expect(echoServer(path)).rejects.toMatchObject({ code: "already_running" });
    // A stale socket: bound by a server that is gone without removing its file.
    first.close("test");
    await first.ended;
    const stale = createServer();
    await new Promise<void>((r) => stale.listen(path, r));
    // Closing a node server removes its file; put a dead socket file in place by hand instead.
    await new Promise<void>((r) => stale.close(() => r()));
    const raw = createServer();
    await new Promise<void>((r) => raw.listen(path, r));
    (raw as unknown as { _handle: { close(): void } })._handle.close(); // the fd goes, the file stays
    await echoServer(path);
    expect(await ask(path, "again\n")).toBe("ready\necho again\n");
  });

  it("ends when idle", async () => {
    const s = await echoServer(join(tempDir(), "r.sock"), { idleMs: 150 });
    expect(await s.ended).toBe("idle");
  });

  it("ends when its socket file is removed, and when the executable changes", async () => {
    const path = join(tempDir(), "r.sock");
    const s = await echoServer(path);
    unlinkSync(path);
    expect(await s.ended).toBe("socket_gone");

    const exe = join(tempDir(), "exe");
    writeFileSync(exe, "v1");
    const s2 = await echoServer(join(tempDir(), "r2.sock"), { executable: exe });
    writeFileSync(exe, "version 2");
    utimesSync(exe, new Date(), new Date(Date.now() + 5000));
    expect(await s2.ended).toBe("executable_changed");
    // One whose executable was removed before it could look at it ends at the first check.
    const s3 = await echoServer(join(tempDir(), "r3.sock"), { executable: join(tempDir(), "gone") });
    expect(await s3.ended).toBe("executable_changed");
  });

  it("greets connections beyond maxConnections busy and closes them, serving none of it", async () => {
    const path = join(tempDir(), "r.sock");
    await echoServer(path, { max: 1 });
    const held = createConnection(path); // never sends: holds the one slot
    await new Promise((r) => held.on("connect", r));
    await new Promise((r) => setTimeout(r, 50));
    expect(await ask(path, "second\n")).toBe("busy\n");
    held.destroy();
  });
});

describe("FrameReader", () => {
  async function pair(): Promise<{ client: Socket; reader: FrameReader; close(): void }> {
    const path = join(tempDir(), "f.sock");
    let accepted!: (s: Socket) => void;
    const got = new Promise<Socket>((r) => {
      accepted = r;
    });
    const srv = createServer((s) => accepted(s));
    await new Promise<void>((r) => srv.listen(path, r));
    const client = createConnection(path);
    const socket = await got;
    const close = () => {
      socket.destroy();
      srv.close();
    };
    return { client, reader: new FrameReader(socket), close };
  }

  it("reads lines and counted bytes across chunks, keeping the rest", async () => {
    const p = await pair();
    p.client.write("policy 5\nab");
    setTimeout(() => p.client.write('cde{"x":1}\n'), 20);
    const deadline = performance.now() + 2000;
    expect(await p.reader.readLine(20, deadline)).toBe("policy 5");
    expect((await p.reader.readBytes(5, deadline)).toString()).toBe("abcde");
    expect(await p.reader.readLine(20, deadline)).toBe('{"x":1}');
    p.close();
  });

  it("fails a line over its bound, a read past its deadline, and a peer that closed", async () => {
    const p = await pair();
    p.client.write("x".repeat(50));
    await expect(p.reader.readLine(10, performance.now() + 2000)).rejects.toMatchObject({ code: "too_long" });
    const q = await pair();
    await expect(q.reader.readLine(10, performance.now() + 100)).rejects.toMatchObject({ code: "timeout" });
    const r = await pair();
    r.client.end("no newline");
    await expect(r.reader.readLine(100, performance.now() + 2000)).rejects.toBeInstanceOf(FrameError);
    p.close();
    q.close();
    r.close();
  });
});
