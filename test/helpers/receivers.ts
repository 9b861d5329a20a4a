import { createDecipheriv, createHmac, type ECDH } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import { createSecureContext, TLSSocket } from "node:tls";

/**
 * Real receivers on loopback for the notification tests: an HTTP endpoint (webhooks, ntfy, a Web
 * Push service) that records what it gets and answers as told, and a small SMTP server with
 * STARTTLS and AUTH PLAIN (RFC 5321, 3207, 4954). Both are third parties' protocols, so these are
 * stand-ins for the receiving side, not for anything of ours.
 */

export interface Received {
  method: string;
  path: string;
  headers: IncomingMessage["headers"];
  body: Buffer;
}

export type Answer = number | "hang";

export interface HttpReceiver {
  url: string;
  port: number;
  received: Received[];
  /** What the next requests to a path get (a status or "hang"), in order; after the list: `otherwise`. */
  script: Map<string, Answer[]>;
  otherwise: Answer;
  /** Requests that are hanging (no answer yet). */
  hanging(): number;
  /** Hanging requests that the client gave up on (closed) so far. */
  abandoned(): number;
  waitFor(count: number, timeoutMs?: number): Promise<Received[]>;
  /** Stop listening (connections refused) and start again on the same port. */
  down(): Promise<void>;
  up(): Promise<void>;
  close(): Promise<void>;
}

async function until<T>(what: string, check: () => T | undefined, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function httpReceiver(): Promise<HttpReceiver> {
  let server: Server;
  const open = new Set<ServerResponse>();
  let abandoned = 0;
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      r.received.push({
        method: req.method ?? "",
        path: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks),
      });
      const scripted = r.script.get(req.url ?? "");
      const answer = scripted?.length ? scripted.shift()! : r.otherwise;
      if (answer === "hang") {
        open.add(res);
        res.on("close", () => {
          if (open.delete(res)) abandoned++;
        });
        return;
      }
      res.writeHead(answer, { "content-type": "text/plain" }).end("ok");
    });
  };
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      server = createServer(handler);
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
    });
  const port = await listen(0);
  const stop = () =>
    new Promise<void>((resolve) => {
      for (const res of open) {
        open.delete(res);
        res.destroy();
      }
      server.closeAllConnections();
      server.close(() => resolve());
    });
  const r: HttpReceiver = {
    url: `http://127.0.0.1:${port}`,
    port,
    received: [],
    script: new Map(),
    otherwise: 200,
    hanging: () => open.size,
    abandoned: () => abandoned,
    waitFor: (count, timeoutMs = 20_000) =>
      until(
        `${count} request(s) at the receiver`,
        () => (r.received.length >= count ? r.received : undefined),
        timeoutMs,
      ),
    down: stop,
    up: async () => {
      await listen(port);
    },
    close: stop,
  };
  return r;
}

export interface Mail {
  from: string;
  to: string[];
  data: string;
  /** STARTTLS was done before MAIL FROM. */
  tls: boolean;
  /** The AUTH PLAIN identity and password, when given. */
  auth?: { user: string; pass: string };
}

export interface SmtpServer {
  port: number;
  mails: Mail[];
  waitFor(count: number, timeoutMs?: number): Promise<Mail[]>;
  close(): Promise<void>;
}

