import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { getAsset, isSea } from "node:sea";
import { fileURLToPath } from "node:url";
import type { Call, Reply } from "../http.ts";
import { Bytes } from "../http.ts";

/**
 * Static files of an app, from `<app>/web/assets/` (flat, no subfolders). The single executable
 * carries them as SEA assets named `<app>/<file>` (scripts/build.mjs puts them there); run from
 * source, they are read from the folder. Each is read once and kept, with its ETag.
 */

export interface Asset {
  data: Buffer;
  contentType: string;
  etag: string;
  /** The name holds a content hash (`app.3f9a0c1e.css`): it can be cached for good. */
  immutable: boolean;
}

const TYPES: Record<string, string> = {
  css: "text/css; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  txt: "text/plain; charset=utf-8",
  svg: "image/svg+xml",
  png: "image/png",
  ico: "image/x-icon",
  woff2: "font/woff2",
};

/** A plain file name with a known type: no path, no dot files. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.([a-z0-9]+)$/;
const HASHED = /\.[0-9a-f]{8,}\.[a-z0-9]+$/;

export class Assets {
  private readonly cache = new Map<string, Asset>();
  private readonly read: (name: string) => Buffer | undefined;
  constructor(read: (name: string) => Buffer | undefined) {
    this.read = read;
  }

  /**
   * The assets of `app`: from the executable when it is one, else from `dir` (a file: URL), plus
   * the vendored files `dir/../vendor.json` names (asset name -> path relative to that file, e.g. a
   * package's browser bundle under node_modules; scripts/build.mjs embeds them the same way).
   */
  static of(app: string, dir: URL): Assets {
    if (isSea()) return new Assets((name) => seaAsset(`${app}/${name}`));
    const vendorFile = new URL("../vendor.json", dir);
    const vendor = vendorMap(fileAsset(fileURLToPath(vendorFile)));
    return new Assets((name) => {
      const from = Object.hasOwn(vendor, name) ? new URL(vendor[name]!, vendorFile) : new URL(name, dir);
      return fileAsset(fileURLToPath(from));
    });
  }

  get(name: string): Asset | undefined {
    const cached = this.cache.get(name);
    if (cached) return cached;
    const type = NAME.exec(name)?.[1];
    const data = type && TYPES[type] ? this.read(name) : undefined;
    if (!data) return undefined; // misses are not remembered: any client can ask for any name
    const asset = {
      data,
      contentType: TYPES[type!]!,
      etag: `"${createHash("sha256").update(data).digest("base64url").slice(0, 27)}"`,
      immutable: HASHED.test(name),
    };
    this.cache.set(name, asset);
    return asset;
  }
}

function vendorMap(json: Buffer | undefined): Record<string, string> {
  if (!json) return {};
  const map = JSON.parse(json.toString("utf8")) as Record<string, string>;
  return Object.fromEntries(Object.entries(map).filter(([name]) => NAME.test(name)));
}

function seaAsset(key: string): Buffer | undefined {
  try {
    return Buffer.from(getAsset(key));
  } catch {
    return undefined; // not in the executable
  }
}

function fileAsset(path: string): Buffer | undefined {
  try {
    return readFileSync(path);
  } catch {
    return undefined;
  }
}

/** The answer for an asset: 304 when the client has this version, long-cached when the name is hashed. */
export function assetReply(call: Call, asset: Asset): Reply {
  const headers = {
    etag: asset.etag,
    "cache-control": asset.immutable ? "public, max-age=31536000, immutable" : "no-cache",
  };
  const given = call.req.headers["if-none-match"];
  if (given?.split(",").some((t) => t.trim().replace(/^W\//, "") === asset.etag)) {
    return { status: 304, headers };
  }
  return { status: 200, body: new Bytes(asset.contentType, asset.data), headers };
}
