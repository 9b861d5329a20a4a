/**
 * DDISA resolution (docs/protocol.md, section 1): TXT at `_ddisa.<domain>` over DNS, DNS-over-HTTPS JSON as
 * the fallback, and a TTL cache keyed by the bare domain.
 *
 * Why our own DNS client: node:dns `resolveTxt` returns no TTL (and `resolveAny` sends ANY queries,
 * which many servers refuse, RFC 8482), but the TTL must be honoured. A TXT query is one UDP datagram
 * each way, so this file speaks the wire format directly (RFC 1035, EDNS0 with a 4096-byte payload, TCP
 * when the answer is truncated). node:dns is only used for the system's resolver list.
 *
 * Failure semantics (what triggers the DoH fallback):
 * - NOERROR with TXT answers: records. NOERROR without TXT (NODATA) and NXDOMAIN are authoritative
 *   "no record" answers: no fallback, cached as a miss (shorter TTL).
 * - SERVFAIL, REFUSED, FORMERR, NOTIMP, any other rcode, a malformed or mismatched answer, a timeout or a
 *   network error: that server failed; the next configured server is tried, then DoH (if configured).
 *   If everything failed: DnsUnavailableError (the CLI exits 69). Failures are never cached.
 */
import { type ParseOptions, type Selection, selectDdisaRecord } from "./ddisa.ts";

/** TTL policy, in seconds. */
export const DEFAULT_TTL_S = 300; // when an answer carries no TTL (a DoH answer without TTL)
export const MAX_TTL_S = 86_400; // never trust a record for more than a day
export const NEGATIVE_TTL_S = 60; // "no record" is cached at most this long (or the SOA minimum if shorter)
export const DNS_PORT = 53;

export type Rcode = "NOERROR" | "NODATA" | "NXDOMAIN";

/** One successful (authoritative) answer for a TXT question. */
export interface TxtAnswer {
  /** TXT records at the name (character-strings of one record joined), in answer order. */
  txt: string[];
  /** Seconds the answer may be cached (already clamped). */
  ttl: number;
  rcode: Rcode;
  /** `host:port` of the DNS server, or the DoH URL. */
  server: string;
}

export type DnsFailureKind = "timeout" | "network" | "servfail" | "refused" | "rcode" | "malformed";

/** One server failed to give an authoritative answer (the caller tries the next one). */
export class DnsQueryError extends Error {
  readonly kind: DnsFailureKind;
  readonly server: string;
  constructor(kind: DnsFailureKind, server: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DnsQueryError";
    this.kind = kind;
    this.server = server;
  }
}

/** Every server (and DoH, if configured) failed. */
export class DnsUnavailableError extends Error {
  readonly queryName: string;
  readonly failures: DnsQueryError[];
  constructor(name: string, failures: DnsQueryError[]) {
    super(
      failures.length
        ? `cannot resolve ${name}: ${failures.map((f) => `${f.server}: ${f.message}`).join("; ")}`
        : `cannot resolve ${name}: no DNS server configured`,
    );
    this.name = "DnsUnavailableError";
    this.queryName = name;
    this.failures = failures;
  }
}

// ---------------------------------------------------------------------------------------------
// Servers

export interface DnsServer {
  host: string;
  port: number;
  family: 4 | 6;
}

/**
 * `1.2.3.4`, `1.2.3.4:5353`, `::1`, `[::1]:5353`. Only IP literals: resolving a resolver's name would
 * need a resolver.
 */
export function parseServer(text: string, isIP: (s: string) => number): DnsServer {
  const t = text.trim();
  let host = t;
  let port = DNS_PORT;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(t);
  if (bracket) {
    host = bracket[1]!;
    if (bracket[2] !== undefined) port = Number(bracket[2]);
  } else if (isIP(t) === 0) {
    const m = /^([^:]+):(\d+)$/.exec(t);
    if (m) {
      host = m[1]!;
      port = Number(m[2]);
    }
  }
  const family = isIP(host);
  if (family !== 4 && family !== 6) {
    throw new Error(`DNS server "${text}" is not an IP address with an optional port (1.2.3.4:53, [::1]:53)`);
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`DNS server "${text}": bad port`);
  return { host, port, family };
}

