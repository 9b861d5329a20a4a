/**
 * DNS-over-HTTPS, JSON flavour (the `application/dns-json` API of Google and Cloudflare):
 *   GET <doh>?name=_ddisa.example.com&type=TXT   Accept: application/dns-json
 *   {"Status":0,"Answer":[{"name":"_ddisa.example.com.","type":16,"TTL":300,"data":"\"v=ddisa1 ...\""}]}
 * Status 0 = NOERROR (NODATA when no TXT answer), 3 = NXDOMAIN: authoritative. Anything else, an HTTP
 * error or a malformed body is a failure.
 */
import { BodyTooLargeError, discardBody, readBoundedResponse } from "./bounded-body.ts";
import { isLoopbackHost } from "./ddisa.ts";
import {
  clampTtl,
  collectTxt,
  DEFAULT_TTL_S,
  DnsQueryError,
  NEGATIVE_TTL_S,
  normName,
  type Rr,
  type TxtAnswer,
} from "./resolver.ts";

/** A TXT answer is a few hundred bytes; more is refused while reading. */
export const DOH_MAX_BODY = 256 * 1024;

/**
 * The text of one TXT `data` field: `"part one" "part two"` -> `part onepart two` (a record's
 * character-strings are joined without separator), with `\"`, `\\` and `\DDD` escapes decoded.
 * Data that is not quoted at all is taken as it is.
 */
export function parseTxtData(data: string): string {
  const t = data.trim();
  if (!t.startsWith('"')) return t;
  // Collect bytes: `\DDD` escapes are byte values, so UTF-8 sequences may be split across escapes.
  const bytes: number[] = [];
  const enc = new TextEncoder();
  const malformed = (why: string) => new Error(`malformed TXT data (${why}): ${data}`);
  let i = 0;
  while (i < t.length) {
    if (t[i] === " " || t[i] === "\t") {
      i++;
      continue;
    }
    if (t[i] !== '"') throw malformed("text outside quotes");
    i++;
    let closed = false;
    while (i < t.length) {
      const c = t[i]!;
      if (c === "\\") {
        const dec = /^\d{3}/.exec(t.slice(i + 1, i + 4));
        if (dec) {
          const v = Number(dec[0]);
          if (v > 255) throw malformed("escape above 255");
          bytes.push(v);
          i += 4;
        } else {
          if (i + 1 >= t.length) throw malformed("dangling backslash");
          const cp = t.codePointAt(i + 1)!;
          bytes.push(...enc.encode(String.fromCodePoint(cp)));
          i += cp > 0xffff ? 3 : 2;
        }
        continue;
      }
      if (c === '"') {
        closed = true;
        i++;
        break;
      }
      const cp = t.codePointAt(i)!;
      bytes.push(...enc.encode(String.fromCodePoint(cp)));
      i += cp > 0xffff ? 2 : 1;
    }
    if (!closed) throw malformed("unterminated quote");
  }
  return new TextDecoder().decode(Uint8Array.from(bytes));
}