/** A small SMTP server: EHLO, STARTTLS (with the given certificate), AUTH PLAIN, MAIL, RCPT, DATA, QUIT. */
export async function smtpServer(tls: { cert: string; key: string }): Promise<SmtpServer> {
  const context = createSecureContext({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) });
  const sockets = new Set<Socket>();
  const mails: Mail[] = [];
  const server: NetServer = createNetServer((raw) => {
    sockets.add(raw);
    raw.on("close", () => sockets.delete(raw));
    let socket: Socket = raw;
    let secure = false;
    let buffer = "";
    let inData = false;
    let mail: Partial<Mail> & { to: string[] } = { to: [] };
    let auth: Mail["auth"];
    const say = (line: string) => socket.write(`${line}\r\n`);
    const onLine = (line: string) => {
      if (inData) {
        if (line === ".") {
          inData = false;
          mails.push({
            from: mail.from ?? "",
            to: mail.to,
            data: mail.data ?? "",
            tls: secure,
            ...(auth ? { auth } : {}),
          });
          mail = { to: [] };
          say("250 queued");
        } else mail.data = `${mail.data ?? ""}${line.startsWith("..") ? line.slice(1) : line}\n`;
        return;
      }
      const [verb = "", ...rest] = line.split(" ");
      const arg = rest.join(" ");
      switch (verb.toUpperCase()) {
        case "EHLO":
          socket.write(
            `250-localhost\r\n${secure ? "250-AUTH PLAIN\r\n" : "250-STARTTLS\r\n"}250 8BITMIME\r\n`,
          );
          break;
        case "STARTTLS": {
          say("220 go ahead");
          socket.removeAllListeners("data");
          const t = new TLSSocket(raw, { isServer: true, secureContext: context });
          socket = t;
          secure = true;
          buffer = "";
          t.on("data", onData);
          t.on("error", () => raw.destroy());
          break;
        }
        case "AUTH": {
          if (!secure) {
            say("530 STARTTLS first");
            break;
          }
          const [mech, initial] = arg.split(" ");
          if (mech !== "PLAIN" || !initial) {
            say("504 PLAIN with an initial response only");
            break;
          }
          const [, user = "", pass = ""] = Buffer.from(initial, "base64").toString("utf8").split("\0");
          auth = { user, pass };
          say("235 ok");
          break;
        }
        case "MAIL":
          mail.from = arg
            .replace(/^FROM:\s*/i, "")
            .replace(/[<>]/g, "")
            .split(" ")[0];
          say("250 ok");
          break;
        case "RCPT":
          mail.to.push(arg.replace(/^TO:\s*/i, "").replace(/[<>]/g, ""));
          say("250 ok");
          break;
        case "DATA":
          inData = true;
          say("354 end with .");
          break;
        case "QUIT":
          say("221 bye");
          socket.end();
          break;
        case "RSET":
        case "NOOP":
          say("250 ok");
          break;
        default:
          say("502 not implemented");
      }
    };
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString("utf8");
      for (let nl = buffer.indexOf("\r\n"); nl !== -1; nl = buffer.indexOf("\r\n")) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 2);
        onLine(line);
      }
    };
    raw.on("data", onData);
    raw.on("error", () => undefined);
    say("220 localhost ESMTP test");
  });
  const port = await new Promise<number>((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port)),
  );
  return {
    port,
    mails,
    waitFor: (count, timeoutMs = 20_000) =>
      until(`${count} mail(s)`, () => (mails.length >= count ? mails : undefined), timeoutMs),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * What a browser does with a Web Push message (RFC 8291 over RFC 8188 aes128gcm, one record): the
 * receiving side, written from the RFC with node:crypto, independent of the library that encrypted.
 */
export function decryptWebPush(body: Buffer, ua: ECDH, authSecret: Buffer): Buffer {
  const salt = body.subarray(0, 16);
  const idlen = body[20]!;
  const asPublic = body.subarray(21, 21 + idlen);
  const ciphertext = body.subarray(21 + idlen);
  const hmac = (key: Buffer, ...data: Buffer[]) => {
    const h = createHmac("sha256", key);
    for (const d of data) h.update(d);
    return h.digest();
  };
  const ecdhSecret = ua.computeSecret(asPublic);
  const prkKey = hmac(authSecret, ecdhSecret);
  const keyInfo = Buffer.concat([Buffer.from("WebPush: info\0"), ua.getPublicKey(), asPublic]);
  const ikm = hmac(prkKey, keyInfo, Buffer.from([1]));
  const prk = hmac(salt, ikm);
  const cek = hmac(prk, Buffer.from("Content-Encoding: aes128gcm\0"), Buffer.from([1])).subarray(0, 16);
  const nonce = hmac(prk, Buffer.from("Content-Encoding: nonce\0"), Buffer.from([1])).subarray(0, 12);
  const decipher = createDecipheriv("aes-128-gcm", cek, nonce);
  decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
  const padded = Buffer.concat([
    decipher.update(ciphertext.subarray(0, ciphertext.length - 16)),
    decipher.final(),
  ]);
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end--;
  if (padded[end] !== 2) throw new Error("not the last record (padding delimiter 0x02 missing)");
  return padded.subarray(0, end);
}
