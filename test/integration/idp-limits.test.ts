import { mkdtempSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { addUser, api, type IdpHandle, loginWithKey, newKey, startIdp } from "../helpers/idp.ts";

/** The IdP's connection caps, request deadline and per-class rate limits (README "Limits and errors"). */

const DISCOVERY = "/.well-known/openid-configuration";
const dataDir = (name: string) => join(mkdtempSync(join(tmpdir(), `apes-idp-${name}-`)), "data");

/** A raw connection from `localAddress` (any of 127/8): `request()` sends one GET and resolves its status line. */
async function rawClient(url: string, localAddress = "127.0.0.1") {
  const { hostname, port } = new URL(url);
  const socket: Socket = connect({ host: hostname, port: Number(port), localAddress });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.on("error", () => {});
  socket.setEncoding("latin1");
  let received = "";
  let closed = false;
  socket.on("data", (d: string) => {
    received += d;
  });
  const gone = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  void gone.then(() => {
    closed = true;
  });
  return {
    socket,
    gone,
    closed: () => closed,
    received: () => received,
    /** Sends a GET and resolves the status line of its answer (also when the server answered unasked). */
    async request(path = DISCOVERY): Promise<string> {
      const from = received.length;
      socket.write(`GET ${path} HTTP/1.1\r\nhost: ${hostname}\r\n\r\n`);
      for (let i = 0; i < 200 && !received.slice(from).includes("\r\n\r\n") && !closed; i++) {
        await new Promise((r) => setTimeout(r, 25));
      }
      return received.slice(from).split("\r\n")[0] ?? "";
    },
  };
}

describe("idp serve limits", () => {
  let idp: IdpHandle | undefined;
  afterEach(async () => {
    await idp?.stop();
    idp = undefined;
  });

  it("answers 503 with Retry-After beyond the per-client and the total connection caps", async () => {
    idp = await startIdp({
      dataDir: dataDir("caps"),
      extraArgs: ["--max-connections-per-client", "3", "--max-connections", "5"],
    });
    const mine = [];
    for (let i = 0; i < 3; i++) {
      const c = await rawClient(idp.url);
      expect(await c.request()).toBe("HTTP/1.1 200 OK");
      mine.push(c);
    }
    // A fourth connection from the same address is refused at once, with the problem and Retry-After.
    const fourth = await rawClient(idp.url);
    expect(await fourth.request()).toBe("HTTP/1.1 503 Service Unavailable");
    expect(fourth.received()).toMatch(/\r\nretry-after: 1\r\n/i);
    expect(fourth.received()).toMatch(/"type":"https:\/\/openape.org\/errors\/unavailable"/);
    await fourth.gone;
    // Another address still gets in, up to the total cap.
    const other = [await rawClient(idp.url, "127.0.0.2"), await rawClient(idp.url, "127.0.0.2")];
    for (const c of other) expect(await c.request()).toBe("HTTP/1.1 200 OK");
    const third = await rawClient(idp.url, "127.0.0.3");
    expect(await third.request()).toBe("HTTP/1.1 503 Service Unavailable");
    // A closed connection frees its place.
    mine[0]!.socket.destroy();
    await mine[0]!.gone;
    let again = "";
    for (let i = 0; i < 40 && again !== "HTTP/1.1 200 OK"; i++) {
      again = await (await rawClient(idp.url)).request();
      if (again !== "HTTP/1.1 200 OK") await new Promise((r) => setTimeout(r, 50));
    }
    expect(again).toBe("HTTP/1.1 200 OK");
    for (const c of [...mine, ...other]) c.socket.destroy();
  });

  it("answers 503 beyond the rate of new connections per client", async () => {
    idp = await startIdp({ dataDir: dataDir("rate"), extraArgs: ["--connection-rate", "4/1m"] });
    const statuses: string[] = [];
    for (let i = 0; i < 6; i++) {
      const c = await rawClient(idp.url);
      statuses.push(await c.request());
      c.socket.destroy();
    }
    expect(statuses).toEqual([
      ...Array(4).fill("HTTP/1.1 200 OK"),
      "HTTP/1.1 503 Service Unavailable",
      "HTTP/1.1 503 Service Unavailable",
    ]);
    // Another address has its own budget.
    expect(await (await rawClient(idp.url, "127.0.0.2")).request()).toBe("HTTP/1.1 200 OK");
  });

  it("cuts a request whose body arrives too slowly (deadline far below the old 120 s)", async () => {
    idp = await startIdp({ dataDir: dataDir("slow") });
    const c = await rawClient(idp.url);
    c.socket.write(
      "POST /api/auth/challenge HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n" +
        "content-length: 1000\r\n\r\n{",
    );
    // One byte every 500 ms (never idle, never complete), for at most 40 s.
    for (let i = 0; i < 80 && !c.closed(); i++) {
      c.socket.write(" ");
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(c.closed()).toBe(true);
    expect(c.received()).toMatch(/^HTTP\/1\.1 408 /);
    // The server is fine and serves the next client.
    expect((await api(idp.url).get(DISCOVERY)).status).toBe(200);
  }, 60_000);

  it("refuses a chunked body with 411 and closes the connection", async () => {
    idp = await startIdp({ dataDir: dataDir("chunked") });
    const c = await rawClient(idp.url);
    c.socket.write(
      "POST /api/auth/challenge HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n" +
        "transfer-encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
    );
    await c.gone;
    expect(c.received()).toMatch(/^HTTP\/1\.1 411 /);
    expect(c.received()).toMatch(/"type":"https:\/\/openape.org\/errors\/length_required"/);
  });

  it("limits login, token and API requests per class with 429 and Retry-After", async () => {
    const dir = dataDir("classes");
    const k = newKey();
    await addUser(dir, "r@example.com", { publicKey: k.publicLine });
    idp = await startIdp({
      dataDir: dir,
      extraArgs: ["--login-rate-limit", "6/1m", "--token-rate-limit", "3/1m", "--rate-limit", "5/1m"],
    });
    const url = idp.url;
    // login: challenge + authenticate = 2 of the 6; then 4 more challenges; the next is refused.
    const token = await loginWithKey(url, "r@example.com", k.privateKey);
    const challenge = () => api(url).post("/api/auth/challenge", { id: "r@example.com" });
    for (let i = 0; i < 4; i++) expect((await challenge()).status).toBe(200);
    const login429 = await challenge();
    expect(login429.status).toBe(429);
    expect(Number(login429.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    // token: its own bucket (the login bucket is empty, the token endpoint still answers).
    const tokenCall = () => api(url).post("/token", { grant_type: "client_credentials" });
    for (let i = 0; i < 3; i++) expect((await tokenCall()).status).not.toBe(429);
    const token429 = await tokenCall();
    expect(token429.status).toBe(429);
    expect(Number(token429.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    // api: per identity; the first request with a new token also counts for the address (2 of 5 there).
    for (let i = 0; i < 5; i++) expect((await api(url, token).get("/api/me")).status).toBe(200);
    const api429 = await api(url, token).get("/api/me");
    expect(api429.status).toBe(429);
    expect(Number(api429.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
  });

  it("counts invalid bearer tokens per client address before checking their signature", async () => {
    const dir = dataDir("bearer");
    const k = newKey();
    await addUser(dir, "r@example.com", { publicKey: k.publicLine });
    idp = await startIdp({ dataDir: dir, extraArgs: ["--rate-limit", "5/1m"] });
    const token = await loginWithKey(idp.url, "r@example.com", k.privateKey);
    // Forged tokens (well-formed, bad signature) share the address's budget with discovery (1 of
    // the 5, spent by the login): 401 while it lasts, then 429 without a signature check.
    const [h, p] = token.split(".");
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const forged = `${h}.${p}.${Buffer.alloc(64, i).toString("base64url")}`;
      statuses.push((await api(idp.url, forged).get("/api/me")).status);
    }
    expect(statuses).toEqual([401, 401, 401, 401, 429, 429, 429, 429]);
    // Counted before the check, not after a failed one: even a valid token, on its first use (which
    // needs a signature check), is refused while the address has no budget left.
    expect((await api(idp.url, token).get("/api/me")).status).toBe(429);
  });
});