/** Interpret a parsed DoH JSON body for `name`. Throws DnsQueryError("malformed"|"servfail"|"rcode"). */
export function parseDohJson(body: unknown, name: string, server: string): TxtAnswer {
  const bad = (why: string) => new DnsQueryError("malformed", server, `malformed DoH answer: ${why}`);
  if (!body || typeof body !== "object" || Array.isArray(body)) throw bad("not a JSON object");
  const b = body as Record<string, unknown>;
  if (typeof b.Status !== "number") throw bad("no numeric Status");
  const toRrs = (list: unknown, what: string): Rr[] => {
    if (list === undefined) return [];
    if (!Array.isArray(list)) throw bad(`${what} is not an array`);
    return list.map((a) => {
      if (!a || typeof a !== "object") throw bad(`${what} entry is not an object`);
      const r = a as Record<string, unknown>;
      if (typeof r.name !== "string" || typeof r.type !== "number" || typeof r.data !== "string") {
        throw bad(`${what} entry lacks name/type/data`);
      }
      const ttl = typeof r.TTL === "number" ? r.TTL : undefined;
      let data = r.data;
      if (r.type === 16) {
        try {
          data = parseTxtData(data);
        } catch (e) {
          throw bad((e as Error).message);
        }
      }
      return { name: r.name, type: r.type, ttl: ttl ?? DEFAULT_TTL_S, data };
    });
  };
  if (b.Status === 3) {
    return { txt: [], ttl: negativeFromDoh(toRrs(b.Authority, "Authority")), rcode: "NXDOMAIN", server };
  }
  if (b.Status !== 0) {
    const kind = b.Status === 2 ? "servfail" : b.Status === 5 ? "refused" : "rcode";
    throw new DnsQueryError(kind, server, `DoH server answered Status ${b.Status}`);
  }
  const answers = toRrs(b.Answer, "Answer");
  const { txt, ttl } = collectTxt(name, answers);
  if (txt.length === 0) {
    return { txt: [], ttl: negativeFromDoh(toRrs(b.Authority, "Authority")), rcode: "NODATA", server };
  }
  return { txt, ttl: clampTtl(ttl ?? DEFAULT_TTL_S), rcode: "NOERROR", server };
}

/** A SOA in a DoH Authority section has its TTL (the data is text): use it, capped at NEGATIVE_TTL_S. */
function negativeFromDoh(authority: Rr[]): number {
  const soa = authority.find((a) => a.type === 6);
  return clampTtl(soa ? soa.ttl : NEGATIVE_TTL_S, NEGATIVE_TTL_S);
}

/**
 * The DoH endpoint must be https; plain http only to a loopback address (a local test server or a
 * local forwarder): anything else could be answered by whoever sits on the path.
 */
export function checkDohUrl(dohUrl: string): URL {
  let url: URL;
  try {
    url = new URL(dohUrl);
  } catch {
    throw new Error(`DoH URL "${dohUrl}" is not a URL`);
  }
  if (url.protocol === "https:") return url;
  if (url.protocol === "http:" && isLoopbackHost(url.hostname)) return url;
  throw new Error(`DoH URL "${dohUrl}" must use https (plain http only on a loopback address)`);
}

export async function queryDoh(
  dohUrl: string,
  name: string,
  options: { fetch: typeof fetch; timeoutMs: number },
): Promise<TxtAnswer> {
  const server = dohUrl;
  let url: URL;
  try {
    url = checkDohUrl(dohUrl);
  } catch (e) {
    throw new DnsQueryError("network", server, (e as Error).message);
  }
  url.searchParams.set("name", normName(name));
  url.searchParams.set("type", "TXT");
  let text: string;
  const deadline = AbortSignal.timeout(options.timeoutMs);
  try {
    // One deadline for the whole exchange, body included: a server trickling bytes cannot hold us.
    const res = await options.fetch(url, {
      headers: { accept: "application/dns-json" },
      signal: deadline,
      redirect: "error",
    });
    if (!res.ok) {
      await discardBody(res.body).catch(() => undefined);
      throw new DnsQueryError("servfail", server, `DoH server answered HTTP ${res.status}`);
    }
    text = (await readBoundedResponse(res, DOH_MAX_BODY)).toString("utf8");
  } catch (e) {
    if (e instanceof DnsQueryError) throw e;
    if (e instanceof BodyTooLargeError) {
      throw new DnsQueryError("malformed", server, `DoH answer refused: ${e.message}`, { cause: e });
    }
    // Asked of the signal, not the error: each transport words an abort differently.
    const timeout = deadline.aborted;
    throw new DnsQueryError(
      timeout ? "timeout" : "network",
      server,
      timeout
        ? `no DoH answer within ${options.timeoutMs} ms`
        : `DoH request failed: ${(e as Error).message}`,
      { cause: e },
    );
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new DnsQueryError("malformed", server, "malformed DoH answer: not JSON");
  }
  return parseDohJson(body, name, server);
}
