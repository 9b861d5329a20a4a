/**
 * Reading an HTTP answer from a server we do not control (an IdP, a DoH resolver): bounded in bytes
 * while reading, so an endless or huge body costs at most `max` bytes of memory and ends the request
 * as soon as it passes the cap, instead of being buffered whole and checked afterwards.
 */

export class BodyTooLargeError extends Error {
  readonly limit: number;
  constructor(limit: number) {
    super(`the answer is larger than ${describeBytes(limit)}`);
    this.name = "BodyTooLargeError";
    this.limit = limit;
  }
}

/** "16 MiB", "256 KiB", "100 bytes". */
export function describeBytes(n: number): string {
  if (n >= 1024 * 1024 && n % (1024 * 1024) === 0) return `${n / (1024 * 1024)} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} bytes`;
}

/** Throws BodyTooLargeError when a Content-Length header announces more than `max` bytes. */
export function checkDeclaredLength(contentLength: string | null | undefined, max: number): void {
  if (contentLength === null || contentLength === undefined) return;
  const n = Number(contentLength);
  if (Number.isFinite(n) && n > max) throw new BodyTooLargeError(max);
}

/**
 * The body's bytes, at most `max` of them. Passing the cap throws BodyTooLargeError; leaving the loop
 * early destroys a Node stream (closing its socket) or cancels a web stream (aborting the fetch).
 */
export async function readBounded(body: AsyncIterable<Uint8Array> | null, max: number): Promise<Buffer> {
  if (!body) return Buffer.alloc(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += chunk.byteLength;
    if (total > max) throw new BodyTooLargeError(max);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

/** A fetch Response's body, at most `max` bytes; refused bodies are cancelled, closing the connection. */
export async function readBoundedResponse(res: Response, max: number): Promise<Buffer> {
  try {
    checkDeclaredLength(res.headers.get("content-length"), max);
  } catch (e) {
    await res.body?.cancel().catch(() => undefined);
    throw e;
  }
  return readBounded(res.body, max);
}
