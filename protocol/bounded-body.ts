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
  for await (const chunk of boundedChunks(body, max)) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** The body's chunks as they come; passing `max` bytes throws BodyTooLargeError (ending the loop). */
export async function* boundedChunks(
  body: AsyncIterable<Uint8Array>,
  max: number,
): AsyncGenerator<Uint8Array> {
  let total = 0;
  for await (const chunk of body) {
    total += chunk.byteLength;
    if (total > max) throw new BodyTooLargeError(max);
    yield chunk;
  }
}

/** What readBoundedResponse needs of an answer: a fetch Response, or the CLI's node:http one. */
export interface BodyCarrier {
  headers: { get(name: string): string | null };
  body: AsyncIterable<Uint8Array> | null;
}

/** Stops reading a body nobody wants: destroys a Node stream (and its socket), cancels a web stream. */
export async function discardBody(body: AsyncIterable<Uint8Array> | null): Promise<void> {
  if (!body) return;
  // A Node stream's iterator only cleans up once iteration has started: destroy it directly.
  const node = body as { destroy?: () => void };
  if (typeof node.destroy === "function") return node.destroy();
  await body[Symbol.asyncIterator]().return?.();
}

/** The answer's body, at most `max` bytes; a refused body is discarded, closing the connection. */
export async function readBoundedResponse(res: BodyCarrier, max: number): Promise<Buffer> {
  try {
    checkDeclaredLength(res.headers.get("content-length"), max);
  } catch (e) {
    await discardBody(res.body).catch(() => undefined);
    throw e;
  }
  return readBounded(res.body, max);
}
