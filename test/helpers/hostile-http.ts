import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A real loopback HTTP server that misbehaves on purpose (endless bodies, lying Content-Length,
 * trickling bytes) and counts what it received and sent, so a test can assert that a client gave up
 * early and that no request reached it at all.
 */

export type HostileMode =
  /** 200 with no Content-Length and 64 KiB chunks for as long as the client reads. */
  | "endless"
  /** 200 announcing `Content-Length: 1 GiB`, then one chunk and silence. */
  | "huge-length"
  /** 200 with one byte every 50 ms, forever. */
  | "trickle";

export interface HostileServer {
  url: string;
  /** Requests received, in order. */
  requests: { method: string; url: string; authorization?: string }[];
  /** Body bytes handed to the socket so far (kernel buffers included). */
  bytesSent(): number;
  /** Resolves when every response so far has closed. */
  settled(): Promise<void>;
  close(): Promise<void>;
}

const CHUNK = Buffer.alloc(64 * 1024, "x");

export async function startHostileServer(
  mode: HostileMode | ((req: IncomingMessage, res: ServerResponse) => void),
): Promise<HostileServer> {
  const requests: HostileServer["requests"] = [];
  let sent = 0;
  const open = new Set<Promise<void>>();
  const timers = new Set<NodeJS.Timeout>();
  const server: Server = createServer((req, res) => {
    requests.push({ method: req.method ?? "", url: req.url ?? "", authorization: req.headers.authorization });
    open.add(new Promise<void>((resolve) => res.on("close", resolve)));
    if (typeof mode === "function") return mode(req, res);
    if (mode === "endless") {
      res.writeHead(200, { "content-type": "application/json" });
      const pump = () => {
        while (!res.destroyed) {
          sent += CHUNK.length;
          if (!res.write(CHUNK)) return void res.once("drain", pump);
        }
      };
      pump();
    } else if (mode === "huge-length") {
      res.writeHead(200, { "content-type": "application/json", "content-length": String(1024 ** 3) });
      sent += CHUNK.length;
      res.write(CHUNK);
    } else {
      res.writeHead(200, { "content-type": "application/json" });
      const timer = setInterval(() => {
        if (res.destroyed) return clearInterval(timer);
        sent += 1;
        res.write(" ");
      }, 50);
      timers.add(timer);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    bytesSent: () => sent,
    settled: async () => {
      await Promise.all(open);
    },
    close: async () => {
      for (const t of timers) clearInterval(t);
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