export function formatServer(s: DnsServer): string {
  return s.family === 6 ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`;
}

// ---------------------------------------------------------------------------------------------
// Wire format (RFC 1035 section 4, EDNS0 RFC 6891)

const TYPE_CNAME = 5;
const TYPE_SOA = 6;
const TYPE_TXT = 16;
const TYPE_OPT = 41;
const CLASS_IN = 1;
const RCODES: Record<number, string> = {
  1: "FORMERR",
  2: "SERVFAIL",
  3: "NXDOMAIN",
  4: "NOTIMP",
  5: "REFUSED",
};

export function encodeTxtQuery(id: number, name: string): Uint8Array {
  const labels = name.replace(/\.$/, "").split(".");
  const parts: number[] = [];
  for (const label of labels) {
    const bytes = new TextEncoder().encode(label);
    if (bytes.length === 0 || bytes.length > 63) throw new Error(`bad DNS name "${name}"`);
    parts.push(bytes.length, ...bytes);
  }
  parts.push(0);
  if (parts.length > 255) throw new Error(`DNS name too long: "${name}"`);
  const header = [id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]; // RD, 1 question, 1 additional
  const question = [...parts, 0, TYPE_TXT, 0, CLASS_IN];
  const opt = [0, 0, TYPE_OPT, 0x10, 0x00, 0, 0, 0, 0, 0, 0]; // root, OPT, payload 4096, no flags, rdlen 0
  return Uint8Array.from([...header, ...question, ...opt]);
}

/** A resource record reduced to what TXT resolution needs; `data` is the TXT text or the target name. */
export interface Rr {
  name: string;
  type: number;
  ttl: number;
  data: string;
  /** SOA minimum (negative caching, RFC 2308). */
  soaMinimum?: number;
}

export interface DecodedMessage {
  id: number;
  truncated: boolean;
  rcode: number;
  questionName?: string;
  questionType?: number;
  answers: Rr[];
  authority: Rr[];
}

class Reader {
  pos = 0;
  readonly buf: Uint8Array;
  readonly view: DataView;
  constructor(buf: Uint8Array) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  need(n: number) {
    if (this.pos + n > this.buf.length) throw new Error("truncated DNS message");
  }
  u8() {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  u16() {
    this.need(2);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }
  u32() {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }
  /** A possibly compressed name starting at the current position. */
  name(): string {
    const labels: string[] = [];
    let pos = this.pos;
    let jumped = false;
    for (let hops = 0; ; hops++) {
      if (hops > 128 || pos >= this.buf.length) throw new Error("bad DNS name");
      const len = this.buf[pos]!;
      if (len === 0) {
        pos += 1;
        break;
      }
      if ((len & 0xc0) === 0xc0) {
        if (pos + 1 >= this.buf.length) throw new Error("bad DNS name pointer");
        const target = ((len & 0x3f) << 8) | this.buf[pos + 1]!;
        if (!jumped) this.pos = pos + 2;
        jumped = true;
        pos = target;
        continue;
      }
      if (len > 63 || pos + 1 + len > this.buf.length) throw new Error("bad DNS label");
      labels.push(new TextDecoder().decode(this.buf.subarray(pos + 1, pos + 1 + len)));
      pos += 1 + len;
    }
    if (!jumped) this.pos = pos;
    return labels.join(".").toLowerCase();
  }
}

export function decodeMessage(buf: Uint8Array): DecodedMessage {
  const r = new Reader(buf);
  const id = r.u16();
  const flags = r.u16();
  const qd = r.u16();
  const an = r.u16();
  const ns = r.u16();
  r.u16(); // additional: not needed
  if ((flags & 0x8000) === 0) throw new Error("not a DNS response");
  const msg: DecodedMessage = {
    id,
    truncated: (flags & 0x0200) !== 0,
    rcode: flags & 0x000f,
    answers: [],
    authority: [],
  };
  for (let i = 0; i < qd; i++) {
    const name = r.name();
    const type = r.u16();
    r.u16();
    if (i === 0) {
      msg.questionName = name;
      msg.questionType = type;
    }
  }
  const readRr = (): Rr => {
    const name = r.name();
    const type = r.u16();
    r.u16(); // class
    const rawTtl = r.u32();
    const ttl = rawTtl > 0x7fffffff ? 0 : rawTtl; // RFC 2181 section 8
    const len = r.u16();
    r.need(len);
    const end = r.pos + len;
    let data = "";
    let soaMinimum: number | undefined;
    if (type === TYPE_TXT) {
      // One record is one or more <length><bytes> character-strings; joined without separator.
      const chunks: Uint8Array[] = [];
      let p = r.pos;
      while (p < end) {
        const l = buf[p]!;
        if (p + 1 + l > end) throw new Error("bad TXT record");
        chunks.push(buf.subarray(p + 1, p + 1 + l));
        p += 1 + l;
      }
      data = new TextDecoder().decode(Buffer.concat(chunks));
    } else if (type === TYPE_CNAME) {
      data = r.name();
    } else if (type === TYPE_SOA) {
      r.name();
      r.name();
      r.pos += 16; // serial, refresh, retry, expire
      soaMinimum = r.u32();
    }
    r.pos = end;
    return soaMinimum === undefined ? { name, type, ttl, data } : { name, type, ttl, data, soaMinimum };
  };
  for (let i = 0; i < an; i++) msg.answers.push(readRr());
  for (let i = 0; i < ns; i++) msg.authority.push(readRr());
  return msg;
}

/** Normalized owner name: lower case, no trailing dot. */
export function normName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

/**
 * The TXT records for `qname` from an answer section, following a CNAME chain (a recursive resolver
 * returns the chain plus the target's records). TTL: the smallest TTL of the records used.
 */
export function collectTxt(qname: string, answers: readonly Rr[]): { txt: string[]; ttl?: number } {
  let current = normName(qname);
  let ttl: number | undefined;
  const min = (t: number) => {
    ttl = ttl === undefined ? t : Math.min(ttl, t);
  };
  for (let hops = 0; hops < 8; hops++) {
    const cname = answers.find((a) => a.type === TYPE_CNAME && normName(a.name) === current);
    if (!cname) break;
    min(cname.ttl);
    current = normName(cname.data);
  }
  const txt: string[] = [];
  for (const a of answers) {
    if (a.type === TYPE_TXT && normName(a.name) === current) {
      txt.push(a.data);
      min(a.ttl);
    }
  }
  return txt.length ? { txt, ttl } : { txt };
}

/** Negative TTL from the SOA in the authority section (RFC 2308), capped at NEGATIVE_TTL_S. */
export function negativeTtl(authority: readonly Rr[]): number {
  const soa = authority.find((a) => a.type === TYPE_SOA);
  const t = soa ? Math.min(soa.ttl, soa.soaMinimum ?? soa.ttl) : NEGATIVE_TTL_S;
  return clampTtl(t, NEGATIVE_TTL_S);
}

export function clampTtl(ttl: number, max = MAX_TTL_S): number {
  if (!Number.isFinite(ttl) || ttl < 0) return 0;
  return Math.min(Math.floor(ttl), max);
}

/** Turn a decoded response into an answer, or throw DnsQueryError for a failure (fallback applies). */
export function interpretResponse(msg: DecodedMessage, qname: string, server: string): TxtAnswer {
  if (msg.questionName !== undefined && msg.questionName !== normName(qname)) {
    throw new DnsQueryError("malformed", server, `answer for a different name (${msg.questionName})`);
  }
  if (msg.rcode === 3) return { txt: [], ttl: negativeTtl(msg.authority), rcode: "NXDOMAIN", server };
  if (msg.rcode !== 0) {
    const name = RCODES[msg.rcode] ?? `rcode ${msg.rcode}`;
    const kind = msg.rcode === 2 ? "servfail" : msg.rcode === 5 ? "refused" : "rcode";
    throw new DnsQueryError(kind, server, `server answered ${name}`);
  }
  const { txt, ttl } = collectTxt(qname, msg.answers);
  if (txt.length === 0) return { txt: [], ttl: negativeTtl(msg.authority), rcode: "NODATA", server };
  return { txt, ttl: clampTtl(ttl ?? DEFAULT_TTL_S), rcode: "NOERROR", server };
}

// ---------------------------------------------------------------------------------------------
// Transport

export type TxtQuery = (name: string, server: DnsServer, timeoutMs: number) => Promise<TxtAnswer>;

/** One TXT query to one server over UDP (TCP when truncated). */
export const queryTxtUdp: TxtQuery = async (name, server, timeoutMs) => {
  const dgram = await import("node:dgram");
  const { randomInt } = await import("node:crypto");
  const label = formatServer(server);
  const id = randomInt(0, 0x10000); // random id + the OS's random source port (RFC 5452)
  const query = encodeTxtQuery(id, name);
  const msg = await new Promise<DecodedMessage>((resolve, reject) => {
    const socket = dgram.createSocket(server.family === 6 ? "udp6" : "udp4");
    let done = false;
    const finish = (err: Error | undefined, value?: DecodedMessage) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearTimeout(resend);
      socket.close();
      if (err) reject(err);
      else resolve(value!);
    };
    const timer = setTimeout(
      () => finish(new DnsQueryError("timeout", label, `no answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    // UDP may drop a datagram: ask once more halfway through the timeout.
    const resend = setTimeout(() => socket.send(query), Math.max(1, Math.floor(timeoutMs / 2)));
    socket.on("error", (e) => finish(new DnsQueryError("network", label, e.message, { cause: e })));
    // A connected socket only accepts datagrams from the server and reports ICMP "port unreachable".
    socket.connect(server.port, server.host, () => socket.send(query));
    socket.on("message", (data) => {
      let m: DecodedMessage;
      try {
        m = decodeMessage(data);
      } catch {
        return; // garbage on our port: keep waiting for the real answer
      }
      if (m.id !== id) return;
      finish(undefined, m);
    });
  });
  if (msg.truncated) return queryTxtTcp(name, server, timeoutMs);
  return interpretResponse(msg, name, label);
};

export const queryTxtTcp: TxtQuery = async (name, server, timeoutMs) => {
  const net = await import("node:net");
  const { randomInt } = await import("node:crypto");
  const label = formatServer(server);
  const id = randomInt(0, 0x10000);
  const query = encodeTxtQuery(id, name);
  const msg = await new Promise<DecodedMessage>((resolve, reject) => {
    const socket = net.connect({ host: server.host, port: server.port });
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (err: Error | undefined, value?: DecodedMessage) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value!);
    };
    const timer = setTimeout(
      () => finish(new DnsQueryError("timeout", label, `no answer over TCP within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.on("error", (e) => finish(new DnsQueryError("network", label, e.message, { cause: e })));
    socket.on("connect", () => {
      const len = Buffer.alloc(2);
      len.writeUInt16BE(query.length);
      socket.write(Buffer.concat([len, query]));
    });
    socket.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 2) return;
      const need = buf.readUInt16BE(0);
      if (buf.length < 2 + need) return;
      try {
        const m = decodeMessage(buf.subarray(2, 2 + need));
        if (m.id !== id) throw new Error("answer id mismatch");
        finish(undefined, m);
      } catch (e) {
        finish(new DnsQueryError("malformed", label, (e as Error).message));
      }
    });
    socket.on("end", () => finish(new DnsQueryError("network", label, "connection closed before an answer")));
  });
  return interpretResponse(msg, name, label);
};

// ---------------------------------------------------------------------------------------------
// Cache

export interface CacheEntry {
  txt: string[];
  rcode: Rcode;
  source: "dns" | "doh";
  server: string;
  expiresAt: number;
}

/**
 * Answers by bare domain (lower case, no trailing dot), for their TTL. Misses are cached too, for
 * at most NEGATIVE_TTL_S. Failures are never cached. Bounded: the oldest entry goes first.
 */
export class DdisaCache {
  readonly #clock: { now(): number };
  readonly #max: number;
  readonly #entries = new Map<string, CacheEntry>();
  constructor(clock: { now(): number }, maxEntries = 1000) {
    this.#clock = clock;
    this.#max = maxEntries;
  }
  get(domain: string): (CacheEntry & { ttl: number }) | undefined {
    const key = normName(domain);
    const e = this.#entries.get(key);
    if (!e) return undefined;
    const left = e.expiresAt - this.#clock.now();
    if (left <= 0) {
      this.#entries.delete(key);
      return undefined;
    }
    return { ...e, ttl: Math.ceil(left / 1000) };
  }
  set(domain: string, answer: TxtAnswer, source: "dns" | "doh"): void {
    const key = normName(domain);
    const ttl = answer.rcode === "NOERROR" ? clampTtl(answer.ttl) : clampTtl(answer.ttl, NEGATIVE_TTL_S);
    this.#entries.delete(key);
    if (ttl === 0) return; // TTL 0: use once, do not cache
    if (this.#entries.size >= this.#max) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
    this.#entries.set(key, {
      txt: [...answer.txt],
      rcode: answer.rcode,
      source,
      server: answer.server,
      expiresAt: this.#clock.now() + ttl * 1000,
    });
  }
  get size(): number {
    return this.#entries.size;
  }
}

// ---------------------------------------------------------------------------------------------
// Resolution

export interface ResolveOptions extends ParseOptions {
  /** `host[:port]` IP literals; default: the system's resolvers (/etc/resolv.conf). */
  servers?: readonly string[];
  /** DNS-over-HTTPS JSON endpoint, used when every DNS server failed. */
  dohUrl?: string;
  /** Per server (and for DoH). */
  timeoutMs?: number;
  fetch?: typeof fetch;
  cache?: DdisaCache;
  /** Injectable transport for unit tests. */
  query?: TxtQuery;
}

export interface Resolution {
  domain: string;
  name: string;
  txt: string[];
  via: "dns" | "doh" | "cache";
  /** Where the answer came from originally (equals `via` unless cached). */
  source: "dns" | "doh";
  /** DNS server `host:port` or DoH URL that answered. */
  server: string;
  rcode: Rcode;
  /** Seconds the answer stays cached (remaining seconds when `via` is "cache"). */
  ttl: number;
  selection: Selection;
  /** Servers that failed before the answer was obtained (for `apes dns check`). */
  failures: { server: string; error: string }[];
}

export async function resolveDdisa(domain: string, options: ResolveOptions = {}): Promise<Resolution> {
  const bare = normName(domain);
  const name = `_ddisa.${bare}`;
  const parse = { allowLoopbackHttp: options.allowLoopbackHttp === true };
  const done = (
    a: { txt: string[]; rcode: Rcode; server: string; ttl: number },
    via: Resolution["via"],
    source: Resolution["source"],
    failures: DnsQueryError[],
  ): Resolution => ({
    domain: bare,
    name,
    txt: a.txt,
    via,
    source,
    server: a.server,
    rcode: a.rcode,
    ttl: a.ttl,
    selection: selectDdisaRecord(a.txt, parse),
    failures: failures.map((f) => ({ server: f.server, error: f.message })),
  });

  const cached = options.cache?.get(bare);
  if (cached) return done(cached, "cache", cached.source, []);

  const timeoutMs = options.timeoutMs ?? 5000;
  const failures: DnsQueryError[] = [];
  const { isIP } = await import("node:net");
  const { getServers } = await import("node:dns"); // the system's resolvers, from /etc/resolv.conf
  const serverTexts = options.servers?.length ? options.servers : getServers();
  const servers = serverTexts.map((s) => parseServer(s, isIP));
  const query = options.query ?? queryTxtUdp;
  for (const server of servers) {
    try {
      const answer = await query(name, server, timeoutMs);
      options.cache?.set(bare, answer, "dns");
      return done(answer, "dns", "dns", failures);
    } catch (e) {
      failures.push(
        e instanceof DnsQueryError
          ? e
          : new DnsQueryError("network", formatServer(server), (e as Error).message, { cause: e }),
      );
    }
  }
  if (options.dohUrl) {
    const { queryDoh } = await import("./doh.ts");
    try {
      const answer = await queryDoh(options.dohUrl, name, { fetch: options.fetch ?? fetch, timeoutMs });
      options.cache?.set(bare, answer, "doh");
      return done(answer, "doh", "doh", failures);
    } catch (e) {
      failures.push(
        e instanceof DnsQueryError
          ? e
          : new DnsQueryError("network", options.dohUrl, (e as Error).message, { cause: e }),
      );
    }
  }
  throw new DnsUnavailableError(name, failures);
}
